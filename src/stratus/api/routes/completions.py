"""POST /v1/completions: a prompt as text, a list of texts, token ids, or a list of those."""

from __future__ import annotations

from dataclasses import replace

from fastapi import APIRouter, Request
from starlette.responses import Response

from stratus.api.deps import gateway_of, parse_body
from stratus.api.formatting import CompletionFormat
from stratus.api.generation import Generation
from stratus.api.prompts import (
    COMPLETIONS_DEFAULT_MAX_TOKENS,
    completion_prompt_ids,
    fit_max_tokens,
    sampling_params,
)
from stratus.api.routes.common import (
    GENERATION_ERRORS,
    CacheSlot,
    json_body,
    served_here,
    sse_response,
)
from stratus.api.schemas import CompletionRequest
from stratus.api.schemas_out import Completion
from stratus.api.streaming import complete, stream
from stratus.api.upstream_proxy import maybe_proxy
from stratus.engine.types import GenerateRequest, SamplingParams
from stratus.request.ids import new_id

router = APIRouter(tags=["openai"])
ROUTE = "/v1/completions"


@router.post(
    ROUTE,
    summary="Create a completion",
    response_model=None,
    responses={
        **sse_response(Completion, Completion, "The completion, or a stream of text_completion chunks"),
        **GENERATION_ERRORS,
    },
    openapi_extra=json_body(CompletionRequest),
)
async def completions(request: Request) -> Response:
    # The steps GatewayDep and parsed() would run, called directly: this is the hot path
    gw = await gateway_of(request)  # screen, identify, authorize the route
    body, raw = await parse_body(request, CompletionRequest)  # then the body
    if (proxied := await maybe_proxy(request, gw, "/completions", body, raw)) is not None:
        return proxied  # a model served by OpenAI-compatible upstreams
    served_here(body)
    engine = await gw.route(body.model, sequences=len(body.prompts()) * body.n)
    prompts = await completion_prompt_ids(engine, body)
    max_tokens = min(
        fit_max_tokens(
            engine,
            len(ids),
            body.max_tokens,
            prompt_param="prompt",
            max_param="max_tokens",
            default=COMPLETIONS_DEFAULT_MAX_TOKENS,
        )
        for ids in prompts
    )
    params = sampling_params(body, max_tokens, body.logprobs)
    await gw.admit(
        sum(len(ids) for ids in prompts), max_tokens * body.n * len(prompts), body.n * len(prompts)
    )

    request_id = new_id()
    echo = None
    if body.echo:
        echo = [
            p if isinstance(p, str) else engine.tokenizer.decode(ids)
            for p, ids in zip(body.prompts(), prompts)
        ]
    fmt = CompletionFormat(
        request_id, body.model, body.logprobs is not None, echo, body.n, body.include_usage()
    )
    cache = CacheSlot(gw, ROUTE, body, raw)
    if (hit := await cache.lookup(fmt.restamp)) is not None:
        return hit
    requests = [
        GenerateRequest(
            prompt_token_ids=ids,
            params=params if len(prompts) == 1 else _copy(params),
            request_id=request_id if len(prompts) == 1 else f"{request_id}-{i}",
        )
        for i, ids in enumerate(prompts)
    ]
    gen = Generation(gw, engine, requests, affinity=body.user)
    if body.stream:
        return await stream(request, gen, fmt, body.include_usage())
    result, response = await complete(request, gen, fmt)
    cache.store(result)
    return response


def _copy(params: SamplingParams) -> SamplingParams:
    """Each prompt's own SamplingParams (the engine may keep per-request state in them)."""
    return replace(params, stop=list(params.stop), stop_token_ids=list(params.stop_token_ids))
