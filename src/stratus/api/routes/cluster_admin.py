"""GET /admin/cluster: every model's replicas, their health, load and learned capacity.
POST /admin/cluster/scale: change the number of Ray replicas of a model at run time.

    curl -H "Authorization: Bearer $STRATUS_API_KEY" http://127.0.0.1:8000/admin/cluster/scale \\
         -d '{"model": "demo", "replicas": 4}'

Needs `cluster.manage` (admins). Scaling up answers once the new actors are serving and
registered; scaling down once the removed ones have drained (`"wait": false` answers 202 at
once). Like every /admin call it leaves an audit record, naming the model.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt

from stratus.api.deps import app_state, parse_body, principal
from stratus.api.errors import ErrorResponse
from stratus.api.streaming import JSONBody
from stratus.cluster.ray_cluster import ScaleError
from stratus.cluster.ray_config import MAX_REPLICAS
from stratus.request.errors import APIError
from stratus.security.identity import Principal

log = logging.getLogger("stratus.cluster")

router = APIRouter(prefix="/admin", tags=["admin"])
NO_STORE = {"Cache-Control": "no-store"}
_background: set[asyncio.Task] = set()  # scale requests answered with 202, kept until done


class ScaleRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=128, description="A model served by Ray replicas")
    replicas: StrictInt = Field(ge=0, le=MAX_REPLICAS, description="The number of replicas wanted")
    wait: StrictBool = Field(True, description="Answer once the count is reached (else 202 at once)")


class ScaleResult(BaseModel):
    model: str
    replicas: int
    requested: int
    resources: dict[str, float]
    min_replicas: int | None
    max_replicas: int | None
    autoscaled: bool
    actors: list[dict]
    errors: list[str]


def in_background(work: Coroutine[Any, Any, Any], what: str) -> asyncio.Task:
    """Run `work` with nobody awaiting it (a 202 answer): kept referenced until done (the loop
    holds tasks weakly) and its failure logged (RayCluster.scale logs replicas that failed to start)."""
    task = asyncio.create_task(work, name=f"stratus-{what}")
    _background.add(task)

    def settled(done: asyncio.Task) -> None:
        _background.discard(done)
        if done.cancelled():
            return
        error = done.exception()
        if error is not None:
            log.error("%s failed: %s: %s", what, type(error).__name__, error, exc_info=error)

    task.add_done_callback(settled)
    return task


def _schema() -> dict:
    schema = ScaleRequest.model_json_schema()
    schema.pop("title", None)
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


@router.post(
    "/cluster/scale",
    summary="Set the number of Ray replicas of a model",
    response_model=ScaleResult,
    responses={
        202: {"description": "Accepted (wait=false): the count changes in the background"},
        400: {"model": ErrorResponse, "description": "Invalid count, or outside the autoscaling range"},
        404: {"model": ErrorResponse, "description": "No such Ray model"},
        409: {"model": ErrorResponse, "description": "This gateway runs no Ray replicas"},
    },
    openapi_extra=_schema(),
)
async def scale(request: Request, me: Principal = Depends(principal)) -> JSONBody:
    body, _ = await parse_body(request, ScaleRequest)
    state = app_state(request)
    request.state.ctx.name_model(body.model)  # the audit record names what was scaled
    cluster = state.ray_cluster
    if cluster is None:
        raise APIError(
            409,
            "This gateway runs no Ray replicas; start it with --ray-address and --replicas MODEL=N.",
            code="no_ray_cluster",
        )
    try:
        cluster.check(body.model, body.replicas)
    except ScaleError as exc:
        raise APIError(exc.status, str(exc), param=exc.param) from None
    log.info("scale %s to %d replicas, asked by %s", body.model, body.replicas, me.user)
    if not body.wait:
        in_background(cluster.scale(body.model, body.replicas), f"scaling {body.model} to {body.replicas}")
        status = cluster.model_status(body.model)
        return JSONBody(
            {**status, "requested": body.replicas, "errors": []}, status_code=202, headers=NO_STORE
        )
    result = await cluster.scale(body.model, body.replicas)
    return JSONBody(result, headers=NO_STORE)


@router.get(
    "/cluster",
    summary="Models, their replicas, health, load and learned capacity",
    responses={200: {"description": "Per model: routing policy, failover counts and each replica"}},
)
async def cluster_status(request: Request, me: Principal = Depends(principal)) -> JSONBody:
    registry = app_state(request).registry
    models = []
    for name, served in registry.models.items():
        if served.base is not None:  # a LoRA adapter: its base model's replicas, listed there
            continue
        replicas = served.replicas
        models.append(
            {
                "model": name,
                "state": registry.state_of(served),
                "available": registry.available(served),
                "policy": replicas.router.policy,
                "retries": replicas.retries,
                "migrations": replicas.migrations,
                "replicas": replicas.snapshot(),
            }
        )
    ray_cluster = app_state(request).ray_cluster
    # with --ray-address: per Ray model its actors (node ids), resources, bounds, recent scalings
    ray = ray_cluster.status() if ray_cluster is not None else None
    return JSONBody({"models": models, "ray": ray}, headers=NO_STORE)
