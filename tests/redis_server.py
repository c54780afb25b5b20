"""The Redis that limiter tests share: STRATUS_TEST_REDIS_URL (default redis://127.0.0.1:6379/0).

Tests that need it call `redis_url_or_skip()`; each test uses its own key prefix and deletes its
keys afterwards, so the suite can share a Redis with other work.
"""

from __future__ import annotations

import os
import uuid

import pytest

DEFAULT = "redis://127.0.0.1:6379/0"


def redis_url_or_skip() -> str:
    url = os.environ.get("STRATUS_TEST_REDIS_URL", DEFAULT)
    try:
        import redis

        client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
        client.ping()
        client.close()
    except Exception as exc:  # redis-py missing, refused, timed out
        pytest.skip(
            f"Redis at {url} is unreachable ({type(exc).__name__}); start one "
            "(e.g. `redis-server --port 6379`) or set STRATUS_TEST_REDIS_URL=redis://host:port/db"
        )
    return url


def unique_prefix() -> str:
    return f"stratus-test:{uuid.uuid4().hex[:12]}:"


def delete_prefix(url: str, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()
