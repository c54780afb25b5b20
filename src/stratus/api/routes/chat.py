"""POST /v1/chat/completions."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import APIRouter, Request
from starlette.responses import Response

from stratus.api import tool_calls
from stratus.api.deps import Gateway, gateway_of, parse_body
from stratus.api.formatting import ChatFormat
from stratus.api.generation import Generation
from stratus.api.prompts import chat_prompt_ids, fit_max_tokens, offered_tools, sampling_params
from stratus.api.routes.common import (
    GENERATION_ERRORS,
    CacheSlot,
    json_body,
    served_here,
    sse_response,
)
from stratus.api.schemas import ChatCompletionRequest
from stratus.api.schemas_out import ChatCompletion, ChatCompletionChunk
from stratus.api.streaming import complete, stream
from stratus.api.upstream_proxy import maybe_proxy
from stratus.engine.types import GenerateRequest
from stratus.request.ids import new_id

router = APIRouter(tags=["openai"])
ROUTE = "/v1/chat/completions"


@router.post(
    ROUTE,
    summary="Create a chat completion",
    response_model=None,
    responses={
        **sse_response(
            ChatCompletion, ChatCompletionChunk, "The completion, or a stream of chat.completion.chunk"
        ),
        **GENERATION_ERRORS,
    },
    openapi_extra=json_body(ChatCompletionRequest),
)
async def chat_completions(request: Request) -> Response:
    # The steps GatewayDep and parsed() would run, called directly: this is the hot path
    gw = await gateway_of(request)  # screen, identify, authorize the route
    body, raw = await parse_body(request, ChatCompletionRequest)  # then the body
    if (proxied := await maybe_proxy(request, gw, "/chat/completions", body, raw)) is not None:
        return proxied  # a model served by OpenAI-compatible upstreams

    def chat_format(request_id: str, tools: tool_calls.Format | None) -> ChatFormat:
        return ChatFormat(request_id, body.model, body.logprobs, body.include_usage(), tools)

    return await serve_chat(request, gw, body, raw, ROUTE, chat_format)


async def serve_chat(
    request: Request,
    gw: Gateway,
    body: ChatCompletionRequest,
    raw: dict,
    route: str,
    make_format: Callable[[str, tool_calls.Format | None], ChatFormat],
) -> Response:
    """A chat request on this server's engines, answered in the format `make_format` gives (chat
    completions, or the Responses API's objects and events)."""
    served_here(body)
    engine = await gw.route(body.model, sequences=body.n)
    tools, call_grammar = offered_tools(engine.tokenizer, body, gw.state.settings.tool_parser)
    prompt_ids = await chat_prompt_ids(engine, body.messages, body.tools if tools else None)
    requested, max_param = body.requested_max_tokens()
    max_tokens = fit_max_tokens(
        engine, len(prompt_ids), requested, prompt_param="messages", max_param=max_param, default=None
    )
    params = sampling_params(body, max_tokens, body.logprobs_k(), call_grammar)
    await gw.admit(len(prompt_ids), max_tokens * body.n, body.n)

    request_id = new_id()
    fmt = make_format(request_id, tools)
    cache = CacheSlot(gw, route, body, raw)
    if (hit := await cache.lookup(fmt.restamp)) is not None:
        return hit
    gen = Generation(
        gw,
        engine,
        [
            GenerateRequest(
                prompt_token_ids=prompt_ids, params=params, request_id=request_id, add_special_tokens=False
            )
        ],
        affinity=body.user,
    )
    if body.stream:
        return await stream(request, gen, fmt, fmt.include_usage)
    result, response = await complete(request, gen, fmt)
    cache.store(result)
    return response
