"""POST /v1/embeddings: vectors of texts or token ids from a model served with --task embed.

Route (a model served for generation is a 400), admit the inputs' tokens (no completion tokens;
the request counts once against concurrency limits however many inputs it has), embed on a
local replica (workers, Ray actors and upstreams do not compute embeddings: 501), then charge
the prompt tokens once the audit record is written, as a complete completion is.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from stratus.api.deps import GatewayDep, Parsed, parsed
from stratus.api.embeddings import (
    EmbeddingRequest,
    EmbeddingResponse,
    check_dimensions,
    embedding_inputs,
    embedding_response,
)
from stratus.api.errors import ErrorResponse
from stratus.api.generation import ClientDisconnected, check_engine_failure, until_disconnected
from stratus.api.routes.common import errors, json_body
from stratus.api.upstream_proxy import served_upstream
from stratus.cluster.replica import EmbeddingsUnsupported
from stratus.engine.pooling import Pooling
from stratus.request.context import Usage
from stratus.request.errors import APIError

router = APIRouter(tags=["openai"])
ROUTE = "/v1/embeddings"

_NOT_HERE: dict[int | str, dict[str, Any]] = {
    501: {
        "model": ErrorResponse,
        "description": "The model's replicas (workers, Ray actors, upstreams) do not compute embeddings",
    }
}


def unsupported(message: str) -> APIError:
    return APIError(501, message, param="model", code="embeddings_unsupported")


@router.post(
    ROUTE,
    summary="Create embeddings",
    response_model=EmbeddingResponse,
    responses={**errors(400, 404, 413, 500, 503), **_NOT_HERE},
    openapi_extra=json_body(EmbeddingRequest),
)
async def embeddings(
    request: Request,
    gw: GatewayDep,
    parsed_body: Annotated[Parsed[EmbeddingRequest], parsed(EmbeddingRequest)],
) -> Response:
    body = parsed_body.body
    state, ctx = gw.state, gw.ctx
    if await served_upstream(gw, body.model) is not None:
        raise unsupported(
            f"The model '{body.model}' is served by an OpenAI-compatible upstream; embeddings "
            "are not proxied to upstreams."
        )
    engine = await gw.route(body.model, task="embed")
    served = state.registry.get(body.model, gw.visible)
    pooling = served.pooling or Pooling()
    check_dimensions(body.dimensions, engine.model_config.hidden_size)
    prompts = await embedding_inputs(engine, body)
    tokens = sum(len(ids) for ids in prompts)
    await gw.admit(tokens, 0, 1)
    try:
        vectors = await until_disconnected(
            request, engine.embed(prompts, pooling, ctx.failovers.append, body.user)
        )
    except ClientDisconnected:
        ctx.outcome = "client_disconnect"
        return Response(status_code=499)
    except EmbeddingsUnsupported as exc:
        ctx.outcome = "error"
        raise unsupported(str(exc)) from None
    except APIError:
        ctx.outcome = "error"
        raise
    except Exception as exc:
        ctx.outcome = "error"
        raise check_engine_failure(exc, ctx.request_id) from None
    state.metrics.observe_generation(
        ctx.model or body.model,
        prompt_tokens=tokens,
        completion_tokens=0,
        ttft=None,
        decode_seconds=None,
        e2e=time.perf_counter() - ctx.started,
    )
    ctx.usage = Usage(prompt_tokens=tokens)  # charged at the record step, once audited
    return embedding_response(vectors, body, tokens, pooling.normalize)
