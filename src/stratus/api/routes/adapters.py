"""LoRA adapters of a served model, at run time (models.manage: admins).

    curl -H "Authorization: Bearer $STRATUS_API_KEY" http://127.0.0.1:8000/admin/models/demo/adapters \\
         -d '{"name": "sql", "path": "/adapters/sql"}'       # then clients call model "demo:sql"

POST loads a PEFT adapter directory (adapter_config.json + adapter_model.safetensors, as
`stratus train --lora` and PEFT's save_pretrained write it) into every local engine of the
model; it is then served as the model BASE:NAME, which users must be granted like any model
(PUT /admin/users/{name}/models/BASE:NAME). DELETE stops serving it. The path is read on the
gateway's machine. Like every /admin call, each leaves an audit record naming BASE:NAME.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from stratus.api.deps import app_state, parse_body, principal
from stratus.api.errors import ErrorResponse
from stratus.api.registry import ServedModel
from stratus.api.streaming import JSONBody
from stratus.names import adapter_model_name
from stratus.security.identity import Principal

log = logging.getLogger("stratus.api")

router = APIRouter(prefix="/admin", tags=["admin"])
NO_STORE = {"Cache-Control": "no-store"}


class AdapterRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64, description="Served as the model BASE:NAME")
    path: str = Field(
        min_length=1, max_length=4096, description="A PEFT LoRA adapter directory on the gateway"
    )


class Adapter(BaseModel):
    id: str = Field(description="The model name clients use: BASE:NAME")
    base: str
    name: str
    path: str | None
    state: str
    error: str | None = None


class AdapterList(BaseModel):
    data: list[Adapter]


def _view(m: ServedModel) -> dict:
    return {
        "id": m.name,
        "base": m.base,
        "name": m.adapter,
        "path": m.adapter_path,
        "state": m.state,
        "error": m.error,
    }


def _errors(*codes: int) -> dict[int | str, dict]:
    words = {
        400: "A bad name, or an adapter that cannot be served on this model (the message says why)",
        404: "No such model (or adapter)",
        409: "The model cannot take adapters (embeddings; replicas that are not this gateway's)",
        503: "The model is still loading",
    }
    return {code: {"model": ErrorResponse, "description": words[code]} for code in codes}


def _schema() -> dict:
    schema = AdapterRequest.model_json_schema()
    schema.pop("title", None)
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def _forget_answers(request: Request) -> None:
    """The response cache keys on the model name: answers given as BASE:NAME are not answers of
    the adapter loaded under that name next (as DELETE /admin/models does for a model)."""
    cache = app_state(request).cache
    if cache is not None:
        cache.clear()


@router.get(
    "/models/{base:path}/adapters",
    summary="The LoRA adapters served on a model",
    response_model=AdapterList,
    responses=_errors(404),
)
async def list_adapters(base: str, request: Request, me: Principal = Depends(principal)) -> JSONBody:
    registry = app_state(request).registry
    registry.get(base)  # 404 for an unknown model
    return JSONBody({"data": [_view(m) for m in registry.adapters_of(base)]}, headers=NO_STORE)


@router.post(
    "/models/{base:path}/adapters",
    summary="Serve a LoRA adapter on a model, as the model BASE:NAME",
    status_code=201,
    response_model=Adapter,
    responses={200: {"description": "An adapter of that name was replaced"}, **_errors(400, 404, 409, 503)},
    openapi_extra=_schema(),
)
async def add_adapter(base: str, request: Request, me: Principal = Depends(principal)) -> JSONBody:
    body, _ = await parse_body(request, AdapterRequest)
    request.state.ctx.name_model(adapter_model_name(base, body.name))  # the audit record names it
    served, replaced = await app_state(request).registry.add_adapter(base, body.name, body.path)
    _forget_answers(request)
    log.info("adapter %s loaded from %s by %s", served.name, body.path, me.user)
    return JSONBody(_view(served), status_code=200 if replaced else 201, headers=NO_STORE)


@router.delete(
    "/models/{base:path}/adapters/{name}",
    summary="Stop serving a LoRA adapter (requests running with it finish)",
    response_model=Adapter,
    responses=_errors(404),
)
async def remove_adapter(
    base: str, name: str, request: Request, me: Principal = Depends(principal)
) -> JSONBody:
    request.state.ctx.name_model(adapter_model_name(base, name))
    registry = app_state(request).registry
    served = registry.models.get(adapter_model_name(base, name))
    await registry.remove_adapter(base, name)
    _forget_answers(request)
    assert served is not None
    log.info("adapter %s removed by %s", served.name, me.user)
    return JSONBody({**_view(served), "state": "removed"}, headers=NO_STORE)
