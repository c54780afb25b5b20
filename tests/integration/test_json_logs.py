"""Application logs as JSON lines: `stratus serve --log-format json` writes one object per line,
and the lines logged while a request is handled carry its id (the X-Request-Id header, the
access-log line's and the audit record's)."""

from __future__ import annotations

import io
import json
import logging

import httpx
import pytest

from stratus.observe.logs import JsonFormatter
from tests.live_server import ServeProcess

pytestmark = pytest.mark.timeout(180)


def test_lines_logged_inside_a_request_carry_its_id(http, admin_key):
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("stratus")
    logger.addHandler(handler)  # the gateway runs in this process (tests/conftest.py api_server)
    try:
        r = http.get("/v1/models", headers={"X-Request-Id": "json-log-1"})
        assert r.status_code == 200 and r.headers["x-request-id"] == "json-log-1"
        r = http.get("/v1/models/no-such-model", headers={"X-Request-Id": "json-log-2"})
        assert r.status_code == 404
    finally:
        logger.removeHandler(handler)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    for request_id, status in (("json-log-1", "200"), ("json-log-2", "404")):
        mine = [line for line in lines if line.get("request_id") == request_id]
        assert mine, lines
        assert any(status in line["message"] for line in mine)
        for line in mine:
            assert {"ts", "level", "logger", "message"} <= set(line)
    assert admin_key not in out.getvalue()


def test_serve_writes_json_lines(tiny_checkpoint, tmp_path):
    server = ServeProcess(
        *("--model", f"tiny={tiny_checkpoint}", "--data-dir", str(tmp_path / "data"), "--no-auth"),
        *("--engine-isolation", "thread", "--log-format", "json", "--log-level", "debug"),
    )
    try:
        server.wait_ready()
        r = httpx.get(server.url + "/v1/models", headers={"X-Request-Id": "json-serve-1"}, timeout=30)
        assert r.status_code == 200
        server.terminate()
        assert server.wait() == 0
    finally:
        server.kill()
    records = []
    for line in server.lines:
        if line.startswith("{"):
            records.append(json.loads(line))  # every line that looks like JSON is JSON
    loggers = {r["logger"] for r in records}
    assert "uvicorn.error" in loggers  # uvicorn's own lines are JSON too
    assert any(r["logger"].startswith("stratus") for r in records)
    assert any(r.get("request_id") == "json-serve-1" for r in records)
    for r in records:
        assert {"ts", "level", "logger", "message"} <= set(r)
