"""kill -9 of `stratus serve` in the middle of traffic, then a restart on the same data directory:
the ledger holds every response a client received complete, with the tokens the client was told,
once, and nothing no client asked for; every such response has its audit record and the chain
verifies; the restarted gateway's /admin/usage totals equal the ledger's.

Access control and metering are on (as `stratus serve` runs by default). A row is committed
before the end of its response is sent (before a body, before a stream's [DONE]), so the one gap
left is a request killed between its commit and its last bytes: the ledger holds it while the
client saw the connection drop. The test allows exactly that, and names such rows. A complete
response's audit record is written before its first byte; a stream's opening record too, its
closing record after its last byte, so a stream delivered just before the kill may have only its
opening record (reconcile's `crashed`).

Short form (CI): one kill. Full form (`make fault`): several kill/restart rounds on the same data
directory, with more requests each, reconciled once at the end.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx
import pytest

from stratus.security.keys import generate
from tests import issued
from tests.fault.conftest import fault_seconds
from tests.fault.reconcile import Outcome, call, reconcile
from tests.live_server import ServeProcess

pytestmark = pytest.mark.timeout(600)
COUNT = int(fault_seconds(48, 96))  # requests in flight per round
ROUNDS = int(fault_seconds(1, 4))  # kill -9 and restart this many times
REFUSED = 4  # requests refused per round: an unknown key, a model the caller may not use


def body(i: int) -> dict:
    # lengths spread from 2 to ~380 tokens: some requests finish long before others
    return {
        "model": "tiny",
        "prompt": [5, 6, 7, 8],
        "max_tokens": 2 + 8 * (i % 48),
        "ignore_eos": True,
        "stream": i % 2 == 1,
        **({"stream_options": {"include_usage": True}} if i % 2 else {}),
    }


def test_kill_9_mid_traffic_then_restart_ledger_equals_what_clients_received(
    tiny_checkpoint, tmp_path, monkeypatch
):
    monkeypatch.delenv("STRATUS_AUDIT_KEY", raising=False)  # the data directory's audit.key
    admin = issued.record(generate().secret)
    auth = {"Authorization": f"Bearer {admin}"}
    stranger = issued.record(generate().secret)  # a well-formed key the gateway never issued
    data_dir = issued.data_dir_of(tmp_path / "data")
    args = ["--metering", "--model", f"tiny={tiny_checkpoint}", "--data-dir", str(data_dir)]
    args += ["--engine-isolation", "thread"]  # kill -9 takes the engine with it
    env = {"STRATUS_ADMIN_KEY": admin}
    observed: dict[str, Outcome] = {}

    for round_ in range(ROUNDS):
        server = ServeProcess(*args, env=env)
        outcomes: dict[str, Outcome] = {}
        try:
            server.wait_ready()

            async def one(client: httpx.AsyncClient, i: int, round_=round_, outcomes=outcomes) -> None:
                rid = f"crash-{round_}-{i}"
                outcomes[rid] = await call(client, "/v1/completions", body(i), rid)

            async def refused(client: httpx.AsyncClient, j: int, round_=round_, outcomes=outcomes) -> None:
                rid = f"refused-{round_}-{j}"  # an unknown key (401), or a model it may not use (404)
                request, headers = body(j), ({"Authorization": f"Bearer {stranger}"} if j % 2 else {})
                if not j % 2:
                    request["model"] = "nope"
                outcomes[rid] = await call(client, "/v1/completions", request, rid, headers)

            async def traffic_then_kill(server=server, outcomes=outcomes) -> None:
                limits = httpx.Limits(max_connections=COUNT)
                async with httpx.AsyncClient(
                    base_url=server.url, timeout=120, limits=limits, headers=auth
                ) as client:
                    calls = asyncio.gather(
                        *(one(client, i) for i in range(COUNT)), *(refused(client, j) for j in range(REFUSED))
                    )
                    while sum(o.delivered for o in outcomes.values()) < COUNT // 4 and not calls.done():
                        await asyncio.sleep(0.01)
                    server.proc.kill()  # SIGKILL: no drain, no shutdown hooks
                    await calls

            asyncio.run(traffic_then_kill())
        finally:
            server.kill()
        crashed = [o for rid, o in outcomes.items() if rid.startswith("crash-")]
        delivered = sum(o.delivered for o in crashed)
        assert COUNT // 4 <= delivered < COUNT, Counter(  # killed mid-traffic: some done, some cut off
            (o.status, o.complete) for o in crashed
        )
        assert len(outcomes) == COUNT + REFUSED
        assert all(o.delivered or not o.complete for o in crashed)
        refusals = {rid: o for rid, o in outcomes.items() if rid.startswith("refused-")}
        assert all(o.complete and o.status in (401, 404) for o in refusals.values()), refusals  # at once
        observed.update(outcomes)

    restarted = ServeProcess(*args, env=env)
    try:
        restarted.wait_ready()
        r = httpx.get(restarted.url + "/admin/usage", params={"by": "status"}, headers=auth, timeout=30)
        assert r.status_code == 200, r.text
        totals = r.json()["data"]
    finally:
        restarted.kill()

    result = reconcile(observed, data_dir, crashed=True)  # raises, naming request ids
    rows = {rid: found[0] for rid, found in result.rows.items()}
    received = {rid: o.total_tokens for rid, o in observed.items() if o.delivered}
    charged = {rid for rid, row in rows.items() if row["status"] == "ok"}
    cut = result.committed_not_received
    assert charged == set(received) | cut  # beyond what clients received, only cut connections
    refusals = {rid: row for rid, row in rows.items() if rid not in charged}
    assert all(
        observed[rid].status == 404 and row["status"] == "refused_404" for rid, row in refusals.items()
    )
    assert all(observed[rid].status != 401 for rid in rows)  # an unknown caller is the audit trail's alone
    extra = sum(rows[rid]["prompt_tokens"] + rows[rid]["completion_tokens"] for rid in cut)
    assert result.ledger_tokens == sum(received.values()) + extra
    expected = {"ok": result.ledger_tokens, **({"refused_404": 0} if refusals else {})}
    assert {d["status"]: d["total_tokens"] for d in totals} == expected
