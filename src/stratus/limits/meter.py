"""The admit and settle steps without HTTP: limits, reservations and the usage ledger.

    meter = Meter(store, limiter=MemoryLimiter(), prices=parse_prices("tiny=0.5/1.5"))
    ticket = await meter.admit(principal, "tiny", prompt_tokens=12, max_tokens=100)  # LimitExceeded
    ...
    await meter.settle(ticket, prompt_tokens=12, completion_tokens=37, status="ok", ...)

admit   plans the counters of every applicable rule (limits/rules.py) and reserves the worst
        case (prompt + max_tokens, and its cost) in one atomic limiter call
settle  turns the reservation into the real charge (what was delivered), frees the concurrency
        slot, and writes the ledger row; awaited before the end of a response is sent, so a
        response the client saw complete is in the ledger even if the gateway is killed after

The api layer (limits/stage.py) turns LimitExceeded into a 429 and LimiterUnavailable into a 503.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Collection
from dataclasses import dataclass, field

from stratus.limits.ledger import LedgerWriter
from stratus.limits.memory import MemoryLimiter
from stratus.limits.rules import (
    COUNTER_PREFIX,
    QUOTA_KINDS,
    Item,
    LimiterUnavailable,
    LimitRule,
    Plan,
    Prices,
    cost_micro_usd,
    plan_identified,
    plan_request,
    rate_headers,
    refusal_message,
    retry_after,
)
from stratus.security.identity import Principal
from stratus.store import Store, StoreUnavailable
from stratus.store import usage as ledger

log = logging.getLogger("stratus.limits")


class LimitExceeded(Exception):
    def __init__(
        self, message: str, kind: str, retry_after: int, headers: dict[str, str], never: bool = False
    ):
        super().__init__(message)
        self.message = message
        self.kind = kind
        self.retry_after = retry_after
        self.headers = headers
        self.never = never  # the request alone exceeds the limit: retrying it cannot help

    @property
    def quota(self) -> bool:
        """A daily/monthly quota or budget, rather than a per-minute rate or a concurrency cap."""
        return self.kind in QUOTA_KINDS


@dataclass
class Ticket:
    """One admitted request's reservation."""

    principal: Principal
    model: str
    plan: Plan
    limiter: object
    headers: dict[str, str] = field(default_factory=dict)
    settled: bool = False


class LedgerUnavailable(Exception):
    """A served request's ledger row is in neither the database nor the spool."""


