"""The in-process limiter: counters in a dict, check-and-reserve under one lock.

    limiter = MemoryLimiter()
    decision = await limiter.acquire(plan.items)

The default backend, and the per-process fallback when Redis is down and fail-open is set.
The lock is a threading lock (never held across an await), so the check and the charge are one
step whether callers are coroutines or threads.
"""

from __future__ import annotations

import threading
import time

from stratus.limits.rules import Decision, Item


class MemoryLimiter:
    def __init__(self, clock=time.monotonic):
        self._counters: dict[str, list[float]] = {}  # key -> [value, expires_at]
        self._lock = threading.Lock()
        self._clock = clock
        self._ops = 0

    def _value(self, key: str, now: float) -> int:
        entry = self._counters.get(key)
        if entry is None or entry[1] <= now:
            return 0
        return int(entry[0])

    def acquire_now(self, items: list[Item]) -> Decision:
        with self._lock:
            now = self._clock()
            values = [self._value(it.key, now) for it in items]
            for i, (item, value) in enumerate(zip(items, values)):
                if item.amount > 0 and value + item.amount > item.limit:
                    return Decision(False, values, refused=i, current=value)
            for i, item in enumerate(items):
                values[i] += item.amount
                self._counters[item.key] = [values[i], now + item.ttl]
            self._sweep(now)
            return Decision(True, values)

    def adjust_now(self, changes: list[tuple[str, int]]) -> None:
        with self._lock:
            now = self._clock()
            for key, delta in changes:
                entry = self._counters.get(key)
                if entry is None or entry[1] <= now:
                    continue  # the window ended: nothing left to correct
                entry[0] = max(0, entry[0] + delta)

    async def acquire(self, items: list[Item]) -> Decision:
        return self.acquire_now(items)

    async def adjust(self, changes: list[tuple[str, int]]) -> None:
        self.adjust_now(changes)

    def peek(self, key: str) -> int:
        with self._lock:
            return self._value(key, self._clock())

    def _sweep(self, now: float) -> None:
        """Drop expired counters now and then, so old windows do not pile up."""
        self._ops += 1
        if self._ops % 4096:
            return
        for key in [k for k, e in self._counters.items() if e[1] <= now]:
            del self._counters[key]
