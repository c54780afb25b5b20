"""GET /v1/models and GET /v1/models/{model_id}."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from stratus.api.deps import Gateway, gateway
from stratus.api.registry import ServedModel
from stratus.api.routes.common import errors
from stratus.api.schemas_out import ModelCard, ModelList
from stratus.api.streaming import JSONBody

router = APIRouter(tags=["openai"])


def _card(m: ServedModel) -> dict:
    return {
        "id": m.name,
        "object": "model",
        "created": m.created,
        "owned_by": "stratus",
        "max_model_len": m.max_model_len,
        "ready": m.state == "ready",
    }


@router.get(
    "/v1/models",
    summary="List the models served here that the caller may use",
    response_model=ModelList,
    responses=errors(500),
)
async def list_models(gw: Gateway = Depends(gateway)) -> JSONBody:
    await gw.authorize()
    visible = gw.visible
    models = [m for m in gw.state.registry.models.values() if visible is None or visible(m.name)]
    return JSONBody({"object": "list", "data": [_card(m) for m in models]})


@router.get(
    "/v1/models/{model_id:path}",
    summary="Describe one model",
    response_model=ModelCard,
    responses=errors(404, 500),
)
async def get_model(model_id: str, gw: Gateway = Depends(gateway)) -> JSONBody:
    await gw.authorize(model_id)
    return JSONBody(_card(gw.state.registry.get(model_id, gw.visible)))
