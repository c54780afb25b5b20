"""API key material: make, recognise, hash and compare keys, and cache verified ones briefly.

A key looks like `sk-stratus-3f9a0c1d2b4e_<43 characters>`:

    sk-stratus-        fixed, so scanners and people recognise a stratus key
    3f9a0c1d2b4e       lookup id: 48 random bits, public, unique; finds the row in one index probe
    _<43 chars>        secret: 256 bits from `secrets`, URL-safe base64

The store keeps only the SHA-256 of the whole key and the lookup id. A fast hash is right here:
the secret has 256 bits of entropy, so there is nothing to brute-force, and each request pays
one microsecond instead of the ~100 ms of a password hash. Comparison is `hmac.compare_digest`.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from stratus.names import KEY_PREFIX
from stratus.security.identity import Principal

LOOKUP_HEX_CHARS = 12
SECRET_BYTES = 32  # 256 bits
KEY_RE = re.compile(r"sk-stratus-([0-9a-f]{12})_([A-Za-z0-9_-]{43,128})")  # fullmatch only


@dataclass(frozen=True)
class NewKey:
    """A freshly made key. `secret` is shown to the client once and then forgotten."""

    secret: str = field(repr=False)
    lookup: str
    hash: str = field(repr=False)

    @property
    def prefix(self) -> str:
        return display_prefix(self.lookup)


def generate() -> NewKey:
    lookup = secrets.token_hex(LOOKUP_HEX_CHARS // 2)
    secret = f"{KEY_PREFIX}{lookup}_{secrets.token_urlsafe(SECRET_BYTES)}"
    return NewKey(secret=secret, lookup=lookup, hash=digest(secret))


def from_secret(secret: str) -> NewKey:
    """A key given from outside (STRATUS_ADMIN_KEY); it must have the format and the entropy."""
    lookup = lookup_of(secret)
    if lookup is None:
        raise ValueError(
            "not a stratus key: expected sk-stratus-<12 hex digits>_<43+ URL-safe characters>; "
            "`stratus keys generate` prints a fresh one"
        )
    return NewKey(secret=secret, lookup=lookup, hash=digest(secret))


def lookup_of(token: str) -> str | None:
    """The public lookup id of a well-formed key, else None."""
    if len(token) > 200:
        return None
    m = KEY_RE.fullmatch(token)
    return m.group(1) if m else None


def looks_like_key(token: str) -> bool:
    return token.startswith(KEY_PREFIX)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


# Compared against when a lookup id is unknown: no SHA-256 hex digest equals it (not hex).
UNKNOWN_KEY_HASH = "z" * 64


def matches(token_digest: str, stored_hash: str) -> bool:
    """Constant-time comparison of the presented key's digest with the stored one."""
    return hmac.compare_digest(token_digest.encode("ascii"), stored_hash.encode("ascii"))


def display_prefix(lookup: str) -> str:
    return f"{KEY_PREFIX}{lookup}"


def new_key_id() -> str:
    return f"key_{secrets.token_hex(8)}"


class VerificationCache:
    """Recently verified credentials, by the SHA-256 of the token, for `ttl` seconds.

    The TTL bounds how long a revocation made on another gateway takes to reach this one; a
    change made here drops the entries of the key or user at once (`invalidate_key`,
    `invalidate_user`). Refusals are cached too, so a flood of bad keys does not reach the
    database; a refusal of a known key (revoked, expired, owner disabled) remembers whose it was,
    so re-enabling the owner is seen at once here as well. The cache is an LRU of at most
    `max_entries`, so it cannot grow without bound.
    """

    def __init__(
        self, ttl: float = 2.0, max_entries: int = 10_000, clock: Callable[[], float] = time.monotonic
    ):
        self.ttl = ttl
        self.max_entries = max_entries
        self.clock = clock
        # digest -> (valid until, principal or None for a refusal, (user, key id) it concerns)
        self._entries: OrderedDict[str, tuple[float, Principal | None, tuple[str | None, str | None]]] = (
            OrderedDict()
        )
        self._lock = threading.Lock()

    def get(self, token_digest: str) -> tuple[bool, Principal | None]:
        """(hit, principal): principal None on a hit means "known bad"."""
        if self.ttl <= 0:
            return False, None
        with self._lock:
            entry = self._entries.get(token_digest)
            if entry is None:
                return False, None
            until, principal, _ = entry
            if until <= self.clock():
                del self._entries[token_digest]
                return False, None
            self._entries.move_to_end(token_digest)
        if principal is not None and principal.expires_at is not None and principal.expires_at <= time.time():
            return True, None
        return True, principal

    def put(
        self,
        token_digest: str,
        principal: Principal | None,
        ttl: float | None = None,
        *,
        user: str | None = None,
        key_id: str | None = None,
    ) -> None:
        ttl = self.ttl if ttl is None else min(ttl, self.ttl)
        if ttl <= 0:
            return
        if principal is not None:
            user, key_id = principal.user, principal.key_id
        with self._lock:
            self._entries[token_digest] = (self.clock() + ttl, principal, (user, key_id))
            self._entries.move_to_end(token_digest)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def _drop(self, matches) -> None:
        with self._lock:
            for d in [d for d, (_, _, who) in self._entries.items() if matches(who)]:
                del self._entries[d]

    def invalidate_key(self, key_id: str) -> None:
        self._drop(lambda who: who[1] == key_id)

    def invalidate_user(self, user: str) -> None:
        self._drop(lambda who: who[0] == user)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


def key_prefix(token: str) -> str | None:
    """The public prefix of an API key presented as a bearer token (None: not a key)."""
    lookup = lookup_of(token)
    return display_prefix(lookup) if lookup else None
