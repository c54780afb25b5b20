"""kill -9 in the middle of traffic, then a restart: the ledger holds every response a client
received complete, with the tokens the client was told, and nothing for requests that no row
could have settled; the restarted gateway's /admin/usage totals equal the ledger's.

A row is committed before the end of its response is sent (before a body, before a stream's
[DONE]), so the one gap left is a request killed between its commit and its last bytes: the
ledger holds it while the client saw the connection drop. The test allows exactly that, and
names such rows.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from stratus.store import Store, database_url
from stratus.store import usage as ledger
from tests.live_server import ServeProcess

pytestmark = pytest.mark.timeout(300)
COUNT = 48


def body(i: int) -> dict:
    # lengths spread from 2 to ~380 tokens: some requests finish long before others
    return {
        "model": "tiny",
        "prompt": [5, 6, 7, 8],
        "max_tokens": 2 + 8 * i,
        "ignore_eos": True,
        "stream": i % 2 == 1,
        **({"stream_options": {"include_usage": True}} if i % 2 else {}),
    }


async def one(client: httpx.AsyncClient, url: str, i: int, received: dict, failed: set) -> None:
    rid = f"crash-{i}"
    try:
        if i % 2 == 0:
            r = await client.post(url, json=body(i), headers={"x-request-id": rid})
            if r.status_code == 200:
                received[rid] = r.json()["usage"]["total_tokens"]
            return
        usage, done = None, False
        async with client.stream("POST", url, json=body(i), headers={"x-request-id": rid}) as r:
            async for line in r.aiter_lines():
                if line == "data: [DONE]":
                    done = True
                elif line.startswith("data: {") and json.loads(line[6:]).get("usage"):
                    usage = json.loads(line[6:])["usage"]["total_tokens"]
        if done and usage is not None:
            received[rid] = usage  # the whole stream, [DONE] included
        else:
            failed.add(rid)
    except httpx.HTTPError:
        failed.add(rid)


def test_kill_9_mid_traffic_then_restart_ledger_equals_what_clients_received(tiny_checkpoint, tmp_path):
    args = ["--no-auth", "--metering", "--model", f"tiny={tiny_checkpoint}", "--data-dir", str(tmp_path)]
    args += ["--engine-isolation", "thread"]  # kill -9 takes the engine with it
    server = ServeProcess(*args)
    received: dict[str, int] = {}
    failed: set[str] = set()
    try:
        server.wait_ready()

        async def traffic_then_kill() -> None:
            limits = httpx.Limits(max_connections=COUNT)
            url = server.url + "/v1/completions"
            async with httpx.AsyncClient(timeout=120, limits=limits) as client:
                calls = asyncio.gather(*(one(client, url, i, received, failed) for i in range(COUNT)))
                while len(received) < COUNT // 4 and not calls.done():
                    await asyncio.sleep(0.01)
                server.proc.kill()  # SIGKILL: no drain, no shutdown hooks
                await calls

        asyncio.run(traffic_then_kill())
    finally:
        server.kill()
    assert COUNT // 4 <= len(received) < COUNT  # killed mid-traffic: some done, some cut off
    assert len(received) + len(failed) == COUNT

    restarted = ServeProcess(*args)
    try:
        restarted.wait_ready()
        totals = httpx.get(restarted.url + "/admin/usage", params={"by": "status"}, timeout=30).json()["data"]
    finally:
        restarted.kill()
    store = Store.open(database_url(tmp_path))
    with store.connect() as conn:
        rows = {r["request_id"]: r for r in conn.execute(ledger.usage_ledger.select()).mappings()}
    store.close()

    for rid, tokens in received.items():  # every response received complete is in the ledger
        assert rows[rid]["status"] == "ok"
        assert rows[rid]["prompt_tokens"] + rows[rid]["completion_tokens"] == tokens
    committed_not_received = set(rows) - set(received)
    assert committed_not_received <= failed  # only requests whose client saw the connection drop
    assert all(rows[rid]["status"] == "ok" for rid in committed_not_received)
    ledger_tokens = sum(r["prompt_tokens"] + r["completion_tokens"] for r in rows.values())
    extra = sum(rows[rid]["prompt_tokens"] + rows[rid]["completion_tokens"] for rid in committed_not_received)
    assert ledger_tokens == sum(received.values()) + extra
    assert {d["status"]: d["total_tokens"] for d in totals} == {"ok": ledger_tokens}
