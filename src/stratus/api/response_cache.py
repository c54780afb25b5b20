"""An opt-in exact-match cache of whole responses to deterministic requests.

Only requests whose answer cannot change are cached: temperature 0, or a fixed seed. The key
is a hash of the tenant, the route, the model and the canonical request body, so one tenant's
answer is never served to another; each entry also remembers its tenant and is checked on
read. Entries expire after `ttl` seconds and the least recently used go first when full.
"""

from __future__ import annotations

import copy
import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

# Fields that do not change the answer's content.
IGNORED_FIELDS = ("user", "stream", "stream_options")


@dataclass
class _Entry:
    tenant: str
    expires: float
    body: dict[str, Any]


class ResponseCache:
    def __init__(self, max_entries: int, ttl: float, clock: Callable[[], float] = time.monotonic):
        self.max_entries = max_entries
        self.ttl = ttl
        self.clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def key(tenant: str, route: str, model: str, request: dict[str, Any]) -> str:
        body = {k: v for k, v in request.items() if k not in IGNORED_FIELDS}
        blob = orjson.dumps([tenant, route, model, body], option=orjson.OPT_SORT_KEYS)
        return hashlib.sha256(blob).hexdigest()

    def get(self, key: str, tenant: str) -> dict[str, Any] | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.tenant != tenant or entry.expires <= self.clock():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return copy.deepcopy(entry.body)

    def put(self, key: str, tenant: str, body: dict[str, Any]) -> None:
        self._entries[key] = _Entry(tenant, self.clock() + self.ttl, copy.deepcopy(body))
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()
