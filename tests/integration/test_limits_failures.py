"""An unreachable Redis: 503 by default (fail closed); per-process limits with fail-open."""

from __future__ import annotations

import time

import httpx
import pytest

from stratus.api import create_app
from stratus.config import Settings
from stratus.security.stage import OPEN_ACCESS
from stratus.store import usage as ledger
from tests.conftest import TINY_MODEL
from tests.live_server import LiveServer

pytestmark = pytest.mark.timeout(180)
NOWHERE = "redis://127.0.0.1:1/0"  # nothing listens on port 1


def gateway(tiny_engine, data_dir, fail_open: bool) -> LiveServer:
    settings = Settings(metering=True, data_dir=str(data_dir), redis_url=NOWHERE, limits_fail_open=fail_open)
    app = create_app(settings, engines={TINY_MODEL: tiny_engine}, identity=OPEN_ACCESS)
    meter = app.state.stratus.meter
    with meter.store.begin() as conn:
        ledger.put_limit(conn, {"scope": "model", "subject": TINY_MODEL, "rpm": 1}, time.time(), "test")
    return LiveServer(app)


BODY = {"model": TINY_MODEL, "prompt": "hi", "max_tokens": 2}


def rows_of(server: LiveServer) -> list[dict]:
    with server.app.state.stratus.meter.store.connect() as conn:
        return [dict(r) for r in conn.execute(ledger.usage_ledger.select()).mappings()]


def test_redis_down_fails_closed_with_503(tiny_engine, tmp_path, caplog):
    with gateway(tiny_engine, tmp_path, fail_open=False) as server:
        server.wait_ready()
        with caplog.at_level("ERROR", logger="stratus.limits"):
            r = httpx.post(server.url + "/v1/completions", json=BODY, timeout=60)
            httpx.post(server.url + "/v1/completions", json=BODY, timeout=60)
        recorded = rows_of(server)
    # The outage is logged once, not once per refused request.
    outage = [m for m in caplog.messages if "rate limiter unavailable" in m]
    assert len(outage) == 1, caplog.messages
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "limiter_unavailable"
    assert "Redis" in r.json()["error"]["message"] and r.headers["retry-after"]
    assert [(row["status"], row["prompt_tokens"], row["completion_tokens"]) for row in recorded] == [
        ("refused_503", 0, 0)
    ] * 2  # the refused requests' ledger rows, with nothing charged


def test_redis_down_fails_open_to_per_process_limits(tiny_engine, tmp_path):
    with gateway(tiny_engine, tmp_path, fail_open=True) as server:
        server.wait_ready()
        with httpx.Client(base_url=server.url, timeout=60) as c:
            first, second = c.post("/v1/completions", json=BODY), c.post("/v1/completions", json=BODY)
    assert first.status_code == 200
    assert second.status_code == 429 and "requests per minute" in second.json()["error"]["message"]
