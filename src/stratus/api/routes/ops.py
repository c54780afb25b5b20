"""GET /health (the process answers), GET /ready (every model loaded and warm), GET /metrics."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from stratus.api.deps import Gateway, app_state, gateway
from stratus.api.errors import ErrorResponse
from stratus.api.routes.common import errors
from stratus.api.schemas_out import HealthResponse, ReadyResponse
from stratus.api.streaming import JSONBody

router = APIRouter(tags=["operations"])


@router.get(
    "/health",
    summary="Liveness: the process is up and no model's engine has died for good",
    response_model=HealthResponse,
    responses={503: {"model": HealthResponse, "description": "An engine could not be restarted"}},
)
async def health(request: Request) -> JSONBody:
    # An engine process that dies is restarted in the background; only one that cannot be
    # restarted fails liveness, so that a supervisor restarts the server.
    if app_state(request).registry.given_up():
        return JSONBody({"status": "failed"}, status_code=503)
    return JSONBody({"status": "ok"})


@router.get(
    "/ready",
    summary="Readiness: 200 once every model is loaded and warmed up, else 503",
    response_model=ReadyResponse,
    responses={
        503: {"model": ReadyResponse, "description": "Still loading, or a model failed"},
        # Only when a credential is sent: it is checked like on any route (see below).
        401: {"model": ErrorResponse, "description": "The credential sent is bad"},
        429: {"model": ErrorResponse, "description": "The address or key is locked out; see Retry-After"},
    },
)
async def ready(request: Request) -> JSONBody:
    """Everyone gets the status; model names and errors only callers allowed to read status. A
    credential sent here is checked like on any route (lockouts, a 401 when bad, audited): /ready
    is no place to test keys unseen."""
    state = app_state(request)
    registry = state.registry
    ctx = request.state.ctx
    if ctx.authorization is not None:
        ctx.route = "/ready"
        await state.pipeline.identify(ctx)
    may_read = await state.pipeline.may(ctx, "status.read")  # without access control: everyone
    models: dict[str, str] = {}
    problems: dict[str, str] = {}
    if may_read:
        models = {m.name: registry.state_of(m) for m in registry.models.values()}
        problems = {
            m.name: m.error or "; ".join(m.replicas.problems())
            for m in registry.models.values()
            if m.error or (m.state == "ready" and not registry.available(m) and m.replicas.problems())
        }
    # Every request would be refused (fail closed) while the audit trail cannot be written (a
    # caller who sent a credential is refused too: its /ready is audited).
    audit_ok = state.audit is None or state.audit.recorder.healthy or state.audit.recorder.fail_open
    status = registry.status if audit_ok else "failed"
    body = {"status": status, "models": models, "errors": problems}
    return JSONBody(body, status_code=200 if registry.ready and audit_ok else 503)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={
        200: {
            "content": {"text/plain": {"schema": {"type": "string"}}},
            "description": "Prometheus text exposition format",
        },
        **errors(500),
    },
)
async def metrics(gw: Gateway = Depends(gateway)) -> Response:
    await gw.authorize()
    m = gw.state.metrics
    return Response(m.render(), media_type=m.content_type)
