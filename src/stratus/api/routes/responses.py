"""POST /v1/responses: the Responses API, served on the chat path (api/responses.py)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Request
from pydantic import ValidationError as PydanticValidationError
from starlette.responses import Response

from stratus.api import tool_calls
from stratus.api.deps import GatewayDep, Parsed, parsed
from stratus.api.errors import validation_message
from stratus.api.responses import ResponsesFormat, ResponsesRequest
from stratus.api.routes.chat import serve_chat
from stratus.api.routes.common import GENERATION_ERRORS, json_body
from stratus.api.upstream_proxy import served_upstream
from stratus.request.errors import APIError

router = APIRouter(tags=["openai"])
ROUTE = "/v1/responses"


@router.post(
    ROUTE,
    summary="Create a model response (stateless)",
    response_model=None,
    responses={
        200: {"description": "The Response object, or with stream: true its events (text/event-stream)"},
        **GENERATION_ERRORS,
    },
    openapi_extra=json_body(ResponsesRequest),
)
async def create_response(
    request: Request,
    gw: GatewayDep,
    parsed_body: Annotated[Parsed[ResponsesRequest], parsed(ResponsesRequest)],
) -> Response:
    body, raw = parsed_body.body, parsed_body.raw
    if await served_upstream(gw, body.model) is not None:
        raise APIError(
            400,
            "The Responses API is not available for models served by upstreams yet; use chat completions.",
            param="model",
        )
    try:
        chat = body.chat()
    except PydanticValidationError as exc:  # a field that chat refuses, e.g. an unknown role
        message, param = validation_message([dict(e) for e in exc.errors(include_url=False)])
        raise APIError(400, message, param=param) from None
    if gw.ctx.body is not None:  # content logging reads messages: the conversation as chat has it
        gw.ctx.body = {"messages": [m.model_dump(exclude_none=True) for m in chat.messages]}

    def responses_format(request_id: str, tools: tool_calls.Format | None) -> ResponsesFormat:
        return ResponsesFormat(request_id, body, tools)

    return await serve_chat(request, gw, chat, raw, ROUTE, responses_format)
