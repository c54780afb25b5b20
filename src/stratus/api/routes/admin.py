"""/admin/*: users, teams, model grants, API keys and whoami, as JSON.

Every route here runs identify (and its route permission, security/rbac.ROUTE_PERMISSIONS)
before its body is read; the operation itself (security/admin.py, security/admin_keys.py) then
checks what it confers with rbac.authorize before it writes. Responses are never cached
(`Cache-Control: no-store`); a key's secret appears once, in the response that created it.

    curl -H "Authorization: Bearer $STRATUS_API_KEY" http://127.0.0.1:8000/admin/whoami
    curl -H "Authorization: Bearer $STRATUS_API_KEY" http://127.0.0.1:8000/admin/keys \\
         -d '{"name": "ci", "user": "alice", "team": "ml", "models": ["demo"], "expires_in": 86400}'
"""

from __future__ import annotations

import asyncio
from typing import Any, TypeVar

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel

from stratus.api.admin_schemas import (
    KeyCreate,
    KeyList,
    KeyOut,
    KeyRotate,
    KeyWithSecret,
    MemberSet,
    TeamCreate,
    TeamList,
    TeamOut,
    UserCreate,
    UserList,
    UserOut,
    UserUpdate,
    WhoAmI,
)
from stratus.api.deps import access_control, parse_body, principal
from stratus.api.errors import ErrorResponse
from stratus.api.streaming import JSONBody
from stratus.security import admin as ops
from stratus.security import admin_keys as key_ops
from stratus.security import views
from stratus.security.access import AccessControl
from stratus.security.identity import Principal

router = APIRouter(prefix="/admin", tags=["admin"])

M = TypeVar("M", bound=BaseModel)
NO_STORE = {"Cache-Control": "no-store"}

_ERRORS = {
    400: "Invalid value (the message names the field)",
    403: "Not allowed: the permission is missing, or the change would confer more than the caller holds",
    404: "No such user, team or key, or not visible to the caller",
    409: "Conflicts with the current state (a name taken, the last admin)",
}


def _responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorResponse, "description": _ERRORS[code]} for code in codes}


def _body(model: type[BaseModel], required: bool = True) -> dict[str, Any]:
    schema = model.model_json_schema()
    schema.pop("title", None)
    return {"requestBody": {"required": required, "content": {"application/json": {"schema": schema}}}}


async def _optional_body(request: Request, model: type[M]) -> M:
    if not (await request.body()).strip():
        return model()
    body, _ = await parse_body(request, model)
    return body


def _reply(data: Any, status: int = 200) -> JSONBody:
    return JSONBody(data, status_code=status, headers=NO_STORE)


async def _run(fn, *args, **kwargs):
    """Admin operations touch the database: run them off the event loop."""
    return await asyncio.to_thread(fn, *args, **kwargs)


Access = Depends(access_control)
Caller = Depends(principal)


@router.get("/whoami", summary="The caller: user, roles, teams, usable models", response_model=WhoAmI)
async def whoami(me: Principal = Caller) -> JSONBody:
    return _reply(views.principal(me))


# -- users ----------------------------------------------------------------------------------------


@router.get("/users", summary="Users the caller may see", response_model=UserList, responses=_responses(404))
async def list_users(
    team: str | None = None, me: Principal = Caller, access: AccessControl = Access
) -> JSONBody:
    return _reply({"data": await _run(ops.list_users, access, me, team)})


@router.post(
    "/users",
    summary="Create a user or service account",
    status_code=201,
    response_model=UserOut,
    responses=_responses(400, 403, 409),
    openapi_extra=_body(UserCreate),
)
async def create_user(request: Request, me: Principal = Caller, access: AccessControl = Access) -> JSONBody:
    body, _ = await parse_body(request, UserCreate)
    return _reply(await _run(ops.create_user, access, me, **body.model_dump()), 201)


@router.get("/users/{name}", summary="One user", response_model=UserOut, responses=_responses(404))
async def get_user(name: str, me: Principal = Caller, access: AccessControl = Access) -> JSONBody:
    return _reply(await _run(ops.get_user, access, me, name))


@router.patch(
    "/users/{name}",
    summary="Change a user's role, or disable or enable them",
    response_model=UserOut,
    responses=_responses(400, 403, 404, 409),
    openapi_extra=_body(UserUpdate),
)
async def update_user(
    name: str, request: Request, me: Principal = Caller, access: AccessControl = Access
) -> JSONBody:
    body, _ = await parse_body(request, UserUpdate)
    return _reply(await _run(ops.update_user, access, me, name, body.role, body.disabled))


@router.put(
    "/users/{name}/models/{model:path}",
    summary="Grant a model to a user",
    response_model=UserOut,
    responses=_responses(400, 403, 404),
)
async def grant_user_model(
    name: str, model: str, me: Principal = Caller, access: AccessControl = Access
) -> JSONBody:
    return _reply(await _run(ops.set_user_grant, access, me, name, model, True))


