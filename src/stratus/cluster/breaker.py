"""A circuit breaker per replica: stop sending traffic to a replica that keeps failing, and
let it back in after a trial succeeds.

closed --(failure_threshold consecutive failures)--> open
open   --(open_seconds passed)--> half_open: allow() grants one trial (a request or a probe)
half_open --success--> closed;  --failure--> open again, cooling down `backoff` times longer
(up to max_open_seconds), so a replica that stays broken is tried less and less often.

Passive signals (request errors, timeouts) and active probes both feed the same breaker.
Once the cooldown has passed, a success from either closes it: a probe that passes brings
the replica back even if no request was sent there.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

State = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    def __init__(
        self,
        failure_threshold: int = 3,
        open_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        *,
        backoff: float = 2.0,
        max_open_seconds: float = 60.0,
    ):
        if failure_threshold < 1:
            raise ValueError(f"failure_threshold must be >= 1, got {failure_threshold!r}")
        if open_seconds <= 0 or backoff < 1 or max_open_seconds < open_seconds:
            raise ValueError("need open_seconds > 0, backoff >= 1 and max_open_seconds >= open_seconds")
        self.failure_threshold = failure_threshold
        self.open_seconds = open_seconds
        self.backoff = backoff
        self.max_open_seconds = max_open_seconds
        self._clock = clock
        self._open = False
        self._failures = 0  # consecutive, while closed
        self._opened_at = 0.0
        self._cooldown = open_seconds  # grows with each failed trial
        self._trial_at: float | None = None  # when the half-open trial was granted

    @property
    def state(self) -> State:
        if not self._open:
            return "closed"
        return "half_open" if self._clock() - self._opened_at >= self._cooldown else "open"

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    @property
    def cooldown(self) -> float:
        """Seconds the breaker stays open after the latest opening."""
        return self._cooldown

    def allow(self) -> bool:
        """May a request go to this replica now? Half-open grants one trial at a time; a trial
        whose outcome is never reported expires after one cooldown, and another is granted."""
        if not self.ready():
            return False
        if self.state == "half_open":
            self._trial_at = self._clock()
        return True

    def ready(self) -> bool:
        """Would allow() say yes now? Asking grants nothing (a router weighing replicas asks
        this; only the one it sends the request to takes the trial)."""
        state = self.state
        if state == "closed":
            return True
        if state == "open":
            return False
        return self._trial_at is None or self._clock() - self._trial_at >= self._cooldown

    def record_success(self) -> None:
        state = self.state
        if state == "closed":
            self._failures = 0
        elif state == "half_open":
            self._open = False
            self._failures = 0
            self._cooldown = self.open_seconds
            self._trial_at = None
        # open and still cooling down: a late success of a request begun before it opened

    def record_failure(self) -> None:
        state = self.state
        if state == "closed":
            self._failures += 1
            if self._failures >= self.failure_threshold:
                self._trip(self.open_seconds)
        elif state == "half_open":  # the trial failed: open again, for longer
            self._trip(min(self._cooldown * self.backoff, self.max_open_seconds))
        # open: already open; a late failure does not extend the cooldown

    def _trip(self, cooldown: float) -> None:
        self._open = True
        self._opened_at = self._clock()
        self._cooldown = cooldown
        self._trial_at = None
        self._failures = 0

    def snapshot(self) -> dict:
        return {"state": self.state, "consecutive_failures": self._failures, "cooldown": self._cooldown}
