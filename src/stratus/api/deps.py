"""FastAPI dependencies: the request path's steps as values a route asks for by type.

    async def endpoint(request: Request, gw: GatewayDep):
        body, raw = await parse_body(request, ChatCompletionRequest)
        engine = await gw.route(body.model)             # authorize the model, route
        await gw.admit(prompt_tokens, max_tokens)       # admit
        ...                                             # generate; settle (gw.settle)

screen, identify and the route's authorization run in `request_context` before the body is
even read, so an unauthenticated caller learns nothing about the body's validity. record runs
in `middleware.RequestContextMiddleware` after the response. The steps themselves are the
stages that api/pipeline.py composes; none of them imports FastAPI.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Generic, TypeVar

import orjson
from fastapi import Depends, Request
from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError
from starlette.requests import ClientDisconnect

from stratus.api.errors import validation_message
from stratus.api.state import AppState
from stratus.audit.content_log import CONTENT_ROUTES
from stratus.observe.tracing import span
from stratus.request.context import RequestContext, Usage
from stratus.request.errors import APIError, unavailable
from stratus.security.access import AccessControl
from stratus.security.identity import Principal

if TYPE_CHECKING:
    from stratus.api.registry import ServedModel
    from stratus.cluster.replica_set import ReplicaSet

M = TypeVar("M", bound=BaseModel)


def app_state(request: Request) -> AppState:
    return request.app.state.stratus


async def _app_state(request: Request) -> AppState:
    # async: FastAPI runs a plain `def` dependency in a worker thread, a thread hop per request
    return request.app.state.stratus


StateDep = Annotated[AppState, Depends(_app_state)]


async def request_context(request: Request, state: StateDep) -> RequestContext:
    """screen, identify, authorize the route: who is calling, and may they call it at all."""
    ctx: RequestContext = request.state.ctx
    if not ctx.authenticating:
        route = request.scope.get("route")
        ctx.route = getattr(route, "path", None) or ctx.path
        await state.pipeline.identify(ctx)
    return ctx


ContextDep = Annotated[RequestContext, Depends(request_context)]


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
            self.ctx.name_model(model)
        await self.state.pipeline.authorize(self.ctx, model)

    async def route(
        self, model: str, generating: bool = True, sequences: int = 1, task: str = "generate"
    ) -> ReplicaSet:
        """authorize and route: may the caller use `model`, and which engine serves it. A request
        that will generate `sequences` sequences (prompts x n) is refused with 503 when they
        would take the engine's queue over its bound (counted in sequences, not requests). A
        model served for another `task` (--task) is a 400 when `generating`."""
        with span("stratus.route") as traced:
            try:
                return await self._route(model, generating, sequences, task)
            finally:
                if traced is not None and self.ctx.model:  # as named (a key sent as one: redacted)
                    traced.set_attribute("stratus.model", self.ctx.model)

    async def _route(self, model: str, generating: bool, sequences: int, task: str) -> ReplicaSet:
        await self.authorize(model)
        settings = self.state.settings
        if generating:
            check_task(self.state.registry.get(model, self.visible), task)
        engine = self.state.registry.engine(model, settings.retry_after, self.visible)
        if not generating:
            return engine
        stats = engine.stats()  # None until a process engine reports its first numbers
        waiting = stats.waiting if stats is not None else 0
        if waiting and waiting + sequences > settings.max_waiting:
            raise unavailable(
                f"The server is overloaded: {waiting} sequences are waiting for model '{model}'. "
                f"Retry after {settings.retry_after} s.",
                settings.retry_after,
            )
        return engine

    async def admit(self, prompt_tokens: int, max_tokens: int, sequences: int = 1) -> None:
        """admit: limits, quota and budget for what this request may use: `max_tokens` of all its
        `sequences` (prompts × n) together."""
        await self.state.pipeline.admit(self.ctx, prompt_tokens, max_tokens, sequences)

    async def settle(self, usage: Usage) -> None:
        """settle: charge what was actually delivered."""
        await self.state.pipeline.settle(self.ctx, usage)


def check_task(model: ServedModel, task: str) -> None:
    """A 400 when `model` is served for another task than the route's (--task)."""
    if model.task == task:
        return
    if model.task == "embed":
        raise APIError(
            400,
            f"The model '{model.name}' is served for embeddings (--task embed): use POST "
            "/v1/embeddings; it does not generate text.",
            param="model",
            code="wrong_task",
        )
    raise APIError(
        400,
        f"The model '{model.name}' is served for text generation, not embeddings: serve it with "
        f"--task {model.name}=embed to use it on /v1/embeddings.",
        param="model",
        code="wrong_task",
    )