@router.delete(
    "/users/{name}/models/{model:path}",
    summary="Withdraw a model from a user",
    response_model=UserOut,
    responses=_responses(400, 403, 404),
)
async def revoke_user_model(
    name: str, model: str, me: Principal = Caller, access: AccessControl = Access
) -> JSONBody:
    return _reply(await _run(ops.set_user_grant, access, me, name, model, False))


# -- teams ----------------------------------------------------------------------------------------


@router.get("/teams", summary="Teams the caller may see", response_model=TeamList)
async def list_teams(me: Principal = Caller, access: AccessControl = Access) -> JSONBody:
    return _reply({"data": await _run(ops.list_teams, access, me)})


@router.post(
    "/teams",
    summary="Create a team",
    status_code=201,
    response_model=TeamOut,
    responses=_responses(400, 403, 409),
    openapi_extra=_body(TeamCreate),
)
async def create_team(request: Request, me: Principal = Caller, access: AccessControl = Access) -> JSONBody:
    body, _ = await parse_body(request, TeamCreate)
    return _reply(await _run(ops.create_team, access, me, body.name), 201)


@router.get(
    "/teams/{name}",
    summary="One team, its members and models",
    response_model=TeamOut,
    responses=_responses(404),
)
async def get_team(name: str, me: Principal = Caller, access: AccessControl = Access) -> JSONBody:
    return _reply(await _run(ops.get_team, access, me, name))


@router.put(
    "/teams/{name}/members/{user}",
    summary="Add a user to a team, or change their role in it",
    response_model=TeamOut,
    responses=_responses(400, 403, 404),
    openapi_extra=_body(MemberSet, required=False),
)
async def set_member(
    name: str, user: str, request: Request, me: Principal = Caller, access: AccessControl = Access
) -> JSONBody:
    body = await _optional_body(request, MemberSet)
    return _reply(await _run(ops.set_member, access, me, name, user, body.role))


@router.delete(
    "/teams/{name}/members/{user}",
    summary="Remove a user from a team",
    response_model=TeamOut,
    responses=_responses(403, 404),
)
async def remove_member(
    name: str, user: str, me: Principal = Caller, access: AccessControl = Access
) -> JSONBody:
    return _reply(await _run(ops.remove_member, access, me, name, user))


@router.put(
    "/teams/{name}/models/{model:path}",
    summary="Grant a model to a team",
    response_model=TeamOut,
    responses=_responses(400, 403, 404),
)
async def grant_team_model(
    name: str, model: str, me: Principal = Caller, access: AccessControl = Access
) -> JSONBody:
    return _reply(await _run(ops.set_team_grant, access, me, name, model, True))


@router.delete(
    "/teams/{name}/models/{model:path}",
    summary="Withdraw a model from a team",
    response_model=TeamOut,
    responses=_responses(400, 403, 404),
)
async def revoke_team_model(
    name: str, model: str, me: Principal = Caller, access: AccessControl = Access
) -> JSONBody:
    return _reply(await _run(ops.set_team_grant, access, me, name, model, False))


# -- keys -----------------------------------------------------------------------------------------


@router.get("/keys", summary="Keys the caller may see (never their secrets)", response_model=KeyList)
async def list_keys(
    user: str | None = None,
    team: str | None = None,
    include_revoked: bool = True,
    me: Principal = Caller,
    access: AccessControl = Access,
) -> JSONBody:
    return _reply({"data": await _run(key_ops.list_keys, access, me, user, team, include_revoked)})


@router.post(
    "/keys",
    summary="Create an API key; its secret is in this response only",
    status_code=201,
    response_model=KeyWithSecret,
    responses=_responses(400, 403, 404, 409),
    openapi_extra=_body(KeyCreate),
)
async def create_key(request: Request, me: Principal = Caller, access: AccessControl = Access) -> JSONBody:
    body, _ = await parse_body(request, KeyCreate)
    view, secret = await _run(key_ops.create_key, access, me, **body.model_dump())
    return _reply({"key": view, "secret": secret}, 201)


@router.get("/keys/{key_id}", summary="One key", response_model=KeyOut, responses=_responses(404))
async def get_key(key_id: str, me: Principal = Caller, access: AccessControl = Access) -> JSONBody:
    return _reply(await _run(key_ops.get_key, access, me, key_id))


@router.post(
    "/keys/{key_id}/rotate",
    summary="A new secret for the key; the old one works for grace_seconds more",
    response_model=KeyWithSecret,
    responses=_responses(400, 403, 404, 409),
    openapi_extra=_body(KeyRotate, required=False),
)
async def rotate_key(
    key_id: str, request: Request, me: Principal = Caller, access: AccessControl = Access
) -> JSONBody:
    body = await _optional_body(request, KeyRotate)
    view, secret = await _run(key_ops.rotate_key, access, me, key_id, body.grace_seconds)
    return _reply({"key": view, "secret": secret})


@router.post(
    "/keys/{key_id}/revoke",
    summary="Revoke a key (every gateway refuses it within the cache TTL)",
    response_model=KeyOut,
    responses=_responses(403, 404),
)
async def revoke_key(key_id: str, me: Principal = Caller, access: AccessControl = Access) -> JSONBody:
    return _reply(await _run(key_ops.revoke_key, access, me, key_id))
