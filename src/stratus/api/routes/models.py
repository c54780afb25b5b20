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
        "quantization": m.quantization,
        "ready": m.state == "ready",
        "parent": m.base,  # a LoRA adapter's base model (as vLLM names it); None for a model
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
    cards = [_card(m) for m in models]
    served = {m.name for m in models}
    for name in sorted(await upstream_models(gw) - served):  # served by OpenAI-compatible upstreams
        if visible is None or visible(name):
            cards.append(_upstream_card(name))
    return JSONBody({"object": "list", "data": cards})


@router.get(
    "/v1/models/{model_id:path}",
    summary="Describe one model",
    response_model=ModelCard,
    responses=errors(404, 500),
)
async def get_model(model_id: str, gw: Gateway = Depends(gateway)) -> JSONBody:
    await gw.authorize(model_id)
    upstream = model_id not in gw.state.registry.models and model_id in await upstream_models(gw)
    if upstream and (gw.visible is None or gw.visible(model_id)):
        return JSONBody(_upstream_card(model_id))
    return JSONBody(_card(gw.state.registry.get(model_id, gw.visible)))


async def upstream_models(gw: Gateway) -> set[str]:
    upstreams = gw.state.upstreams
    return (await upstreams.current()).models() if upstreams is not None else set()


def _upstream_card(name: str) -> dict:
    # No creation time or context window is known for a model another server holds.
    return {
        "id": name,
        "object": "model",
        "created": 0,
        "owned_by": "upstream",
        "max_model_len": None,
        "ready": True,
    }
