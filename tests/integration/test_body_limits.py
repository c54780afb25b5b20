"""Request bodies are read only after the caller is identified, bounded in size and in time, and
every refusal (401, 413, 408) is an audited request like any other."""

from __future__ import annotations

import socket
import time

import pytest

from stratus.api import create_app
from stratus.api.auth import build_access
from stratus.config import Settings
from stratus.security.bootstrap import bootstrap
from stratus.security.keys import generate
from stratus.security.stage import IdentityStage
from tests import issued
from tests.conftest import TINY_MODEL
from tests.live_server import LiveServer

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def server(tiny_engine, tmp_path_factory):
    data_dir = issued.data_dir_of(tmp_path_factory.mktemp("body-limits"))
    settings = Settings(
        data_dir=str(data_dir), max_body_bytes=2000, body_read_timeout=1.0, lockout_failures=0
    )
    access = build_access(settings)
    admin = issued.record(generate().secret)
    bootstrap(access.store, admin)
    app = create_app(settings, engines={TINY_MODEL: tiny_engine}, identity=IdentityStage(access))
    with LiveServer(app) as live:
        live.wait_ready()
        live.admin = admin
        live.audit = app.state.stratus.audit.recorder.log
        yield live


def raw_post(server, headers: bytes, body: bytes, wait_for_answer: float = 10) -> str:
    with socket.create_connection(("127.0.0.1", server.port), timeout=wait_for_answer) as s:
        s.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + headers
            + b"\r\n"
            + body
        )
        return s.recv(4096).decode()


def record_of(server, request_id: str):
    for _ in range(200):
        found = [r for r in server.audit.records() if r.request_id == request_id]
        if found:
            return found[0]
        time.sleep(0.02)
    raise AssertionError(f"no audit record for {request_id}")


def test_an_unauthenticated_stalled_body_is_refused_at_once(server):
    head = raw_post(server, b"Content-Length: 1500\r\n", b"{")  # then never sends the rest
    # 401, not the 408 that waiting for the body would have ended in: it was never read
    assert head.startswith("HTTP/1.1 401"), head


def test_a_body_that_does_not_arrive_in_time_is_a_408_and_audited(server):
    auth = b"Authorization: Bearer " + server.admin.encode() + b"\r\nX-Request-Id: slow-body\r\n"
    head = raw_post(server, auth + b"Content-Length: 1500\r\n", b'{"model": ')
    assert head.startswith("HTTP/1.1 408"), head
    record = record_of(server, "slow-body")
    assert record.status == 408 and record.principal == "admin"


def test_a_body_over_the_limit_is_a_413_and_audited(server):
    auth = b"Authorization: Bearer " + server.admin.encode() + b"\r\nX-Request-Id: big-body\r\n"
    body = b'{"model": "tiny", "messages": [{"role": "user", "content": "' + b"x" * 3000 + b'"}]}'
    head = raw_post(server, auth + b"Content-Length: %d\r\n" % len(body), body)
    assert head.startswith("HTTP/1.1 413"), head
    assert record_of(server, "big-body").status == 413