async def gateway(request: Request, ctx: ContextDep, state: StateDep) -> Gateway:
    return Gateway(request, ctx, state)


async def gateway_of(request: Request) -> Gateway:
    """What `GatewayDep` gives (screen, identify, the route's authorization), without FastAPI's
    dependency solving, which cost the generation routes a third of their CPU per request (an
    introspection of every dependency on every request; bench/gateway_profile.py, issue 18).
    The generation routes call this first, then `parse_body`: the same order as their
    dependencies had."""
    state: AppState = request.app.state.stratus
    return Gateway(request, await request_context(request, state), state)


GatewayDep = Annotated[Gateway, Depends(gateway)]


async def principal(ctx: ContextDep) -> Principal:
    """The identified caller (screen, identify and the route's authorization done)."""
    assert ctx.principal is not None
    return ctx.principal


PrincipalDep = Annotated[Principal, Depends(principal)]


async def access_control(state: StateDep) -> AccessControl:
    """The access control behind /admin/*; 404 when the server runs without it (--no-auth)."""
    access = state.access
    if access is None:
        raise APIError(
            404,
            "Access control is off on this server (--no-auth), so /admin is not available.",
            code="auth_disabled",
        )
    return access


AccessDep = Annotated[AccessControl, Depends(access_control)]


async def parse_body(request: Request, model: type[M]) -> tuple[M, dict]:
    """Read and validate a JSON body whatever its Content-Type (curl -d sends a form type).

    Returns the validated model and the raw object (the response cache keys on the latter).
    """
    try:
        raw = await request.body()  # bounded in size and time by BodyLimitMiddleware
    except ClientDisconnect:
        raise APIError(
            499, "The client went away while sending the body.", code="client_disconnect"
        ) from None
    if not raw.strip():
        raise APIError(400, "The request body is empty; send a JSON object.")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise APIError(400, f"The request body is not valid JSON: {exc}.") from None
    if not isinstance(data, dict):
        raise APIError(400, f"The request body must be a JSON object, not {type(data).__name__}.")
    ctx = getattr(request.state, "ctx", None)
    if ctx is not None and ctx.route in CONTENT_ROUTES:
        # A reference, for content logging of the teams that turned it on; only a generation
        # route's body is kept: an admin body (an upstream's api_key, a secret's value) never is.
        ctx.body = data
    try:
        return model.model_validate(data), data
    except PydanticValidationError as exc:
        message, param = validation_message(exc.errors(include_url=False))
        raise APIError(400, message, param=param) from None


@dataclass(slots=True)
class Parsed(Generic[M]):
    """A validated JSON body and the raw object it came from (the response cache keys on it)."""

    body: M
    raw: dict


def parsed(model: type[M]) -> Any:
    """A dependency: the request body validated as `model`, read after the caller is identified
    (the route's gateway dependency runs first). Use it as
    `body: Annotated[Parsed[ChatCompletionRequest], parsed(ChatCompletionRequest)]`."""

    async def read(request: Request, ctx: ContextDep) -> Parsed[M]:
        return Parsed(*await parse_body(request, model))

    return Depends(read)
