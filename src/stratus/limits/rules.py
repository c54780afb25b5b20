"""Limits, quotas and budgets: which counters a request touches, and what a refusal says.

    rules = [LimitRule(scope="team", subject="ml", rpm=60, tpm=20_000, tokens_per_day=1_000_000)]
    plan = plan_request(rules, principal, "tiny", prompt_tokens=12, max_tokens=100, prices={})
    decision = await limiter.acquire(plan.items)       # one atomic check-and-reserve
    ...                                                # generate
    await limiter.adjust(plan.reconcile(used_tokens, used_cost))   # charged = delivered

A rule applies to one key, user, team or model (`scope`, `subject`), optionally narrowed to one
model (`model`): a team's limit on one model is `LimitRule("team", "ml", model="tiny", ...)`.
Every limit of every applicable rule becomes one counter `Item`: requests and tokens per minute
(fixed one-minute windows), concurrent requests (a gauge), tokens per UTC day and month, and
spend per UTC month in micro-dollars (prices per million tokens, per model, from the settings).

The limiter backends (limiter_memory.py, limiter_redis.py) only know `Item`s: add `amount` to
every counter if none would pass its limit, else change nothing and name the first that would.
"""

from __future__ import annotations

import calendar
import math
import time
from collections.abc import Collection
from dataclasses import dataclass, field, fields
from typing import Protocol

from stratus.security.identity import Principal

SCOPES = ("key", "user", "team", "model")
MAX_COUNT = 10**12  # larger limits are refused as absurd (a typo, not a policy)
MAX_BUDGET_USD = 10**9
LIMIT_FIELDS = ("rpm", "tpm", "concurrent", "tokens_per_day", "tokens_per_month", "budget_usd_per_month")
# a gauge without an end (concurrent requests) expires this long after its last use, so the
# slots held by a gateway killed mid-request come back
GAUGE_TTL_S = 3600
# Every counter name starts with this hash tag: one request's counters (of several rules) are
# checked by one Redis script, and on Redis Cluster a script may only touch keys of one slot.
COUNTER_PREFIX = "{stratus:lim}:"


