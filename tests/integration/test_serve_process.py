"""`stratus serve` as users run it: a process that prints how to call it, stops on SIGTERM, and
replaces a killed engine. Draining on SIGTERM, and the drain timeout, are the fault suite's
(tests/fault/test_drain.py)."""

import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.live_server import ServeProcess

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]


def test_serve_prints_banner_and_stops_on_sigterm(tiny_checkpoint, tmp_path):
    """The banner says how to call it; SIGTERM stops it with exit 0. Draining streams and
    requests on SIGTERM is the fault suite's (tests/fault/test_drain.py)."""
    server = ServeProcess(
        "--model",
        f"tiny={tiny_checkpoint}",
        "--data-dir",
        str(tmp_path / "data"),
        "--no-auth",  # loopback, and not about access control
    )
    try:
        server.wait_ready()
        assert f"listening on {server.url}" in server.output
        assert "/v1/chat/completions" in server.output and "OpenAI(base_url=" in server.output
        server.terminate()
        assert server.wait(60) == 0, server.output
    finally:
        server.kill()
    assert "stratus: stopped" in server.output


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def test_a_killed_engine_process_is_replaced_and_reported_meanwhile(tiny_checkpoint, tmp_path):
    server = ServeProcess(
        "--model", f"tiny={tiny_checkpoint}", "--data-dir", str(tmp_path / "data"), "--no-auth"
    )
    body = {"model": "tiny", "prompt": "hello", "max_tokens": 4, "temperature": 0}
    try:
        server.wait_ready()
        with httpx.Client(base_url=server.url, timeout=60) as c:
            before = c.post("/v1/completions", json=body).json()["choices"][0]["text"]
            engines = [
                p for p in _children(server.proc.pid) if "spawn" in Path(f"/proc/{p}/cmdline").read_text()
            ]
            assert len(engines) == 1, engines
            os.kill(engines[0], signal.SIGKILL)
            seen_restarting, refusals = None, []
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                ready = c.get("/ready")
                assert c.get("/health").status_code == 200  # restarting is not dead
                if ready.status_code == 503 and ready.json()["models"].get("tiny") == "restarting":
                    seen_restarting = ready.json()
                    r = c.post("/v1/completions", json=body)
                    if r.status_code == 503:
                        refusals.append(r.json()["error"]["message"])
                if seen_restarting and ready.status_code == 200:
                    break
                time.sleep(0.1)
            assert seen_restarting, "/ready never reported the engine restarting"
            assert "being restarted" in seen_restarting["errors"]["tiny"]
            # While it restarts the 503 says so; just after, until the replica set's next probe,
            # it may still say only that no replica is available.
            assert any("being restarted" in m for m in refusals), refusals
            assert all("being restarted" in m or "available right now" in m for m in refusals), refusals
            assert c.get("/ready").status_code == 200, "the engine was not restarted"
            after = c.post("/v1/completions", json=body)
            assert after.status_code == 200 and after.json()["choices"][0]["text"] == before
            cluster = c.get("/admin/cluster").json()["models"][0]
            assert cluster["state"] == "ready" and cluster["available"]
    finally:
        server.kill()
