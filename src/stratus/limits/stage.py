"""Limits and usage at the gateway: the admit and account hooks around any other hooks.

    hooks = metering.wrap(AuthHooks(access), settings, access.store)   # what create_app does

`MeteredHooks` delegates identify, guard, authorize and record to the hooks it wraps, and adds
step 4 (admit: limits/meter.py reserves the worst case atomically; a refusal is a 429 with
Retry-After and the x-ratelimit-* headers) and step 7 (account: the reservation becomes the
delivered count and a ledger row). A generation request refused after identification (a 429, a
400 for bad input, a 503) gets a ledger row too, with status refused_<HTTP status> and no tokens. A reservation that no generation settled (a response-cache
hit, an error before the engine started) is settled with what ctx.usage says at the record step.

Metering is on with access control, off with --no-auth unless `metering` is set true.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from fastapi import Request

from stratus.api.errors import APIError
from stratus.api.pipeline import RequestContext, RequestHooks, Usage
from stratus.limits.memory import MemoryLimiter
from stratus.limits.meter import LimitExceeded, Meter, Ticket
from stratus.limits.rules import LimiterUnavailable, parse_prices
from stratus.security.identity import ANONYMOUS, Principal
from stratus.store import Store, database_url

if TYPE_CHECKING:
    from stratus.api.state import AppState
    from stratus.config import Settings

log = logging.getLogger("stratus.limits")


def too_many(exc: LimitExceeded) -> APIError:
    headers = {**exc.headers, "Retry-After": str(exc.retry_after)}
    if exc.quota and exc.retry_after > 60:
        headers["x-should-retry"] = "false"  # a quota that resets tomorrow: clients must not spin
    code = "insufficient_quota" if exc.quota else "rate_limit_exceeded"
    return APIError(429, exc.message, code=code, headers=headers)


def limiter_down(why: str) -> APIError:
    return APIError(
        503,
        f"The rate limiter is unavailable ({why}); the request was refused. Retry shortly.",
        code="limiter_unavailable",
        headers={"Retry-After": "2"},
    )


# the routes that generate (and pass step 4): each request to them gets one ledger row
GENERATION_ROUTES = frozenset({"/v1/completions", "/v1/chat/completions"})


def refused_generation(ctx: RequestContext) -> bool:
    """An identified caller's generation request that ended before admission (429, 400, 503...):
    a ledger row with zero tokens. Unidentified requests (401) are the audit trail's alone."""
    return ctx.principal is not None and ctx.route in GENERATION_ROUTES and (ctx.status or 0) >= 400


def refusal_status(ctx: RequestContext) -> str:
    return "client_disconnect" if ctx.outcome == "client_disconnect" else f"refused_{ctx.status}"


class MeteredHooks(RequestHooks):
    def __init__(self, inner: RequestHooks, meter: Meter):
        self.inner = inner
        self.meter = meter
        self._tickets: dict[int, Ticket] = {}  # id(ctx) -> the reservation of an admitted request

    def __getattr__(self, name: str):
        return getattr(self.inner, name)  # e.g. `access` of AuthHooks

    def bind(self, state: AppState) -> None:
        self.inner.bind(state)

    def close(self) -> None:
        self.inner.close()

    async def may(self, request: Request, ctx: RequestContext, permission: str) -> bool:
        return await self.inner.may(request, ctx, permission)

    async def identify(self, request: Request, ctx: RequestContext) -> Principal:
        return await self.inner.identify(request, ctx)

    async def guard(self, request: Request, ctx: RequestContext) -> None:
        await self.inner.guard(request, ctx)

    async def authorize(self, ctx: RequestContext, model: str | None) -> None:
        await self.inner.authorize(ctx, model)

    async def admit(self, ctx: RequestContext, prompt_tokens: int, max_tokens: int) -> None:
        await self.inner.admit(ctx, prompt_tokens, max_tokens)
        principal = ctx.principal or ANONYMOUS
        try:
            ticket = await self.meter.admit(principal, ctx.model or "", prompt_tokens, max_tokens)
        except LimitExceeded as exc:
            raise too_many(exc) from None
        except LimiterUnavailable as exc:
            raise limiter_down(str(exc)) from None
        self._tickets[id(ctx)] = ticket
        ctx.response_headers.update(ticket.headers)  # x-ratelimit-* on the response, as OpenAI does

    async def account(self, ctx: RequestContext, usage: Usage) -> None:
        await self._settle(ctx, usage)
        await self.inner.account(ctx, usage)

    async def record(self, ctx: RequestContext) -> None:
        # record runs exactly once per request, last: the ticket is dropped here, not when settled,
        # so an admitted request that failed is never mistaken for a refused one
        ticket = self._tickets.pop(id(ctx), None)
        try:
            if ticket is not None:
                await self._settle(ctx, ctx.usage or Usage(), ticket)
            elif refused_generation(ctx):
                await self.meter.refused(
                    ctx.principal or ANONYMOUS,
                    ctx.model or "",
                    request_id=ctx.request_id,
                    status=refusal_status(ctx),
                    started_at=ctx.started_at,
                    latency_s=time.perf_counter() - ctx.started,
                )
        finally:
            await self.inner.record(ctx)

    async def _settle(self, ctx: RequestContext, usage: Usage, ticket: Ticket | None = None) -> None:
        ticket = ticket or self._tickets.get(id(ctx))
        if ticket is None:
            return
        await self.meter.settle(  # a no-op for a ticket already settled
            ticket,
            request_id=ctx.request_id,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            status=ctx.outcome,
            started_at=ctx.started_at,
            latency_s=time.perf_counter() - ctx.started,
        )


def build_limiter(settings: Settings):
    if settings.redis_url:
        from stratus.limits.redis import RedisLimiter

        return RedisLimiter(settings.redis_url)
    return MemoryLimiter()


def wrap(hooks: RequestHooks, settings: Settings, store: Store | None) -> RequestHooks:
    """`hooks` with limits and the usage ledger, if metering is on for these settings."""
    enabled = settings.metering if settings.metering is not None else store is not None
    if not enabled:
        return hooks
    if store is None:
        store = Store.open(database_url(settings.data_dir, settings.database_url))
    meter = Meter(
        store,
        build_limiter(settings),
        prices=parse_prices(settings.model_prices),
        fail_open=settings.limits_fail_open,
    )
    return MeteredHooks(hooks, meter)


def meter_of(hooks: RequestHooks) -> Meter | None:
    return hooks.meter if isinstance(hooks, MeteredHooks) else None
