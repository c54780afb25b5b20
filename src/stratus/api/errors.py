"""The OpenAI error envelope and the handlers that turn every failure into one.

Every error a client sees is `{"error": {"message", "type", "param", "code"}}` with a status
that matches it; the message says what to fix. Unexpected exceptions are logged with their
traceback here and reach the client only as a generic 500 that carries the request id.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from stratus.request.errors import APIError

log = logging.getLogger("stratus.api")


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """The body of every non-2xx response."""

    error: ErrorDetail


def _loc_parts(loc: tuple | list) -> list[str]:
    # pydantic names the union arm it tried ("str", "list[int]", "constrained-str"); field
    # names never contain "[" or "-", so those parts are dropped.
    return [
        str(p)
        for p in loc
        if p != "body" and not (isinstance(p, str) and ("[" in p or "-" in p or p in _TYPE_WORDS))
    ]


_TYPE_WORDS = {"str", "int", "float", "bool", "list", "dict", "none", "literal"}


def validation_message(errors: list[dict]) -> tuple[str, str | None]:
    """One readable sentence (and the offending field) from pydantic's error list."""
    first = errors[0]
    if first.get("type") == "json_invalid":
        detail = (first.get("ctx") or {}).get("error", "invalid JSON")
        return f"The request body is not valid JSON: {detail}.", None
    # Of a union's alternatives, the error that got deepest into the value says the most.
    top = _loc_parts(first.get("loc", ()))[:1]
    same_field = [e for e in errors if _loc_parts(e.get("loc", ()))[:1] == top]
    best = max(same_field, key=lambda e: len(_loc_parts(e.get("loc", ()))))
    param = ".".join(_loc_parts(best.get("loc", ()))) or None
    cause = (best.get("ctx") or {}).get("error")
    if getattr(cause, "param", None):
        param = cause.param  # a rule about one field, checked on the whole body
    msg = best.get("msg", "invalid value")
    if best.get("type") == "missing":
        return f"Missing required parameter: '{param}'.", param
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    text = f"Invalid value for '{param}': {msg}." if param else f"Invalid request body: {msg}."
    others = len({tuple(_loc_parts(e.get("loc", ()))[:1]) for e in errors}) - 1
    if others > 0:
        text += f" ({others} more field{'s' if others > 1 else ''} also invalid.)"
    return text, param


async def _api_error(request: Request, exc: APIError) -> Response:
    return exc.response()


async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
    message, param = validation_message(list(exc.errors()))
    return APIError(400, message, param=param).response()


async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
    if exc.status_code == 404:
        message = f"Unknown route: {request.method} {request.url.path}. See /openapi.json."
    elif exc.status_code == 405:
        message = f"Method {request.method} is not allowed on {request.url.path}."
    else:
        message = str(exc.detail)
    err = APIError(exc.status_code, message, headers=dict(exc.headers or {}))
    return err.response()


async def _unexpected(request: Request, exc: Exception) -> Response:
    ctx = getattr(request.state, "ctx", None)  # RequestContextMiddleware's, if it ran
    request_id = ctx.request_id if ctx is not None else None
    log.exception("unhandled error in %s %s (request %s)", request.method, request.url.path, request_id)
    return internal_error(request_id).response()


def internal_error(request_id: str | None) -> APIError:
    suffix = f" (request id {request_id})" if request_id else ""
    return APIError(500, f"The server had an error while processing your request{suffix}.")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
