"""Limits and usage in the request path: count, admit, settle, and the ledger row at record.

authorize  a generation request is counted against the rpm limits that apply whatever the model
           as soon as its caller is known, before its body is read
admit      limits/meter.py reserves the worst case atomically (tokens of every sequence, and
           prompts × n of the concurrency limits); a refusal is a 429 with Retry-After and the
           x-ratelimit-* headers; the reservation (a Ticket) travels on ctx.ticket
settle     the reservation becomes the delivered count and a ledger row
record     a reservation that no generation settled (a response-cache hit, an error before the
           engine started) is settled with what ctx.usage says; a generation request refused
           after identification (a 429, a 400 for bad input, a 503) gets a ledger row with status
           refused_<HTTP status> and no tokens

Metering is on with access control, off with --no-auth unless `metering` is set true.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from stratus.limits.memory import MemoryLimiter
from stratus.limits.meter import LedgerUnavailable, LimitExceeded, Meter, Ticket
from stratus.limits.rules import LimiterUnavailable, parse_prices
from stratus.request.context import RequestContext, Usage
from stratus.request.errors import APIError
from stratus.request.stage import Stage
from stratus.security.identity import ANONYMOUS
from stratus.store import Store, database_url

if TYPE_CHECKING:
    from stratus.config import Settings

log = logging.getLogger("stratus.limits")
T = TypeVar("T")

LEDGER_SPOOL_FILE = "ledger-spool.jsonl"  # in the data directory: rows the database would not take


def too_many(exc: LimitExceeded) -> APIError:
    headers = {**exc.headers, "Retry-After": str(exc.retry_after)}
    if exc.never or (exc.quota and exc.retry_after > 60):
        # the request alone exceeds the limit, or a quota resets tomorrow: clients must not spin
        headers["x-should-retry"] = "false"
    code = "insufficient_quota" if exc.quota else "rate_limit_exceeded"
    return APIError(429, exc.message, code=code, headers=headers)


def limiter_down(why: str) -> APIError:
    return APIError(
        503,
        f"The rate limiter is unavailable ({why}); the request was refused. Retry shortly.",
        code="limiter_unavailable",
        headers={"Retry-After": "2"},
    )


# the routes that generate (and pass the admit step): each request to them gets one ledger row
GENERATION_ROUTES = frozenset({"/v1/completions", "/v1/chat/completions", "/v1/responses", "/v1/embeddings"})


def refused_generation(ctx: RequestContext) -> bool:
    """An identified caller's generation request that ended before admission (429, 400, 503...):
    a ledger row with zero tokens. Unidentified requests (401) are the audit trail's alone."""
    return ctx.principal is not None and ctx.route in GENERATION_ROUTES and (ctx.status or 0) >= 400


def refusal_status(ctx: RequestContext) -> str:
    return "client_disconnect" if ctx.outcome == "client_disconnect" else f"refused_{ctx.status}"


class LimitsStage(Stage):
    """admit reserves the worst case (the ticket travels on the request context), settle turns it
    into what was delivered, and record settles what no generation did and writes the ledger row
    of a refused generation request."""

    OUTAGE_LOG_EVERY_S = 30.0  # while the limiter is down, one log line per this many seconds

    def __init__(self, meter: Meter):
        self.meter = meter
        self.down_since: float | None = None  # when the limiter became unreachable
        self._logged_at = 0.0

    async def authorize(self, ctx: RequestContext, model: str | None) -> None:
        """A generation request counts against its caller's rpm limits as soon as the caller is
        known and may call the route, before the body is read: one refused later for its input
        (a prompt too long, bad JSON) has been counted all the same."""
        if model is not None or ctx.route not in GENERATION_ROUTES or ctx.counted is not None:
            return
        principal = ctx.principal or ANONYMOUS
        ctx.counted, headers = await self._limited(self.meter.identified(principal))
        ctx.response_headers.update(headers)

    async def admit(
        self, ctx: RequestContext, prompt_tokens: int, max_tokens: int, sequences: int = 1
    ) -> None:
        principal = ctx.principal or ANONYMOUS
        ticket = await self._limited(
            self.meter.admit(
                principal,
                ctx.model or "",
                prompt_tokens,
                max_tokens,
                sequences=sequences,
                counted=ctx.counted or (),
            )
        )
        ctx.ticket = ticket
        ctx.response_headers.update(ticket.headers)  # x-ratelimit-* on the response, as OpenAI does

    async def _limited(self, call: Awaitable[T]) -> T:
        """A limiter call: a refusal is a 429, an outage a 503 (fail closed), logged once."""
        try:
            result = await call
        except LimitExceeded as exc:
            self._limiter_up()
            raise too_many(exc) from None
        except LimiterUnavailable as exc:
            self._limiter_down(str(exc))
            raise limiter_down(str(exc)) from None
        self._limiter_up()
        return result

    def _limiter_down(self, why: str) -> None:
        """An outage refuses every request (fail closed); say so, but not once per request."""
        now = time.monotonic()
        if self.down_since is None:
            self.down_since = now
            log.error("rate limiter unavailable (%s): refusing requests until it is back", why)
            self._logged_at = now
        elif now - self._logged_at >= self.OUTAGE_LOG_EVERY_S:
            log.error("rate limiter still unavailable after %.0f s (%s)", now - self.down_since, why)
            self._logged_at = now

    def _limiter_up(self) -> None:
        # Back only once a call made since the outage began is answered: a request that needs no
        # counter, or one that reached the limiter before the outage, says nothing about it now.
        if self.down_since is not None and self.meter.answered_at >= self.down_since:
            log.warning("rate limiter back after %.1f s", time.monotonic() - self.down_since)
            self.down_since = None

    async def settle(self, ctx: RequestContext, usage: Usage) -> None:
        await self._settle(ctx, usage)

    async def record(self, ctx: RequestContext) -> None:
        # record runs exactly once per request, last: the ticket is dropped here, not when settled,
        # so an admitted request that failed is never mistaken for a refused one
        ticket, ctx.ticket = ctx.ticket, None
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

    async def _settle(self, ctx: RequestContext, usage: Usage, ticket: Ticket | None = None) -> None:
        ticket = ticket or ctx.ticket
        if ticket is None:
            return
        try:
            await self._charge(ctx, usage, ticket)
        except LedgerUnavailable as exc:  # fail closed: a complete response is refused (503)
            raise APIError(
                503,
                "The usage ledger cannot be written, so the request was refused. Retry shortly.",
                code="ledger_unavailable",
                headers={"Retry-After": "5"},
            ) from exc

    async def _charge(self, ctx: RequestContext, usage: Usage, ticket: Ticket) -> None:
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


def limits_stage(settings: Settings, store: Store | None) -> LimitsStage | None:
    """The limits stage, if metering is on for these settings (on with access control, off with
    --no-auth unless `metering` is set true)."""
    enabled = settings.metering if settings.metering is not None else store is not None
    if not enabled:
        return None
    if store is None:
        store = Store.open(database_url(settings.data_dir, settings.database_url))
    meter = Meter(
        store,
        build_limiter(settings),
        prices=parse_prices(settings.model_prices),
        fail_open=settings.limits_fail_open,
        spool=Path(settings.data_dir) / LEDGER_SPOOL_FILE,
    )
    return LimitsStage(meter)
