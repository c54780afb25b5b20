"""Key suspension: an API key whose anomaly alert fires is refused until an admin reinstates it.

    s = Suspensions(store, ttl=2.0)
    s.suspend("key_0123456789abcdef", "rate_spike", {"count": 400, "baseline": 12.0})
    "key_0123456789abcdef" in s.ids          # the per-request check (refreshed every ttl seconds)
    s.reinstate("key_0123456789abcdef")      # True if it was suspended

Suspensions are rows in `key_suspensions`, so every gateway sharing the database refuses the key
(within ttl) and a restart does not lift them. The key id is the stable one (key_…): a rotation
does not escape a suspension. Only `--alert-suspend` makes alerts suspend keys.
"""

from __future__ import annotations

import json
import time

from stratus.audit.ttl_set import TTLSet
from stratus.security.errors import NotFound
from stratus.store import Store, review_tables
from stratus.store.apikeys import get_key


class Suspensions:
    def __init__(self, store: Store, ttl: float = 2.0):
        self.store = store
        self.ids = TTLSet(self._load, ttl)

    def _load(self) -> set[str]:
        with self.store.connect() as conn:
            return review_tables.suspended_key_ids(conn)

    def suspend(self, key_id: str, reason: str, detail: dict | None = None) -> bool:
        """True if the key was newly suspended (False: it already was, or no longer exists)."""
        facts = json.dumps(detail or {}, sort_keys=True)
        now = time.time()
        with self.store.begin() as conn:
            if get_key(conn, key_id) is None:
                return False
            added = review_tables.add_suspension(conn, key_id, reason[:64], facts, now)
        self.ids.add(key_id)
        return added

    def reinstate(self, key_id: str) -> bool:
        with self.store.begin() as conn:
            if get_key(conn, key_id) is None:
                raise NotFound(f"No API key with id '{key_id}'.", field="key_id")
            lifted = review_tables.lift_suspension(conn, key_id)
        self.ids.discard(key_id)
        return lifted

    def list(self) -> list[dict]:
        with self.store.connect() as conn:
            rows = review_tables.suspensions(conn)
        return [
            {
                "key_id": r.key_id,
                "reason": r.reason,
                "detail": json.loads(r.detail or "{}"),
                "suspended_at": r.suspended_at,
            }
            for r in rows
        ]
