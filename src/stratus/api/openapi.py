"""The OpenAPI document: FastAPI's, plus the request bodies that routes parse themselves.

Routes read their JSON with `deps.parse_body` (any Content-Type, orjson, 400 on errors), so
FastAPI does not see their body models; they are added here, and FastAPI's 422 responses,
which this server never sends, are replaced by nothing (validation errors are 400s).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic.json_schema import models_json_schema

from stratus.api.errors import ErrorResponse
from stratus.api.schemas import REQUEST_MODELS
from stratus.api.schemas_out import ChatCompletionChunk, Completion

# Shapes only referenced from inside a stream's event schema (routes/common.sse_response).
STREAM_MODELS = [ChatCompletionChunk, Completion, ErrorResponse]

REF_TEMPLATE = "#/components/schemas/{model}"


def build_openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    _, defs = models_json_schema([(m, "validation") for m in REQUEST_MODELS], ref_template=REF_TEMPLATE)
    components.update(defs.get("$defs", {}))
    _, defs = models_json_schema([(m, "serialization") for m in STREAM_MODELS], ref_template=REF_TEMPLATE)
    for name, definition in defs.get("$defs", {}).items():
        components.setdefault(name, definition)
    for path in schema.get("paths", {}).values():
        for operation in path.values():
            operation.get("responses", {}).pop("422", None)
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    app.openapi_schema = schema
    return schema
