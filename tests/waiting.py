"""Polling with a deadline, for tests that wait on another process or thread.

wait_for(lambda: len(registry.models) == 2, "both models registered", timeout=60)
"""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_for(predicate: Callable[[], object], what: str, timeout: float = 60.0, every: float = 0.05) -> None:
    """Return once `predicate()` is true; TimeoutError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(every)
    raise TimeoutError(f"waited {timeout:.0f} s for: {what}")
