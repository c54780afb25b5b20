"""What the generation routes share: documented error responses, request bodies, the cache."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from starlette.responses import Response

from stratus.api.deps import Gateway
from stratus.api.errors import ErrorResponse
from stratus.api.streaming import JSONBody
from stratus.audit.content_log import completions_of
from stratus.request.context import Usage
from stratus.request.errors import APIError

_DESCRIPTIONS = {
    400: "Invalid request: malformed JSON, a wrong type or value, or a prompt that does not fit",
    404: "Unknown model",
    413: "Request body over the size limit",
    500: "Internal error (no details are exposed; the message carries a request id)",
    503: "Overloaded or model not ready; see the Retry-After header",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    out: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        entry: dict[str, Any] = {"model": ErrorResponse, "description": _DESCRIPTIONS[code]}
        if code == 503:
            entry["headers"] = {
                "Retry-After": {"description": "Seconds to wait", "schema": {"type": "string"}}
            }
        out[code] = entry
    return out


GENERATION_ERRORS = errors(400, 404, 413, 500, 503)


def served_here(body: Any) -> None:
    """The model is served by this server's engines: a field they cannot honour (tools, JSON mode,
    logit_bias, suffix; an upstream may) is a 400 that names it."""
    if (problem := body.unsupported_here()) is not None:
        raise APIError(400, str(problem), param=problem.param)


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """openapi_extra for a route that parses its own body (see deps.parse_body)."""
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


def sse_response(
    model: type[BaseModel], chunk: type[BaseModel], description: str
) -> dict[int | str, dict[str, Any]]:
    """200 as JSON (`model`), or with stream=true as server-sent events whose `data` is a `chunk`
    as JSON, an error envelope if the generation fails midway, and finally `[DONE]`."""
    payload = {"anyOf": [{"$ref": f"#/components/schemas/{chunk.__name__}"}, _ERROR_REF]}
    event = {
        "type": "object",
        "required": ["data"],
        "properties": {
            "data": {
                "anyOf": [
                    {"type": "string", "const": "[DONE]"},
                    {"type": "string", "contentMediaType": "application/json", "contentSchema": payload},
                ]
            },
            "event": {"type": "string"},
            "id": {"type": "string"},
        },
    }
    return {
        200: {
            "model": model,
            "description": description,
            "content": {"text/event-stream": {"schema": event}},
        }
    }


_ERROR_REF = {"$ref": "#/components/schemas/ErrorResponse"}


class CacheSlot:
    """The response cache as one request sees it: off, a miss to fill, or a hit to return."""

    def __init__(self, gw: Gateway, route: str, body: Any, raw: dict):
        self.gw = gw
        self.key: str | None = None
        cache = gw.state.cache
        if cache is not None and not body.stream and body.deterministic():
            tenant = gw.ctx.principal.tenant if gw.ctx.principal else "anonymous"
            self.key = cache.key(tenant, route, body.model, raw)
            self.tenant = tenant

    async def lookup(self, restamp) -> Response | None:
        if self.key is None:
            return None
        state, model = self.gw.state, self.gw.ctx.model or ""
        state.metrics.cache_lookups.labels(model).inc()
        hit = state.cache.get(self.key, self.tenant)
        if hit is None:
            return None
        state.metrics.cache_hits.labels(model).inc()
        self.gw.ctx.completions = completions_of(hit)  # for content logging, as a generation sets it
        u = hit.get("usage") or {}
        await self.gw.settle(
            Usage(  # chat and completions name them so; the Responses API input/output tokens
                prompt_tokens=u.get("prompt_tokens", u.get("input_tokens", 0)),
                completion_tokens=u.get("completion_tokens", u.get("output_tokens", 0)),
                from_response_cache=True,
            )
        )
        return JSONBody(restamp(hit))

    def store(self, body: dict | None) -> None:
        if self.key is not None and body is not None:
            self.gw.state.cache.put(self.key, self.tenant, body)
