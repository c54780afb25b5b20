"""/admin/secrets: secrets stored encrypted at rest (security/secrets.py), by name; values go in,
never come out.

    curl -H "Authorization: Bearer $STRATUS_API_KEY" http://127.0.0.1:8000/admin/secrets
    curl -X PUT -H "Authorization: Bearer $STRATUS_API_KEY" \\
         http://127.0.0.1:8000/admin/secrets/hook/slack -d '{"value": "..."}'
    curl -X DELETE -H "Authorization: Bearer $STRATUS_API_KEY" http://127.0.0.1:8000/admin/secrets/hook/slack

Needs `security.manage` (admins). Each call is a request to /admin/*, so each leaves its own audit
record (the value is never in it: request bodies of /admin routes are not recorded). Rotating
the master key rewrites the key file on the gateway host: that stays `stratus secrets
rotate-master-key`, run there.
"""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from stratus.api.deps import app_state, parse_body, principal
from stratus.api.errors import ErrorResponse
from stratus.api.streaming import JSONBody
from stratus.request.errors import APIError
from stratus.security import rbac
from stratus.security.secrets import NAME_RE, SecretError, SecretStore, valid_name

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(principal)])
NO_STORE = {"Cache-Control": "no-store"}

rbac.ROUTE_PERMISSIONS.update(
    {
        ("GET", "/admin/secrets"): rbac.SECURITY_MANAGE,
        ("PUT", "/admin/secrets/{name:path}"): rbac.SECURITY_MANAGE,
        ("DELETE", "/admin/secrets/{name:path}"): rbac.SECURITY_MANAGE,
    }
)


class SecretValue(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    value: str = Field(min_length=1, max_length=65536, description="Stored encrypted; never returned")


class SecretOut(BaseModel):
    name: str
    key_id: str | None = None
    stored_at: float | None = None


class SecretList(BaseModel):
    data: list[SecretOut]


def _errors(*codes: int) -> dict[int | str, dict]:
    text = {400: "Invalid name or value", 404: "No such secret", 503: "The master key cannot be loaded"}
    return {c: {"model": ErrorResponse, "description": text[c]} for c in codes}


def _box(request: Request) -> SecretStore:
    upstreams = app_state(request).upstreams
    if upstreams is None:
        raise APIError(404, "Secrets are off on this server (--no-auth).", code="secrets_disabled")
    try:
        return upstreams.secrets()
    except SecretError as exc:
        raise APIError(
            503, f"The master key cannot be loaded: {exc}", code="master_key_unavailable"
        ) from None


def _checked(name: str) -> str:
    if not valid_name(name):
        raise APIError(
            400, f"A secret's name must match {NAME_RE.pattern}, up to 128 characters, no '..'.", param="name"
        )
    return name


@router.get("/secrets", summary="Names of the stored secrets (never their values)", response_model=SecretList)
async def list_secrets(request: Request) -> JSONBody:
    box = _box(request)
    names = await asyncio.to_thread(box.names)
    return JSONBody({"data": [{"name": n} for n in names]}, headers=NO_STORE)


@router.put(
    "/secrets/{name:path}",
    summary="Store a secret (replacing one of that name), encrypted under the current master key",
    response_model=SecretOut,
    responses=_errors(400, 503),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": SecretValue.model_json_schema()}},
        }
    },
)
async def put_secret(name: str, request: Request) -> JSONBody:
    _checked(name)
    body, _ = await parse_body(request, SecretValue)
    box = _box(request)
    try:
        await asyncio.to_thread(box.put, name, body.value)
    except SecretError as exc:
        raise APIError(503, str(exc), code="master_key_unavailable") from None
    return JSONBody({"name": name, "key_id": box.ring.current, "stored_at": time.time()}, headers=NO_STORE)


@router.delete("/secrets/{name:path}", summary="Remove a stored secret", responses=_errors(400, 404, 503))
async def delete_secret(name: str, request: Request) -> JSONBody:
    _checked(name)
    box = _box(request)
    if not await asyncio.to_thread(box.delete, name):
        raise APIError(404, f"No secret named '{name}'.", param="name")
    return JSONBody({"name": name, "removed": True}, headers=NO_STORE)
