"""The engine process of `stratus serve` killed (kill -9) while streams and requests run through
it: the requests in flight end at once (a stream with an error event and [DONE], a complete
request with a 5xx), each charged once for what it delivered and audited; the engine comes back
and serves; SIGTERM then stops the gateway with exit 0, and its ledger and audit trail reconcile
with what the clients saw.

Access control and metering are on. Output is capped so the requests are surely in flight when
the engine dies: 10 streams and 4 complete requests. It runs in the full form only (`make fault`).
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import httpx
import pytest

from stratus.security.keys import generate
from tests import issued
from tests.fault.conftest import FULL
from tests.fault.reconcile import Outcome, call, reconcile
from tests.live_server import ServeProcess
from tests.waiting import wait_for

# In `make fault` only: CI's short form of the suite keeps to its time budget, and
# tests/integration/test_serve_process.py already kills the engine in CI (restart and /ready).
pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.slow,
    pytest.mark.skipif(not FULL, reason="full form only: STRATUS_FAULT_FULL=1 (make fault)"),
]

STREAMS = 10
WHOLE = 4


def _engines(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return [p for p in found if "spawn" in Path(f"/proc/{p}/cmdline").read_text()]


def test_a_killed_engine_fails_its_requests_once_each_charged_and_audited(
    tiny_checkpoint, tmp_path, monkeypatch
):
    monkeypatch.delenv("STRATUS_AUDIT_KEY", raising=False)
    admin = issued.record(generate().secret)
    auth = {"Authorization": f"Bearer {admin}"}
    data_dir = issued.data_dir_of(tmp_path / "data")
    server = ServeProcess(
        "--model",
        f"tiny={tiny_checkpoint}",
        "--data-dir",
        str(data_dir),
        env={"STRATUS_ADMIN_KEY": admin, "STRATUS_MAX_TOKENS_PER_SECOND": "100"},
    )
    body = {"model": "tiny", "prompt": "engine", "max_tokens": 200, "ignore_eos": True, "temperature": 0}
    observed: dict[str, Outcome] = {}
    try:
        server.wait_ready()
        (engine,) = _engines(server.proc.pid)

        async def run() -> None:
            started: set[str] = set()
            async with httpx.AsyncClient(base_url=server.url, timeout=120, headers=auth) as client:

                async def one(rid: str, stream: bool) -> None:
                    request = {**body, "stream": stream}
                    if stream:
                        request["stream_options"] = {"include_usage": True}
                    observed[rid] = await call(
                        client, "/v1/completions", request, rid, on_chunk=lambda o, c: started.add(rid)
                    )

                work = asyncio.gather(
                    *(one(f"stream-{i}", True) for i in range(STREAMS)),
                    *(one(f"whole-{k}", False) for k in range(WHOLE)),
                )
                while len(started) < STREAMS:
                    assert not work.done(), observed
                    await asyncio.sleep(0.01)
                os.kill(engine, signal.SIGKILL)
                await work

        asyncio.run(run())
        for rid, got in observed.items():  # in flight: failed, not hung, not delivered
            assert not got.delivered, (rid, got)
            assert got.status == 200 if rid.startswith("stream-") else got.status >= 500, (rid, got)
        wait_for(lambda: httpx.get(server.url + "/ready", timeout=10).status_code == 200, "engine back", 120)
        after = httpx.post(
            server.url + "/v1/completions",
            json={**body, "max_tokens": 4},
            headers={**auth, "x-request-id": "after"},
            timeout=60,
        )
        assert after.status_code == 200, after.text
        observed["after"] = Outcome(
            200, True, False, **{k: after.json()["usage"][k] for k in ("prompt_tokens", "completion_tokens")}
        )
        server.terminate()
        assert server.wait(60) == 0, server.output
    finally:
        server.kill()
    result = reconcile(observed, data_dir)  # every request in flight: one row, its records
    for rid in set(observed) - {"after"}:
        (row,) = result.rows[rid]
        assert row["status"] != "ok", row