class Meter:
    def __init__(
        self,
        store: Store | None,
        limiter,
        prices: Prices | None = None,
        fail_open: bool = False,
        rules_ttl: float = 2.0,
        prefix: str = COUNTER_PREFIX,
        spool: str | os.PathLike | None = None,
    ):
        self.store = store
        self.limiter = limiter
        self.fallback = MemoryLimiter()  # per-process limits while Redis is down (fail-open only)
        self.prices = prices or {}
        self.fail_open = fail_open
        self.rules_ttl = rules_ttl
        self.prefix = prefix
        self._rules: list[LimitRule] | None = None
        self._rules_at = 0.0
        self._generation = 0  # bumped by invalidate(): a read begun before it is not kept
        self._loading: asyncio.Future | None = None  # the read under way, shared
        self.static_rules: list[LimitRule] = []  # rules given in code (tests, benchmarks)
        self.answered_at = 0.0  # when the newest limiter call that got an answer began (monotonic)
        # rows the database will not take wait in `spool` (a local file) and are replayed
        self.writer = LedgerWriter(store, spool) if store is not None else None

    # -- rules --------------------------------------------------------------------------------

    def invalidate(self) -> None:
        """The rules changed here: the next request reads them again (a read already under way
        may finish, but its older rules are not kept)."""
        self._rules_at = 0.0
        self._generation += 1
        self._loading = None

    def _load_rules(self) -> list[LimitRule]:
        if self.store is None:
            return []
        with self.store.connect() as conn:
            return [LimitRule(**r) for r in ledger.list_limits(conn)]

    async def rules(self) -> list[LimitRule]:
        """The rules, re-read from the store once they are older than `rules_ttl`: one read (in a
        thread) shared by every request that finds them stale, not one per request."""
        now = time.monotonic()
        if self._rules is None or now - self._rules_at > self.rules_ttl:
            loading = self._loading
            if loading is None or loading.done():
                loading = self._loading = asyncio.ensure_future(self._reload(now, self._generation))
            try:
                await asyncio.shield(loading)
            except StoreUnavailable:
                if self._rules is None:
                    raise LimiterUnavailable("the limit rules cannot be read from the database") from None
                log.warning("limit rules could not be refreshed; using the last known ones")
            if self._rules is None:  # read before an invalidation and dropped: read again
                return await self.rules()
        return self.static_rules + self._rules

    async def _reload(self, started: float, generation: int) -> None:
        rules = await asyncio.to_thread(self._load_rules)
        if generation == self._generation:  # else invalidated meanwhile: the next read counts
            self._rules, self._rules_at = rules, started

    # -- admit and settle ---------------------------------------------------------------------

    async def identified(self, principal: Principal) -> tuple[frozenset[str], dict[str, str]]:
        """Count one request against the rpm limits that apply whatever the model, as soon as its
        caller is known (before its body is read); raises LimitExceeded. Returns the rules that
        counted it (give them to `admit` as `counted`) and the x-ratelimit-*-requests headers."""
        now = time.time()
        items = plan_identified(await self.rules(), principal, now, self.prefix)
        _, headers = await self._acquire(items, now)
        return frozenset(item.rule.name for item in items), headers

    async def admit(
        self,
        principal: Principal,
        model: str,
        prompt_tokens: int,
        max_tokens: int,
        *,
        sequences: int = 1,
        counted: Collection[str] = (),
    ) -> Ticket:
        """Reserve the worst case of one request: `max_tokens` of all its sequences, and
        `sequences` (prompts × n) of the concurrency limits."""
        now = time.time()
        rules = await self.rules()
        plan = plan_request(
            rules,
            principal,
            model,
            prompt_tokens,
            max_tokens,
            self.prices,
            now,
            self.prefix,
            sequences=sequences,
            counted=counted,
        )
        limiter, headers = await self._acquire(plan.items, now)
        return Ticket(principal, model, plan, limiter, headers)

    async def _acquire(self, items: list[Item], now: float) -> tuple[object, dict[str, str]]:
        """Charge `items` in one atomic limiter call: (the limiter that took them, rate headers)."""
        limiter = self.limiter
        if not items:
            return limiter, {}
        try:
            started = time.monotonic()
            decision = await limiter.acquire(items)
            self.answered_at = max(self.answered_at, started)
        except LimiterUnavailable:
            if not self.fail_open:
                raise
            log.warning("limiter unavailable; falling back to per-process limits (fail-open)")
            limiter = self.fallback
            decision = await limiter.acquire(items)
        headers = rate_headers(items, decision.values, now)
        if not decision.allowed:
            item = items[decision.refused]
            wait = retry_after(item, now)
            message = refusal_message(item, decision.current, now)
            raise LimitExceeded(message, item.kind, wait, headers, never=item.amount > item.limit)
        return limiter, headers

    async def settle(
        self,
        ticket: Ticket,
        *,
        request_id: str,
        prompt_tokens: int,
        completion_tokens: int,
        status: str,
        started_at: float,
        latency_s: float,
    ) -> None:
        """Charge what was delivered (once), then write the ledger row. Raises LedgerUnavailable
        only when the row is in neither the database nor the spool (the caller fails closed)."""
        if ticket.settled:
            return
        ticket.settled = True
        cost = cost_micro_usd(self.prices, ticket.model, prompt_tokens, completion_tokens)
        changes = ticket.plan.reconcile(prompt_tokens + completion_tokens, cost)
        try:
            await ticket.limiter.adjust(changes)
        except LimiterUnavailable:
            log.error("could not reconcile limits for request %s: limiter unavailable", request_id)
        await self.write(
            _ledger_row(
                ticket.principal,
                ticket.model,
                request_id,
                started_at,
                latency_s,
                status,
                prompt_tokens,
                completion_tokens,
                cost,
            ),
            must=True,
        )

    async def refused(
        self,
        principal: Principal,
        model: str,
        *,
        request_id: str,
        status: str,
        started_at: float,
        latency_s: float,
    ) -> None:
        """The ledger row of a request refused before admission: nothing reserved, nothing charged."""
        await self.write(_ledger_row(principal, model[:128], request_id, started_at, latency_s, status[:24]))

    async def write(self, row: ledger.UsageRow, must: bool = False) -> None:
        """`must`: the row of a served request; raise LedgerUnavailable if it cannot be kept."""
        if self.writer is None:
            return
        try:
            await self.writer.write(row)
        except Exception as exc:
            log.exception("usage ledger write failed for request %s", row.request_id)
            if must:
                raise LedgerUnavailable(f"the usage ledger cannot be written ({type(exc).__name__})") from exc


def _ledger_row(
    principal: Principal,
    model: str,
    request_id: str,
    started_at: float,
    latency_s: float,
    status: str,
    prompt_tokens: int = 0,
    completion_tokens: int = 0,
    cost: int = 0,
) -> ledger.UsageRow:
    return ledger.UsageRow(
        request_id=request_id,
        time=started_at,
        day=time.strftime("%Y-%m-%d", time.gmtime(started_at)),
        key_id=principal.key_id,
        user=principal.user,
        team=principal.team,
        model=model,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        cost_micro_usd=cost,
        status=status,
        latency_ms=latency_s * 1000.0,
    )
