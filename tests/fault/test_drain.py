"""SIGTERM to `stratus serve` (the default drain timeout) while streams and a request run: every
one finishes whole, with [DONE] and the tokens it asked for; the process exits 0; and the stopped
gateway's ledger and audit trail reconcile with what the clients saw (each request charged once,
each stream with its opening and closing records, the chain intact).

Access control and metering are on, as `stratus serve` runs by default. Output is capped
(STRATUS_MAX_TOKENS_PER_SECOND) so the streams are still running when the signal arrives; the
test shows that some were. A request sent after the signal is refused, or never connects, or
(had it connected first) is served: whichever, reconcile holds.

When the drain timeout expires first, the streams still running are aborted just before it: each
ends with an error event and [DONE], and is still charged once, for what it delivered, with its
closing audit record.

Short form (CI): 3 streams. Full form (`make fault`): 10 streams, longer.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from stratus.security.keys import generate
from tests import issued
from tests.fault.conftest import fault_seconds
from tests.fault.reconcile import Outcome, call, reconcile
from tests.live_server import ServeProcess

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]

STREAMS = int(fault_seconds(3, 10))
MAX_TOKENS = int(fault_seconds(120, 200))


def test_sigterm_drains_every_stream_to_done_and_reconciles(tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.delenv("STRATUS_AUDIT_KEY", raising=False)  # the data directory's audit.key
    admin = issued.record(generate().secret)
    auth = {"Authorization": f"Bearer {admin}"}
    data_dir = issued.data_dir_of(tmp_path / "data")
    server = ServeProcess(
        "--model",
        f"tiny={tiny_checkpoint}",
        "--data-dir",
        str(data_dir),
        env={"STRATUS_ADMIN_KEY": admin, "STRATUS_MAX_TOKENS_PER_SECOND": "300"},
    )
    body = {"model": "tiny", "prompt": "drain", "max_tokens": MAX_TOKENS, "ignore_eos": True}
    observed: dict[str, Outcome] = {}
    after_sigterm: set[str] = set()  # streams that received text after the signal
    try:
        server.wait_ready()

        async def run() -> None:
            sigterm = asyncio.Event()
            started: set[str] = set()

            def seen(out: Outcome, chunk: dict, rid: str) -> None:
                if out.text:
                    started.add(rid)
                if sigterm.is_set():
                    after_sigterm.add(rid)

            async with httpx.AsyncClient(base_url=server.url, timeout=120, headers=auth) as client:

                async def one(rid: str, stream: bool) -> None:
                    observed[rid] = await call(
                        client,
                        "/v1/completions",
                        {
                            **body,
                            "stream": stream,
                            **({"stream_options": {"include_usage": True}} if stream else {}),
                        },
                        rid,
                        on_chunk=lambda o, c: seen(o, c, rid),
                    )

                work = asyncio.gather(
                    *(one(f"stream-{i}", True) for i in range(STREAMS)), one("plain", False)
                )
                while len(started) < STREAMS:
                    assert not work.done(), f"ended before SIGTERM: {observed}"
                    await asyncio.sleep(0.01)
                server.terminate()
                sigterm.set()
                await asyncio.sleep(0.5)  # the listening socket closes
                async with httpx.AsyncClient(base_url=server.url, timeout=60, headers=auth) as late:
                    observed["late"] = await call(late, "/v1/completions", {**body, "max_tokens": 4}, "late")
                await work

        asyncio.run(run())
        assert server.wait(60) == 0, server.output
    finally:
        server.kill()

    for rid, got in observed.items():
        if rid == "late":
            continue
        assert got.delivered and got.completion_tokens == MAX_TOKENS, (rid, got)
    assert after_sigterm, "no stream was still running when SIGTERM arrived"
    late = observed["late"]
    assert late.delivered or late.status is None or late.status == 503, late
    assert "stratus: stopped" in server.output
    reconcile(observed, data_dir)  # raises, naming request ids


def test_streams_cut_by_the_drain_timeout_are_settled_and_audited(tiny_checkpoint, tmp_path, monkeypatch):
    """Streams that outlive --drain-timeout are aborted just before it expires: each ends with an
    error event and [DONE] (not delivered), yet each is charged once, for what it delivered, and
    has its closing audit record; exit 0, and no traceback."""
    monkeypatch.delenv("STRATUS_AUDIT_KEY", raising=False)
    admin = issued.record(generate().secret)
    data_dir = issued.data_dir_of(tmp_path / "data")
    server = ServeProcess(
        "--model",
        f"tiny={tiny_checkpoint}",
        "--drain-timeout",
        "3",
        "--data-dir",
        str(data_dir),
        env={"STRATUS_ADMIN_KEY": admin, "STRATUS_MAX_TOKENS_PER_SECOND": "30"},  # ~40 s, past the drain
    )
    body = {"model": "tiny", "prompt": "drain", "max_tokens": 400, "ignore_eos": True, "stream": True}
    observed: dict[str, Outcome] = {}
    try:
        server.wait_ready()

        async def run() -> None:
            started: set[str] = set()
            headers = {"Authorization": f"Bearer {admin}"}
            async with httpx.AsyncClient(base_url=server.url, timeout=120, headers=headers) as client:

                async def one(rid: str) -> None:
                    observed[rid] = await call(
                        client, "/v1/completions", body, rid, on_chunk=lambda o, c: started.add(rid)
                    )

                work = asyncio.gather(*(one(f"cut-{i}") for i in range(3)))
                while len(started) < 3:
                    assert not work.done(), observed
                    await asyncio.sleep(0.01)
                server.terminate()
                await work

        asyncio.run(run())
        assert server.wait(60) == 0, server.output
    finally:
        server.kill()
    for rid, got in observed.items():
        assert got.status == 200 and not got.complete and "shutting down" in (got.error or ""), (rid, got)
    assert "Traceback" not in server.output, server.output
    result = reconcile(observed, data_dir)  # each cut stream: one row, its closing record
    for rid in observed:
        (row,) = result.rows[rid]
        assert row["status"] == "aborted" and 0 < row["completion_tokens"] < 400, row
        closing = [r for r in result.records[rid] if r.outcome != "streaming"]
        assert [(r.prompt_tokens, r.completion_tokens) for r in closing] == [
            (row["prompt_tokens"], row["completion_tokens"])
        ]
