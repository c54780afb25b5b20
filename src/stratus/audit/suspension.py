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

import sqlalchemy as sa

from stratus.audit.ttl_set import TTLSet
from stratus.security.errors import NotFound
from stratus.store import Store
from stratus.store.apikeys import get_key
from stratus.store.review_tables import key_suspensions


class Suspensions:
    def __init__(self, store: Store, ttl: float = 2.0):
        self.store = store
        self.ids = TTLSet(self._load, ttl)

    def _load(self) -> set[str]:
        with self.store.connect() as conn:
            return set(conn.execute(sa.select(key_suspensions.c.key_id)).scalars())

    def suspend(self, key_id: str, reason: str, detail: dict | None = None) -> bool:
        """True if the key was newly suspended (False: it already was, or no longer exists)."""
        row = {
            "key_id": key_id,
            "reason": reason[:64],
            "detail": json.dumps(detail or {}, sort_keys=True),
            "suspended_at": time.time(),
        }
        with self.store.begin() as conn:
            if get_key(conn, key_id) is None:
                return False
            exists = conn.execute(
                sa.select(key_suspensions.c.key_id).where(key_suspensions.c.key_id == key_id)
            ).first()
            if exists is None:
                conn.execute(key_suspensions.insert().values(**row))
        self.ids.add(key_id)
        return exists is None

    def reinstate(self, key_id: str) -> bool:
        with self.store.begin() as conn:
            if get_key(conn, key_id) is None:
                raise NotFound(f"No API key with id '{key_id}'.", field="key_id")
            lifted = conn.execute(key_suspensions.delete().where(key_suspensions.c.key_id == key_id)).rowcount
        self.ids.discard(key_id)
        return bool(lifted)

    def list(self) -> list[dict]:
        c = key_suspensions.c
        with self.store.connect() as conn:
            rows = conn.execute(sa.select(key_suspensions).order_by(c.suspended_at.desc())).all()
        return [
            {
                "key_id": r.key_id,
                "reason": r.reason,
                "detail": json.loads(r.detail or "{}"),
                "suspended_at": r.suspended_at,
            }
            for r in rows
        ]
