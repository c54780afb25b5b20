"""The errors any stage of the request path may raise, in the OpenAI envelope.

Every error a client sees is `{"error": {"message", "type", "param", "code"}}` with a status
that matches it; the message says what to fix. A stage (identity, limits, audit) raises an
`APIError`; the API layer (api/errors.py) turns it into the response.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

from stratus.names import redact_keys

# status -> OpenAI error type
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
}


class APIError(Exception):
    """An error with a client-facing message; raise it anywhere in the request path."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        message = redact_keys(message)  # a key a client sent where it did not belong is not echoed
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or ERROR_TYPES.get(status, "invalid_request_error")
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self) -> Response:
        return Response(
            orjson.dumps(self.body()),
            status_code=self.status,
            media_type="application/json",
            headers=self.headers,
        )


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def unavailable(message: str, retry_after: int = 1, code: str = "overloaded") -> APIError:
    return APIError(503, message, code=code, headers={"Retry-After": str(retry_after)})


def model_not_found(name: str, available: list[str]) -> APIError:
    """The 404 for a model; `available` is what the caller may use (never other models' names)."""
    listed = ", ".join(sorted(available)) or "none"
    return APIError(
        404,
        f"The model '{name}' does not exist. Models served here: {listed}.",
        param="model",
        code="model_not_found",
    )
