"""/internal/v1/workers/*: where `stratus worker` processes register and send heartbeats.

Mounted only when the gateway has a cluster secret (STRATUS_CLUSTER_SECRET or
--cluster-secret-file); every call must carry it as a bearer token (compared in constant time).
These calls are cluster plumbing, not client requests: they pass no client identity or limits
steps, and are left out of the OpenAPI document. Registrations, deregistrations and refused
callers get an audit record (action, model, outcome, caller address); heartbeats do not. See cluster/registration.py.
"""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Depends, FastAPI, Request
from starlette.responses import Response

from stratus.api.deps import app_state
from stratus.api.registry import ModelRegistry
from stratus.cluster.registration import PREFIX, RegistrationError, WorkerDirectory
from stratus.cluster.secret import ENV_VAR, load_cluster_secret
from stratus.cluster.worker_replica import client_tls
from stratus.cluster.worker_server import UNAUTHORIZED_CODE, UNAUTHORIZED_MESSAGE, check_secret
from stratus.config import Settings
from stratus.request.errors import APIError

router = APIRouter(prefix=PREFIX, include_in_schema=False)


async def _directory(request: Request) -> WorkerDirectory:
    directory = app_state(request).workers
    assert directory is not None  # the router is mounted only with a directory
    if not check_secret(request.headers.get("authorization"), directory.secret):
        request.state.ctx.authenticating = True  # a refused caller of the cluster API is audited
        raise APIError(
            401, UNAUTHORIZED_MESSAGE, code=UNAUTHORIZED_CODE, headers={"WWW-Authenticate": "Bearer"}
        )
    return directory


def _audited(request: Request, body: dict) -> dict:
    """Membership changes (register, deregister) get an audit record naming the model; heartbeats
    (every few seconds, changing nothing) do not."""
    ctx = request.state.ctx
    ctx.authenticating = True
    if isinstance(body.get("model"), str):
        ctx.name_model(body["model"])
    return body


async def _body(request: Request) -> dict:
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        raise APIError(400, "The body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise APIError(400, "The body must be a JSON object.")
    return body


def _json(data: dict) -> Response:
    return Response(orjson.dumps(data), media_type="application/json")


@router.post("/register")
async def register(request: Request, directory: WorkerDirectory = Depends(_directory)) -> Response:
    try:
        return _json(await directory.register(_audited(request, await _body(request))))
    except RegistrationError as exc:
        raise APIError(exc.status, str(exc), code="registration_refused") from None


@router.post("/heartbeat")
async def heartbeat(request: Request, directory: WorkerDirectory = Depends(_directory)) -> Response:
    if not directory.heartbeat(await _body(request)):
        raise APIError(404, "Unknown worker; register first.", code="unknown_worker")
    return _json({"ok": True})


@router.post("/deregister")
async def deregister(request: Request, directory: WorkerDirectory = Depends(_directory)) -> Response:
    if not await directory.deregister(_audited(request, await _body(request))):
        raise APIError(404, "Unknown worker.", code="unknown_worker")
    return _json({"ok": True})


def mount(app: FastAPI, settings: Settings, registry: ModelRegistry) -> WorkerDirectory | None:
    """Serve /internal/v1/workers when the settings hold a cluster secret; else nothing."""
    env = {ENV_VAR: settings.cluster_secret} if settings.cluster_secret else {}
    secret = load_cluster_secret(settings.cluster_secret_file, env)  # ClusterSecretError: a bad one
    if secret is None:
        return None
    verify = client_tls(settings.worker_ca, settings.worker_client_cert, settings.worker_client_key)
    directory = WorkerDirectory(
        registry,
        secret,
        verify=verify,
        read_timeout=settings.worker_read_timeout,
        first_token_timeout=settings.worker_first_token_timeout,
        insecure_http=settings.insecure_worker_http,
    )
    app.state.stratus.workers = directory
    app.include_router(router)
    return directory
