"""The screen step's guard: lockouts after authentication-failure bursts, and per-key anomaly alerts.

    guard = Guard(LockoutPolicy(failures=30, window=60, base=30), AlertPolicy(z=4.0, interval=60))
    guard.locked(["addr:10.0.0.7", "key:sk-stratus-3f9a0c1d2b4e"])   # seconds left, or 0
    events = guard.observe(Observation(...))                           # after each request

Lockouts: more than `failures` 401s within `window` seconds from one address, or against one
key prefix, lock that source for `base` seconds, doubling with each further lockout (capped at
`max_lock`). A success does not lift a lock; it only clears the failure count.

Alerts, per key (the public prefix): request, token and error counts per `interval` feed an
exponentially weighted mean and variance; an interval whose count lies more than `z` standard
deviations above its key's own baseline (after `warmup` intervals) raises an alert. A key that
calls a model it never used before, or is used from more than `max_addresses` addresses in one
interval, raises one too. Every lockout and alert is returned as an `Event` for the audit trail
and kept (the newest `keep`) for /admin/alerts, where an admin can acknowledge one (`acknowledge`:
who and when, kept as long as the alert is).

State is per process, in memory: several gateways each lock and alert on what they see.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

_SPIKE = {"requests": "rate_spike", "tokens": "token_spike", "errors": "error_spike"}


@dataclass(frozen=True)
class LockoutPolicy:
    failures: int = 30  # 0: no lockouts
    window: float = 60.0
    base: float = 30.0
    max_lock: float = 3600.0
    # Sources remembered at most (addresses and key prefixes are the client's to invent): past
    # this, the quiet ones (no failure in the window, not locked) are forgotten first.
    max_sources: int = 100_000


@dataclass(frozen=True)
class AlertPolicy:
    z: float = 4.0
    interval: float = 60.0
    alpha: float = 0.3  # weight of the newest interval in the EWMA
    warmup: int = 5  # intervals of history before a key can alert
    min_count: float = 10.0  # an interval below this never alerts
    max_addresses: int = 10
    keep: int = 500


@dataclass
class Observation:
    key: str | None  # public key prefix (or None)
    address: str | None
    status: int
    tokens: int = 0
    model: str | None = None
    at: float = field(default_factory=time.time)


@dataclass
class Event:
    kind: str  # lockout | rate_spike | token_spike | error_spike | new_model | many_addresses
    source: str  # "addr:…" or "key:…"
    at: float
    detail: dict


@dataclass
class _Source:
    failures: deque = field(default_factory=deque)
    locked_until: float = 0.0
    lockouts: int = 0


@dataclass
class _Series:
    mean: float = 0.0
    var: float = 0.0
    seen: int = 0

    def score(self, x: float) -> float:
        sd = math.sqrt(self.var) if self.var > 0 else 0.0
        return (x - self.mean) / max(sd, 1.0)

    def update(self, x: float, alpha: float) -> None:
        if self.seen == 0:
            self.mean = x
        else:
            diff = x - self.mean
            self.mean += alpha * diff
            self.var = (1 - alpha) * (self.var + alpha * diff * diff)
        self.seen += 1


@dataclass
class _Key:
    bucket: int = -1
    counts: dict = field(default_factory=lambda: {"requests": 0.0, "tokens": 0.0, "errors": 0.0})
    series: dict = field(default_factory=lambda: {n: _Series() for n in ("requests", "tokens", "errors")})
    models: set = field(default_factory=set)
    addresses: set = field(default_factory=set)
    many_alerted: bool = False


def failure_sources(key: str | None, address: str | None) -> list[str]:
    """What failed logins count against: the address, and a key prefix *from that address*. A key
    prefix is public (it is in logs and on screens): counted alone, anyone could lock a victim's
    key out with wrong secrets. Its secret half (256 bits) needs no lock against guessing."""
    found = []
    if address:
        found.append(f"addr:{address}")
    if key:
        found.append(f"key:{key}@{address}" if address else f"key:{key}")
    return found


class Guard:
    def __init__(
        self,
        lockout: LockoutPolicy | None = None,
        alerts: AlertPolicy | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.lockout = lockout or LockoutPolicy()
        self.alerts = alerts or AlertPolicy()
        self.clock = clock
        self._sources: dict[str, _Source] = {}
        self._keys: dict[str, _Key] = {}
        self.events: deque[Event] = deque(maxlen=self.alerts.keep)
        self._acks: dict[tuple[str, str, float], dict] = {}  # (kind, source, at) -> {"by", "at"}
        self._lock = threading.Lock()

    # -- lockouts ---------------------------------------------------------------------------------

    def locked(self, sources: Iterable[str]) -> float:
        """Seconds until every given source is unlocked (0: none is locked)."""
        now = self.clock()
        with self._lock:
            left = [s.locked_until - now for n in sources if (s := self._sources.get(n)) is not None]
        return max([0.0, *left])

    def lockouts(self) -> list[dict]:
        now = self.clock()
        with self._lock:
            return [
                {"source": name, "until": s.locked_until, "seconds_left": round(s.locked_until - now, 1)}
                for name, s in self._sources.items()
                if s.locked_until > now
            ]

    # -- alerts -----------------------------------------------------------------------------------

    def recent(self) -> list[dict]:
        """The kept events, newest first, each with its acknowledgement ({"by", "at"}) or None."""
        with self._lock:
            return [
                {**asdict(e), "acknowledged": self._acks.get((e.kind, e.source, e.at))}
                for e in reversed(self.events)
            ]

    def acknowledge(self, kind: str, source: str, at: float, by: str) -> dict | None:
        """Mark the kept event (kind, source, at) as seen by `by`; None if no such event is kept.
        Acknowledging again keeps the first acknowledgement."""
        with self._lock:
            kept = {(e.kind, e.source, e.at) for e in self.events}
            for gone in [k for k in self._acks if k not in kept]:  # bounded by the kept events
                del self._acks[gone]
            if (kind, source, at) not in kept:
                return None
            return self._acks.setdefault((kind, source, at), {"by": by, "at": self.clock()})

    def unlock(self, source: str) -> bool:
        with self._lock:
            s = self._sources.pop(source, None)
        return s is not None

    def _forget_quiet(self, now: float) -> None:
        policy = self.lockout
        quiet = [
            name
            for name, s in self._sources.items()
            if s.locked_until <= now and (not s.failures or s.failures[-1] <= now - policy.window)
        ]
        for name in quiet:
            del self._sources[name]
        if len(self._sources) >= policy.max_sources:  # all busy: drop the least recently failing
            by_age = sorted(
                self._sources,
                key=lambda n: self._sources[n].failures[-1] if self._sources[n].failures else 0.0,
            )
            for name in by_age[: len(self._sources) - policy.max_sources // 2]:
                if self._sources[name].locked_until <= now:
                    del self._sources[name]

    def _failure(self, name: str, now: float) -> Event | None:
        policy = self.lockout
        if name not in self._sources and len(self._sources) >= policy.max_sources:
            self._forget_quiet(now)
        s = self._sources.setdefault(name, _Source())
        s.failures.append(now)
        while s.failures and s.failures[0] <= now - policy.window:
            s.failures.popleft()
        if len(s.failures) < policy.failures or s.locked_until > now:
            return None
        seconds = min(policy.base * 2**s.lockouts, policy.max_lock)
        s.lockouts += 1
        s.locked_until = now + seconds
        s.failures.clear()
        return Event("lockout", name, now, {"seconds": seconds, "lockouts": s.lockouts})

    # -- observing requests -----------------------------------------------------------------------

    def observe(self, obs: Observation) -> list[Event]:
        """Feed one finished request; returns the lockouts and alerts it caused."""
        events: list[Event] = []
        with self._lock:
            if obs.status == 401 and self.lockout.failures > 0:
                for name in failure_sources(obs.key, obs.address):
                    if name and (event := self._failure(name, obs.at)):
                        events.append(event)
            elif obs.status < 400 and obs.key:
                for name in failure_sources(obs.key, obs.address):
                    if (s := self._sources.get(name)) is not None:
                        s.failures.clear()
            if obs.key and obs.status not in (401, 429):
                events.extend(self._track(obs))
            self.events.extend(events)
        return events

    def _track(self, obs: Observation) -> list[Event]:
        policy = self.alerts
        k = self._keys.setdefault(obs.key, _Key())
        bucket = int(obs.at // policy.interval)
        events = []
        if bucket != k.bucket:
            if k.bucket >= 0:
                idle = min(bucket - k.bucket - 1, policy.warmup)  # intervals with no traffic
                self._close(k, obs.at)
                for _ in range(max(idle, 0)):
                    for series in k.series.values():
                        series.update(0.0, policy.alpha)
            k.bucket = bucket
            k.counts = dict.fromkeys(k.counts, 0.0)
            k.addresses = set()
            k.many_alerted = False
        k.counts["requests"] += 1
        k.counts["tokens"] += obs.tokens
        k.counts["errors"] += 1 if obs.status >= 500 else 0
        source = f"key:{obs.key}"
        for name, series in k.series.items():
            x = k.counts[name]
            if series.seen >= policy.warmup and x >= policy.min_count and series.score(x) > policy.z:
                alerted = getattr(k, f"_{name}_alerted", -1)
                if alerted != bucket:
                    setattr(k, f"_{name}_alerted", bucket)
                    detail = {"count": x, "baseline": round(series.mean, 2), "z": round(series.score(x), 1)}
                    events.append(Event(_SPIKE[name], source, obs.at, detail))
        if obs.model and obs.status < 400:
            if k.models and obs.model not in k.models:
                events.append(Event("new_model", source, obs.at, {"model": obs.model}))
            k.models.add(obs.model)
        if obs.address:
            k.addresses.add(obs.address)
            if len(k.addresses) > policy.max_addresses and not k.many_alerted:
                k.many_alerted = True
                events.append(Event("many_addresses", source, obs.at, {"addresses": len(k.addresses)}))
        return events

    def _close(self, k: _Key, now: float) -> None:
        for name, series in k.series.items():
            series.update(k.counts[name], self.alerts.alpha)
