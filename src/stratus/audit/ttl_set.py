"""A set read from the database and kept for a few seconds, so a per-request check costs no query.

    teams = TTLSet(load=lambda: {...}, ttl=2.0)
    if teams.needs_refresh(): await asyncio.to_thread(teams.refresh)
    "ml" in teams

A change made by this process updates the set at once (`add`, `discard`); one made by another
gateway is seen within `ttl` seconds, the same bound as a key revocation (auth_cache_ttl).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class TTLSet:
    def __init__(self, load: Callable[[], set[str]], ttl: float = 2.0):
        self._load = load
        self.ttl = ttl
        self._items: frozenset[str] = frozenset()
        self._loaded_at = float("-inf")
        self._lock = threading.Lock()
        self._loading = threading.Lock()  # one reload at a time; the others use the current set
        self._during_load: list[tuple[bool, str]] | None = None  # local changes while loading

    def stale(self) -> bool:
        return time.monotonic() - self._loaded_at >= self.ttl

    def needs_refresh(self) -> bool:
        """Stale, and no reload under way: the requests that find it stale while one runs use
        the current set without a thread hop each (refresh would return at once for them)."""
        return self.stale() and not self._loading.locked()

    def refresh(self) -> None:
        if not self._loading.acquire(blocking=False):
            return  # another request is reloading it right now
        try:
            with self._lock:
                self._during_load = []
            try:
                items = set(self._load())
            finally:
                with self._lock:
                    changes, self._during_load = self._during_load or [], None
            # A change made here while the query ran may be missing from what it read: apply it
            # again (each change is committed before it is applied, so this is idempotent).
            for added, item in changes:
                (items.add if added else items.discard)(item)
            with self._lock:
                self._items = frozenset(items)
                self._loaded_at = time.monotonic()
        finally:
            self._loading.release()

    def __contains__(self, item: object) -> bool:
        return item in self._items

    def add(self, item: str) -> None:
        self._change(True, item)

    def discard(self, item: str) -> None:
        self._change(False, item)

    def _change(self, added: bool, item: str) -> None:
        with self._lock:
            self._items = self._items | {item} if added else self._items - {item}
            if self._during_load is not None:
                self._during_load.append((added, item))
