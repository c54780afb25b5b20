"""/admin/upstreams: OpenAI-compatible upstreams that serve a model here (cluster/upstream.py).

    curl -H "Authorization: Bearer $STRATUS_API_KEY" http://127.0.0.1:8000/admin/upstreams \\
         -d '{"name": "vllm-a", "model": "llama", "base_url": "http://10.0.0.7:8000/v1",
              "upstream_model": "meta-llama/Llama-3.1-8B-Instruct", "api_key": "..."}'

Needs `cluster.manage` (admins). The API key is stored encrypted (security/secrets.py) and never
returned; the base URL must be http(s) without credentials. Clients then use `"model": "llama"`
like any other model (grants apply as usual); they never name an upstream URL themselves.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator

from stratus.api.deps import access_control, app_state, parse_body, principal
from stratus.api.errors import ErrorResponse
from stratus.api.streaming import JSONBody
from stratus.cluster.upstream import NAME_RE, check_base_url
from stratus.config import MODEL_NAME_RE
from stratus.request.errors import APIError
from stratus.security.access import AccessControl
from stratus.security.identity import Principal
from stratus.store import Conflict
from stratus.store import upstreams as table

router = APIRouter(prefix="/admin", tags=["admin"])
NO_STORE = {"Cache-Control": "no-store"}


class UpstreamCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(description="A name for this upstream, e.g. vllm-a", pattern=NAME_RE.pattern)
    model: str = Field(description="The model name clients use here", pattern=MODEL_NAME_RE.pattern)
    base_url: str = Field(description="The upstream's OpenAI base URL, e.g. http://10.0.0.7:8000/v1")
    upstream_model: str = Field(
        min_length=1, max_length=256, description="The model name the upstream expects"
    )
    api_key: str = Field("", max_length=4096, description="Sent as a bearer token; stored encrypted")

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        return check_base_url(value)


class UpstreamOut(BaseModel):
    name: str
    model: str
    base_url: str
    upstream_model: str
    created_at: float
    created_by: str | None


class UpstreamList(BaseModel):
    data: list[UpstreamOut]


def _out(row: dict) -> dict:
    return {k: row[k] for k in UpstreamOut.model_fields}


def _schema() -> dict:
    schema = UpstreamCreate.model_json_schema()
    schema.pop("title", None)
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def _errors(*codes: int) -> dict:
    text = {400: "Invalid field", 404: "No such upstream", 409: "The name is taken"}
    return {c: {"model": ErrorResponse, "description": text[c]} for c in codes}


@router.get(
    "/upstreams", summary="OpenAI-compatible upstreams (keys never shown)", response_model=UpstreamList
)
async def list_upstreams(
    me: Principal = Depends(principal), access: AccessControl = Depends(access_control)
) -> JSONBody:
    def read() -> list[dict]:
        with access.store.connect() as conn:
            return [_out(r) for r in table.list_all(conn)]

    return JSONBody({"data": await asyncio.to_thread(read)}, headers=NO_STORE)


@router.post(
    "/upstreams",
    summary="Register an OpenAI-compatible upstream for a model",
    status_code=201,
    response_model=UpstreamOut,
    responses=_errors(400, 409),
    openapi_extra=_schema(),
)
async def add_upstream(
    request: Request, me: Principal = Depends(principal), access: AccessControl = Depends(access_control)
) -> JSONBody:
    body, _ = await parse_body(request, UpstreamCreate)
    state = app_state(request)
    if body.model in state.registry.models:
        raise APIError(
            409, f"The model '{body.model}' is served by replicas here; pick another name.", param="model"
        )
    upstreams = app_state(request).upstreams

    def write() -> dict:
        box = upstreams.secrets()
        with access.store.begin() as conn:
            row = table.add(conn, body.name, body.model, body.base_url, body.upstream_model, me.user)
        try:
            if body.api_key:
                box.put(table.secret_name(body.name), body.api_key)
        except Exception:  # no upstream without its key
            with access.store.begin() as conn:
                table.remove(conn, body.name)
            raise
        return row

    try:
        row = await asyncio.to_thread(write)
    except Conflict as exc:
        raise APIError(409, str(exc), param="name") from None
    await upstreams.refresh()
    request.state.ctx.name_model(body.model)  # the audit record names the model it serves
    return JSONBody(_out(row), status_code=201, headers=NO_STORE)


@router.delete("/upstreams/{name}", summary="Remove an upstream (and its stored key)", responses=_errors(404))
async def remove_upstream(
    name: str,
    request: Request,
    me: Principal = Depends(principal),
    access: AccessControl = Depends(access_control),
) -> JSONBody:
    upstreams = app_state(request).upstreams

    def delete() -> bool:
        with access.store.begin() as conn:
            found = table.remove(conn, name)
        if found:
            upstreams.secrets().delete(table.secret_name(name))
        return found

    if not await asyncio.to_thread(delete):
        raise APIError(404, f"No upstream named '{name}'.", param="name")
    await upstreams.refresh()
    return JSONBody({"name": name, "removed": True}, headers=NO_STORE)
