"""GET /health (the process answers), GET /ready (every model loaded and warm), GET /metrics."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from stratus.api.deps import Gateway, app_state, gateway
from stratus.api.routes.common import errors
from stratus.api.schemas_out import HealthResponse, ReadyResponse
from stratus.api.streaming import JSONBody

router = APIRouter(tags=["operations"])


@router.get("/health", summary="Liveness: the process is up", response_model=HealthResponse)
async def health() -> JSONBody:
    return JSONBody({"status": "ok"})


@router.get(
    "/ready",
    summary="Readiness: 200 once every model is loaded and warmed up, else 503",
    response_model=ReadyResponse,
    responses={503: {"model": ReadyResponse, "description": "Still loading, or a model failed"}},
)
async def ready(request: Request) -> JSONBody:
    """Everyone gets the status; model names and errors only callers allowed to read status."""
    state = app_state(request)
    registry = state.registry
    body = {"status": registry.status, "models": {}, "errors": {}}
    if await state.hooks.may(request, request.state.ctx, "status.read"):
        body["models"] = {m.name: m.state for m in registry.models.values()}
        body["errors"] = {m.name: m.error for m in registry.models.values() if m.error}
    return JSONBody(body, status_code=200 if registry.ready else 503)


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
