"""Two `stratus serve` processes sharing one Redis share one limit exactly.

The Redis is one the test starts (`redis-server` on a free port); without the binary, the shared
one at STRATUS_TEST_REDIS_URL (default redis://127.0.0.1:6379/0); skipped without either.
The model gets a name of its own, so the counters (named after the rule) are this test's alone.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import pytest

from stratus.limits.rules import COUNTER_PREFIX
from stratus.store import Store, database_url
from stratus.store import usage as ledger
from tests.live_server import ServeProcess
from tests.redis_server import delete_prefix, started_redis

pytestmark = pytest.mark.timeout(300)
PROMPT = [5, 6, 7]  # token ids: exactly three prompt tokens
MAX = 3
N = 9


def test_two_gateways_sharing_redis_admit_exactly_n(tiny_checkpoint, tmp_path):
    model = f"tiny-{uuid.uuid4().hex[:8]}"
    data_dir = tmp_path / "data"
    store = Store.open(database_url(data_dir))
    with store.begin() as conn:  # before the gateways start: both read it on their first request
        ledger.put_limit(
            conn,
            {"scope": "model", "subject": model, "tokens_per_day": N * (len(PROMPT) + MAX)},
            time.time(),
            "test",
        )
    with started_redis(tmp_path / "redis") as url:
        args = ["--no-auth", "--metering", "--redis-url", url, "--model", f"{model}={tiny_checkpoint}"]
        args += ["--engine-isolation", "thread"]
        servers = []
        try:
            servers.append(ServeProcess(*args, "--data-dir", str(data_dir)))
            servers[0].wait_ready()  # one at a time: the second finds the schema migrated
            servers.append(ServeProcess(*args, "--data-dir", str(data_dir)))
            servers[1].wait_ready()

            body = {"model": model, "prompt": PROMPT, "max_tokens": MAX, "ignore_eos": True}

            async def all_at_once():
                limits = httpx.Limits(max_connections=200)
                async with httpx.AsyncClient(timeout=120, limits=limits) as client:
                    calls = [
                        client.post(servers[i % 2].url + "/v1/completions", json=body) for i in range(200)
                    ]
                    return await asyncio.gather(*calls)

            responses = asyncio.run(all_at_once())
            ok = [r for r in responses if r.status_code == 200]
            assert len(ok) == N
            assert all(r.status_code == 429 for r in responses if r.status_code != 200)
            assert {r.url.port for r in responses} == {httpx.URL(s.url).port for s in servers}
            delivered = sum(r.json()["usage"]["total_tokens"] for r in ok)
            assert delivered == N * (len(PROMPT) + MAX)
        finally:
            for server in servers:
                server.kill()
            delete_prefix(url, f"{COUNTER_PREFIX}model={model}/")
    with store.connect() as conn:
        recorded = list(conn.execute(ledger.usage_ledger.select()).mappings())
    store.close()
    assert sorted(r["status"] for r in recorded) == ["ok"] * N + ["refused_429"] * (200 - N)
    assert sum(r["prompt_tokens"] + r["completion_tokens"] for r in recorded) == delivered
