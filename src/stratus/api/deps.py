"""FastAPI dependencies: the request path's steps as functions a route asks for.

    async def endpoint(request: Request, gw: Gateway = Depends(gateway)):
        body, raw = await parse_body(request, ChatCompletionRequest)
        engine = await gw.route(body.model)           # 3 authorize + 5 route
        await gw.admit(prompt_tokens, max_tokens)       # 4 admit
        ...                                             # 6 generate, 7 account (gw.account)

Steps 1 (identify) and 2 (guard) run in `request_context` before the body is even read, so an
unauthenticated caller learns nothing about the body's validity. Step 8 (record) runs in
`middleware.RequestContextMiddleware` after the response. The hooks themselves are plain
functions on `pipeline.RequestHooks`; security code never needs to import FastAPI.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

import orjson
from fastapi import Depends, Request
from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError

from stratus.api.errors import APIError, unavailable, validation_message
from stratus.api.pipeline import RequestContext, Usage
from stratus.api.state import AppState
from stratus.security.access import AccessControl
from stratus.security.identity import Principal

if TYPE_CHECKING:
    from stratus.cluster.replica_set import ReplicaSet

M = TypeVar("M", bound=BaseModel)


def app_state(request: Request) -> AppState:
    return request.app.state.stratus


async def request_context(request: Request) -> RequestContext:
    """Steps 1 and 2: who is calling, and should they be stopped outright."""
    ctx: RequestContext = request.state.ctx
    if ctx.principal is None:
        ctx.authenticating = True
        hooks = app_state(request).hooks
        ctx.principal = await hooks.identify(request, ctx)
        await hooks.guard(request, ctx)
    return ctx


class Gateway:
    """One request's view of the gateway: its context, the app state, and the remaining steps."""

    def __init__(self, request: Request, ctx: RequestContext, state: AppState):
        self.request = request
        self.ctx = ctx
        self.state = state

    @property
    def visible(self):
        """Which model names the caller may know of (None: all); see ModelRegistry.get."""
        return self.ctx.principal.can_use if self.ctx.principal is not None else None

    async def authorize(self, model: str | None = None) -> None:
        if model is not None:
            self.ctx.model = model
        await self.state.hooks.authorize(self.ctx, model)

    async def route(self, model: str, generating: bool = True) -> ReplicaSet:
        """Steps 3 and 5: may the caller use `model`, and which engine serves it. A request that
        will generate is refused with 503 while the engine's queue is over its bound."""
        await self.authorize(model)
        settings = self.state.settings
        engine = self.state.registry.engine(model, settings.retry_after, self.visible)
        if not generating:
            return engine
        stats = engine.stats()  # None until a process engine reports its first numbers
        waiting = stats.waiting if stats is not None else 0
        if waiting >= settings.max_waiting:
            raise unavailable(
                f"The server is overloaded: {waiting} requests are waiting for model '{model}'. "
                f"Retry after {settings.retry_after} s.",
                settings.retry_after,
            )
        return engine

    async def admit(self, prompt_tokens: int, max_tokens: int) -> None:
        """Step 4: limits, quota and budget for what this request may use."""
        await self.state.hooks.admit(self.ctx, prompt_tokens, max_tokens)

    async def account(self, usage: Usage) -> None:
        """Step 7: charge what was actually used."""
        self.ctx.usage = usage
        await self.state.hooks.account(self.ctx, usage)


async def gateway(request: Request, ctx: RequestContext = Depends(request_context)) -> Gateway:
    return Gateway(request, ctx, app_state(request))


async def principal(ctx: RequestContext = Depends(request_context)) -> Principal:
    """The identified caller (steps 1 and 2 done)."""
    assert ctx.principal is not None
    return ctx.principal


def access_control(request: Request) -> AccessControl:
    """The access control behind /admin/*; 404 when the server runs without it (--no-auth)."""
    access = app_state(request).access
    if access is None:
        raise APIError(
            404,
            "Access control is off on this server (--no-auth), so /admin is not available.",
            code="auth_disabled",
        )
    return access


async def parse_body(request: Request, model: type[M]) -> tuple[M, dict]:
    """Read and validate a JSON body whatever its Content-Type (curl -d sends a form type).

    Returns the validated model and the raw object (the response cache keys on the latter).
    """
    raw = await request.body()
    if not raw.strip():
        raise APIError(400, "The request body is empty; send a JSON object.")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise APIError(400, f"The request body is not valid JSON: {exc}.") from None
    if not isinstance(data, dict):
        raise APIError(400, f"The request body must be a JSON object, not {type(data).__name__}.")
    ctx = getattr(request.state, "ctx", None)
    if ctx is not None:
        ctx.body = data  # a reference, for content logging of the teams that turned it on
    try:
        return model.model_validate(data), data
    except PydanticValidationError as exc:
        message, param = validation_message(exc.errors(include_url=False))
        raise APIError(400, message, param=param) from None