class LimitInvalid(ValueError):
    """A limit that cannot be set; `field` names the offending one (a 400 at the API)."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


class LimiterUnavailable(RuntimeError):
    """The shared limiter (Redis) cannot be reached: requests fail closed unless configured."""


@dataclass(frozen=True)
class LimitRule:
    scope: str  # key | user | team | model
    subject: str  # the key id (key_…), user name, team name or model name
    model: str | None = None  # only requests for this model; None: every model
    rpm: int | None = None
    tpm: int | None = None  # prompt + completion tokens per minute
    concurrent: int | None = None
    tokens_per_day: int | None = None
    tokens_per_month: int | None = None
    budget_usd_per_month: float | None = None

    @property
    def name(self) -> str:
        """Stable across gateways (counter keys are built from it), readable in messages."""
        return f"{self.scope}={self.subject}/{self.model or '*'}"

    def describe(self) -> str:
        where = f"{self.scope} '{self.subject}'"
        return where + (f" on model '{self.model}'" if self.model else "")

    def applies(self, principal: Principal, model: str) -> bool:
        if self.model is not None and self.model != model:
            return False
        if self.scope == "key":
            return principal.key_id == self.subject
        if self.scope == "user":
            return principal.user == self.subject
        if self.scope == "team":
            return principal.team == self.subject
        return model == self.subject

    def limits(self) -> dict[str, float]:
        return {f: getattr(self, f) for f in LIMIT_FIELDS if getattr(self, f) is not None}


def validate_rule(data: dict) -> LimitRule:
    """A rule from untrusted input (API, CLI); LimitInvalid names what is wrong."""
    known = {f.name for f in fields(LimitRule)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise LimitInvalid(f"Unknown limit field(s): {', '.join(unknown)}.", unknown[0])
    scope = data.get("scope")
    if scope not in SCOPES:
        raise LimitInvalid(f"scope must be one of {', '.join(SCOPES)}, got {scope!r}.", "scope")
    subject = data.get("subject")
    if not isinstance(subject, str) or not 0 < len(subject) <= 128:
        raise LimitInvalid("subject must be a non-empty name of at most 128 characters.", "subject")
    model = data.get("model")
    if model is not None and (not isinstance(model, str) or not 0 < len(model) <= 128):
        raise LimitInvalid("model must be a model name of at most 128 characters, or null.", "model")
    values: dict = {}
    for name in LIMIT_FIELDS:
        value = data.get(name)
        if value is None:
            continue
        if name == "budget_usd_per_month":
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if not ok or not 0 <= value <= MAX_BUDGET_USD:
                raise LimitInvalid(
                    f"{name} must be a number of dollars from 0 to {MAX_BUDGET_USD}, got {value!r}.", name
                )
            values[name] = float(value)
        else:
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_COUNT:
                raise LimitInvalid(f"{name} must be an integer from 0 to {MAX_COUNT}, got {value!r}.", name)
            values[name] = value
    if not values:
        raise LimitInvalid(f"Give at least one limit: {', '.join(LIMIT_FIELDS)}.", "rpm")
    return LimitRule(scope=scope, subject=subject, model=model, **values)


# -- prices ---------------------------------------------------------------------------------------

Prices = dict[str, tuple[float, float]]  # model -> (USD per million prompt, per million completion)


def parse_prices(text: str | None) -> Prices:
    """'tiny=0.5/1.5,big=3/15' -> {'tiny': (0.5, 1.5), 'big': (3.0, 15.0)}; ValueError if malformed."""
    prices: Prices = {}
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        model, sep, pair = part.partition("=")
        prompt, slash, completion = pair.partition("/")
        try:
            values = (float(prompt), float(completion))
        except ValueError:
            values = (-1.0, -1.0)
        if not sep or not slash or not model.strip() or not all(0 <= v < 1e6 for v in values):
            raise ValueError(f"price {part!r}: expected MODEL=PROMPT_USD/COMPLETION_USD per million tokens")
        prices[model.strip()] = values
    return prices


def cost_micro_usd(prices: Prices, model: str, prompt_tokens: int, completion_tokens: int) -> int:
    """Cost in micro-dollars, rounded up (a price per million tokens is micro-dollars per token)."""
    prompt_price, completion_price = prices.get(model, (0.0, 0.0))
    return math.ceil(prompt_tokens * prompt_price + completion_tokens * completion_price - 1e-9)


# -- windows and counters -------------------------------------------------------------------------


def _month_window(now: float) -> tuple[str, float]:
    t = time.gmtime(now)
    year, month = (t.tm_year + 1, 1) if t.tm_mon == 12 else (t.tm_year, t.tm_mon + 1)
    return f"{t.tm_year:04d}{t.tm_mon:02d}", calendar.timegm((year, month, 1, 0, 0, 0))


def window(kind: str, now: float) -> tuple[str, float]:
    """(window id, when it ends) for a windowed limit; ('', 0) for the concurrency gauge."""
    if kind in ("rpm", "tpm"):
        start = int(now // 60)
        return str(start), (start + 1) * 60.0
    if kind == "tokens_per_day":
        start = int(now // 86400)
        return str(start), (start + 1) * 86400.0
    if kind in ("tokens_per_month", "budget_usd_per_month"):
        return _month_window(now)
    return "", 0.0


@dataclass(frozen=True)
class Item:
    """One counter a request charges: `amount` against `limit`."""

    key: str
    amount: int
    limit: int
    ttl: int  # seconds the counter must outlive its last change
    kind: str  # one of LIMIT_FIELDS
    rule: LimitRule
    resets_at: float  # end of the window (0: a gauge, freed when requests end)


@dataclass
class Decision:
    allowed: bool
    values: list[int] = field(default_factory=list)  # each counter after the charge (if allowed)
    refused: int | None = None  # index of the first item that would pass its limit
    current: int = 0  # the refused counter's value


class Limiter(Protocol):
    async def acquire(self, items: list[Item]) -> Decision: ...
    async def adjust(self, changes: list[tuple[str, int]]) -> None: ...


TOKEN_KINDS = ("tpm", "tokens_per_day", "tokens_per_month")


@dataclass
class Plan:
    """The counters one request charges, and how to settle them when it ends."""

    items: list[Item]
    reserved_tokens: int
    reserved_cost: int
    sequences: int = 1  # what the concurrency gauges hold for this request

    def reconcile(self, tokens: int, cost: int) -> list[tuple[str, int]]:
        """Counter changes that turn the reservation into the real charge (and free the slot)."""
        changes = []
        for item in self.items:
            if item.kind in TOKEN_KINDS:
                changes.append((item.key, tokens - self.reserved_tokens))
            elif item.kind == "budget_usd_per_month":
                changes.append((item.key, cost - self.reserved_cost))
            elif item.kind == "concurrent":
                changes.append((item.key, -self.sequences))
        return [(k, d) for k, d in changes if d != 0]


def _item(rule: LimitRule, kind: str, limit: float, amount: int, now: float, prefix: str) -> Item:
    win, ends = window(kind, now)
    ttl = GAUGE_TTL_S if not ends else int(ends - now) + 61
    return Item(f"{prefix}{rule.name}:{kind}:{win}", amount, int(limit), ttl, kind, rule, ends)


def whatever_the_model(rule: LimitRule) -> bool:
    """A rule that applies to its subject's requests for every model: it can be checked before the
    request body (and so the model) is read."""
    return rule.model is None and rule.scope != "model"


def plan_identified(
    rules: list[LimitRule], principal: Principal, now: float | None = None, prefix: str = COUNTER_PREFIX
) -> list[Item]:
    """The requests-per-minute counters one request charges as soon as its caller is known: those
    of the rules that apply whatever the model. A request refused later (bad input, a prompt too
    long) has still been counted."""
    now = time.time() if now is None else now
    return [
        _item(rule, "rpm", rule.rpm, 1, now, prefix)
        for rule in rules
        if rule.rpm is not None and whatever_the_model(rule) and rule.applies(principal, "")
    ]


def plan_request(
    rules: list[LimitRule],
    principal: Principal,
    model: str,
    prompt_tokens: int,
    max_tokens: int,
    prices: Prices,
    now: float | None = None,
    prefix: str = COUNTER_PREFIX,
    *,
    sequences: int = 1,
    counted: Collection[str] = (),
) -> Plan:
    """The counters of every rule that applies, charged with the worst case of this request:
    `max_tokens` is the whole request's (every sequence's), `sequences` what it holds of the
    concurrency limits (prompts × n). `counted`: the rules whose rpm already counted this request
    (`plan_identified`, when its caller was known)."""
    now = time.time() if now is None else now
    tokens = prompt_tokens + max_tokens
    cost = cost_micro_usd(prices, model, prompt_tokens, max_tokens)
    items = []
    for rule in rules:
        if not rule.applies(principal, model):
            continue
        for kind, limit in rule.limits().items():
            amount = tokens
            if kind == "rpm":
                if rule.name in counted:
                    continue
                amount = 1
            elif kind == "concurrent":
                amount = sequences
            elif kind == "budget_usd_per_month":
                amount, limit = cost, round(limit * 1e6)
            items.append(_item(rule, kind, limit, amount, now, prefix))
    return Plan(items, tokens, cost, sequences)


# -- what a refusal and an admitted response say --------------------------------------------------

_WHAT = {
    "rpm": "requests per minute",
    "tpm": "tokens per minute",
    "concurrent": "concurrent sequences (each prompt × n is one)",
    "tokens_per_day": "tokens per day",
    "tokens_per_month": "tokens per month",
    "budget_usd_per_month": "monthly spend budget",
}
QUOTA_KINDS = ("tokens_per_day", "tokens_per_month", "budget_usd_per_month")


def retry_after(item: Item, now: float) -> int:
    return 1 if not item.resets_at else max(1, math.ceil(item.resets_at - now))


def refusal_message(item: Item, current: int, now: float) -> str:
    what = _WHAT[item.kind]
    if item.kind == "budget_usd_per_month":
        limit_text = f"${item.limit / 1e6:.2f}"
        need = f"this request may cost up to ${item.amount / 1e6:.6f} and ${current / 1e6:.6f} is spent"
    else:
        limit_text = str(item.limit)
        need = f"this request needs {item.amount} and {current} are in use"
    text = f"Limit reached: {what} for {item.rule.describe()} is {limit_text}; {need}."
    if item.amount > item.limit:
        smaller = (
            "fewer prompts or a smaller n"
            if item.kind == "concurrent"
            else "fewer tokens or a smaller max_tokens"
        )
        return text + f" The request alone exceeds the limit: send {smaller}."
    return text + f" Retry after {retry_after(item, now)} s."


def format_reset(seconds: float) -> str:
    """OpenAI's duration style: '20ms', '1s', '6m0s'."""
    if seconds < 1:
        return f"{max(0, int(seconds * 1000))}ms"
    whole = math.ceil(seconds)
    minutes, secs = divmod(whole, 60)
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


def rate_headers(items: list[Item], values: list[int], now: float) -> dict[str, str]:
    """x-ratelimit-{limit,remaining,reset}-{requests,tokens} from the tightest rpm and tpm counters."""
    headers: dict[str, str] = {}
    for kind, noun in (("rpm", "requests"), ("tpm", "tokens")):
        pairs = [(it, v) for it, v in zip(items, values) if it.kind == kind]
        if not pairs:
            continue
        item, value = min(pairs, key=lambda p: p[0].limit - p[1])
        headers[f"x-ratelimit-limit-{noun}"] = str(item.limit)
        headers[f"x-ratelimit-remaining-{noun}"] = str(max(0, item.limit - value))
        headers[f"x-ratelimit-reset-{noun}"] = format_reset(item.resets_at - now)
    return headers
