"""Every outcome path leaves exactly one audit record (a stream two: opening and closing); a
failing audit write refuses the request, streamed or not."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from stratus.api import create_app
from stratus.api.auth import build_access
from stratus.audit.verify import verify
from stratus.config import Settings
from stratus.request.errors import APIError
from stratus.security.bootstrap import bootstrap
from stratus.security.keys import generate
from stratus.security.stage import IdentityStage
from tests import issued
from tests.conftest import TINY_MODEL
from tests.live_server import LiveServer

pytestmark = pytest.mark.timeout(180)


class AdmitForTests(IdentityStage):
    """Real identity and audit; admission refuses two magic token budgets (limits are issue 5)."""

    async def admit(self, ctx, prompt_tokens, max_tokens, sequences=1):
        if max_tokens == 7:
            raise APIError(429, "Rate limit reached (test).", code="rate_limited")
        if max_tokens == 8:
            raise APIError(503, "Unavailable (test).")


@pytest.fixture(scope="module")
def server(tiny_engine, tmp_path_factory):
    data_dir = issued.data_dir_of(tmp_path_factory.mktemp("audit-gateway"))
    settings = Settings(
        data_dir=str(data_dir), access_log=True, access_log_file=str(data_dir / "access.jsonl")
    )
    access = build_access(settings)
    admin = issued.record(generate().secret)
    bootstrap(access.store, admin)
    app = create_app(settings, engines={TINY_MODEL: tiny_engine}, identity=AdmitForTests(access))
    with LiveServer(app) as live:
        live.wait_ready()
        live.admin = admin
        live.state = app.state.stratus
        live.access_log = data_dir / "access.jsonl"
        yield live


def records_for(server, request_id, wait: bool = True, count: int = 1):
    """The records of one request, once there are `count` of them; a stream's closing record is
    written just after its last byte, so wait."""
    found = []
    for _ in range(200 if wait else 1):
        found = [r for r in server.state.audit.recorder.log.records() if r.request_id == request_id]
        if len(found) >= count:
            return found
        time.sleep(0.05)
    return found


def chat(max_tokens=4, model=TINY_MODEL, stream=False, **extra):
    return {
        "model": model,
        "messages": [{"role": "user", "content": "audit me"}],
        "max_tokens": max_tokens,
        "stream": stream,
        **extra,
    }


def completion(max_tokens=4, stream=False, **extra):
    return {"model": TINY_MODEL, "prompt": "audit me", "max_tokens": max_tokens, "stream": stream, **extra}


def assert_opening(rec, request_id):
    """A stream's opening record: written before its first byte, so it has no token counts."""
    assert rec.request_id == request_id and rec.outcome == "streaming" and rec.status == 200
    assert rec.prompt_tokens is None and rec.completion_tokens is None


@pytest.fixture(scope="module")
def viewer_key(server):
    h = {"Authorization": f"Bearer {server.admin}"}
    with httpx.Client(base_url=server.url, headers=h, timeout=60) as c:
        assert c.post("/admin/users", json={"name": "vera", "role": "viewer"}).status_code in (200, 201)
        r = c.post("/admin/keys", json={"name": "v", "user": "vera"})
        assert r.status_code in (200, 201), r.text
        return issued.record(r.json()["secret"])


@pytest.mark.parametrize(
    "case, key, method, path, body, status, outcome",
    [
        ("unauthenticated", None, "POST", "/v1/chat/completions", chat(), 401, "denied"),
        ("bad key", "sk-stratus-0123456789ab_" + "x" * 43, "GET", "/v1/models", None, 401, "denied"),
        ("forbidden", "viewer", "POST", "/v1/chat/completions", chat(), 403, "denied"),
        ("unknown model", "admin", "POST", "/v1/chat/completions", chat(model="nope"), 404, "error"),
        ("limited", "admin", "POST", "/v1/chat/completions", chat(max_tokens=7), 429, "limited"),
        ("unavailable", "admin", "POST", "/v1/chat/completions", chat(max_tokens=8), 503, "error"),
        ("bad body", "admin", "POST", "/v1/chat/completions", {"model": TINY_MODEL}, 400, "error"),
        ("success", "admin", "POST", "/v1/chat/completions", chat(), 200, "ok"),
        ("stream", "admin", "POST", "/v1/chat/completions", chat(stream=True), 200, "ok"),
        ("admin change", "admin", "POST", "/admin/teams", {"name": "audited"}, 201, "ok"),
    ],
)
def test_each_outcome_leaves_exactly_one_record_and_a_stream_two(
    server, viewer_key, case, key, method, path, body, status, outcome
):
    secret = {"admin": server.admin, "viewer": viewer_key}.get(key, key)
    headers = {"X-Request-Id": f"audit-{case.replace(' ', '-')}", "User-Agent": "audit-test/1"}
    if secret:
        headers["Authorization"] = f"Bearer {secret}"
    with httpx.Client(base_url=server.url, timeout=60) as c:
        r = c.request(method, path, json=body, headers=headers)
    if case == "admin change" and r.status_code == 200:
        status = 200
    assert r.status_code == status, r.text
    if case == "stream":  # an opening record before the first byte, the closing one after the last
        opening, rec = records_for(server, headers["X-Request-Id"], count=2)
        assert_opening(opening, headers["X-Request-Id"])
        assert opening.seq < rec.seq and opening.principal == "admin" and opening.model == TINY_MODEL
    else:
        (rec,) = records_for(server, headers["X-Request-Id"])
    assert rec.status == status and rec.outcome == outcome
    assert rec.action.startswith(method + " ")
    assert rec.user_agent == "audit-test/1" and rec.client == "127.0.0.1"
    if key == "admin":
        assert rec.principal == "admin" and rec.key_prefix.startswith("sk-stratus-")
    if case == "success":
        assert rec.model == TINY_MODEL and rec.prompt_tokens > 0 and rec.completion_tokens > 0
    if case == "stream":
        assert rec.completion_tokens > 0
    if case == "bad key":
        assert rec.principal is None and rec.key_prefix == "sk-stratus-0123456789ab"


def test_public_routes_are_not_audited(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        r = c.get("/health", headers={"X-Request-Id": "audit-health"})
        assert r.status_code == 200
        assert r.headers["x-content-type-options"] == "nosniff" and r.headers["x-frame-options"] == "DENY"
        assert "strict-transport-security" not in r.headers  # plain HTTP: no HSTS
    assert records_for(server, "audit-health", wait=False) == []


def test_client_disconnect_mid_stream_leaves_opening_and_closing_records(server):
    headers = {"Authorization": f"Bearer {server.admin}", "X-Request-Id": "audit-disconnect"}
    body = chat(max_tokens=450, stream=True, ignore_eos=True)
    with (
        httpx.Client(base_url=server.url, timeout=60) as c,
        c.stream("POST", "/v1/chat/completions", json=body, headers=headers) as r,
    ):
        next(r.iter_lines())
        # The opening record was committed before the first byte: a gateway that dies now (the
        # stream cut, no closing record ever written) still leaves the request in the trail.
        opening, *_ = records_for(server, "audit-disconnect", wait=False)
        assert_opening(opening, "audit-disconnect")
    opening, rec = records_for(server, "audit-disconnect", count=2)
    assert_opening(opening, "audit-disconnect")
    assert rec.outcome in ("client_disconnect", "ok")  # a tiny model may finish first


@pytest.mark.parametrize(
    "path, body",
    [
        ("/v1/chat/completions", chat(stream=True, stream_options={"include_usage": True})),
        ("/v1/completions", completion(stream=True, stream_options={"include_usage": True})),
    ],
    ids=["chat", "completions"],
)
def test_stream_has_an_opening_and_a_closing_record_and_the_chain_verifies(server, path, body):
    rid = "audit-stream" + path.replace("/", "-")
    headers = {"Authorization": f"Bearer {server.admin}", "X-Request-Id": rid}
    with (
        httpx.Client(base_url=server.url, timeout=60) as c,
        c.stream("POST", path, json=body, headers=headers) as r,
    ):
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    usage = json.loads(lines[-2][len("data: ") :])["usage"]
    opening, closing = records_for(server, rid, count=2)
    assert_opening(opening, rid)
    assert opening.action == closing.action == f"POST {path}" and opening.seq < closing.seq
    assert closing.outcome == "ok" and closing.status == 200
    assert closing.prompt_tokens == usage["prompt_tokens"] > 0
    assert closing.completion_tokens == usage["completion_tokens"] > 0
    report = verify(server.state.audit.recorder.log)
    assert report.ok, report.problems


def generated_tokens(server) -> float:
    headers = {"Authorization": f"Bearer {server.admin}"}
    for line in httpx.get(server.url + "/metrics", headers=headers, timeout=30).text.splitlines():
        if line.startswith(f'stratus_generation_tokens_total{{model="{TINY_MODEL}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.mark.parametrize(
    "path, body",
    [
        ("/v1/chat/completions", chat(max_tokens=450, stream=True, ignore_eos=True)),
        ("/v1/completions", completion(max_tokens=450, stream=True, ignore_eos=True)),
    ],
    ids=["chat", "completions"],
)
def test_failing_audit_write_refuses_a_stream(server, tiny_engine, monkeypatch, path, body):
    """Disk full (or a constraint violation): a stream gets 503 audit_unavailable, not the stream,
    and its generation is aborted; fail-open streams anyway and counts the lost records."""
    recorder = server.state.audit.recorder

    def broken(events, *args):
        raise OSError("disk full")

    rid = "audit-refused-stream" + path.replace("/", "-")
    headers = {"Authorization": f"Bearer {server.admin}", "X-Request-Id": rid}
    before = generated_tokens(server)
    monkeypatch.setattr(recorder.log, "append_many", broken)
    with httpx.Client(base_url=server.url, timeout=60) as c:
        with c.stream("POST", path, json=body, headers=headers) as r:
            text = r.read().decode()
        assert r.status_code == 503, text
        assert r.headers["content-type"].startswith("application/json") and "data:" not in text
        assert json.loads(text)["error"]["code"] == "audit_unavailable"
        assert r.headers["x-request-id"] == rid and r.headers["retry-after"] == "5"
        # The generation was aborted, not run to its 450 tokens for nobody.
        deadline = time.monotonic() + 30
        while tiny_engine.stats().running or rid not in server.access_log.read_text():
            assert time.monotonic() < deadline, "the refused stream's generation kept running"
            time.sleep(0.05)
        lost = recorder.lost
        monkeypatch.setattr(recorder, "fail_open", True)
        open_body = {**body, "max_tokens": 4, "ignore_eos": False}
        open_headers = {**headers, "X-Request-Id": rid + "-open"}
        with c.stream("POST", path, json=open_body, headers=open_headers) as r:
            assert r.status_code == 200  # fail-open serves, and logs both lost records
            assert [line for line in r.iter_lines() if line][-1] == "data: [DONE]"
    deadline = time.monotonic() + 10
    while recorder.lost < lost + 2:  # the opening and the closing record
        assert time.monotonic() < deadline, recorder.lost
        time.sleep(0.05)
    monkeypatch.undo()
    assert generated_tokens(server) - before < 450
    assert records_for(server, rid, wait=False) == []
    assert records_for(server, rid + "-open", wait=False) == []


def test_stream_whose_opening_record_fails_is_recorded_as_refused_and_not_charged(server, monkeypatch):
    """Only the opening write fails: the stream is refused with 503, and its own record says so,
    with the prompt's tokens but no completion tokens (none reached the client)."""
    recorder = server.state.audit.recorder
    append_many = recorder.log.append_many

    def fails_openings(events, *args):
        if any(e.outcome == "streaming" for e in events):
            raise OSError("disk full")
        return append_many(events, *args)

    monkeypatch.setattr(recorder.log, "append_many", fails_openings)
    headers = {"Authorization": f"Bearer {server.admin}", "X-Request-Id": "audit-refused-opening"}
    with httpx.Client(base_url=server.url, timeout=60) as c:
        r = c.post(
            "/v1/chat/completions", json=chat(max_tokens=450, stream=True, ignore_eos=True), headers=headers
        )
    assert r.status_code == 503 and r.json()["error"]["code"] == "audit_unavailable"
    (rec,) = records_for(server, "audit-refused-opening")
    assert rec.status == 503 and rec.outcome == "error"
    assert rec.prompt_tokens > 0 and rec.completion_tokens == 0
    monkeypatch.undo()
    report = verify(server.state.audit.recorder.log)
    assert report.ok, report.problems


def test_failing_audit_write_refuses_the_request(server, monkeypatch):
    recorder = server.state.audit.recorder

    def broken(events):
        raise OSError("disk full")

    monkeypatch.setattr(recorder.log, "append_many", broken)
    headers = {"Authorization": f"Bearer {server.admin}", "X-Request-Id": "audit-refused"}
    with httpx.Client(base_url=server.url, timeout=60) as c:
        r = c.post("/v1/chat/completions", json=chat(), headers=headers)
        assert r.status_code == 503
        assert r.json()["error"]["code"] == "audit_unavailable"
        assert r.headers["x-request-id"] == "audit-refused"
        monkeypatch.setattr(recorder, "fail_open", True)
        r = c.post("/v1/chat/completions", json=chat(), headers={**headers, "X-Request-Id": "audit-open"})
        assert r.status_code == 200  # fail-open serves, and logs the lost record
    assert recorder.lost >= 1
    monkeypatch.undo()
    assert records_for(server, "audit-refused", wait=False) == []


def test_chain_of_the_live_gateway_verifies(server):
    report = verify(server.state.audit.recorder.log)
    assert report.ok, report.problems
    assert report.records > 10


def test_access_log_line_matches_the_audit_record_and_holds_no_secret(server):
    headers = {"Authorization": f"Bearer {server.admin}", "X-Request-Id": "access-log-1"}
    body = {
        "model": TINY_MODEL,
        "messages": [{"role": "user", "content": "zebra-prompt-47"}],
        "max_tokens": 3,
    }
    with httpx.Client(base_url=server.url, timeout=60) as c:
        assert c.post("/v1/chat/completions?x=1", json=body, headers=headers).status_code == 200
    (rec,) = records_for(server, "access-log-1")
    for _ in range(100):  # the line is written just after the last byte
        text = server.access_log.read_text()
        if "access-log-1" in text:
            break
        time.sleep(0.05)
    lines = [json.loads(line) for line in text.splitlines()]
    (line,) = [x for x in lines if x["request_id"] == "access-log-1"]
    assert line["principal"] == rec.principal == "admin"
    assert line["status"] == 200 and line["model"] == TINY_MODEL and line["path"] == "/v1/chat/completions"
    assert line["completion_tokens"] == rec.completion_tokens and line["duration_ms"] >= line["first_byte_ms"]
    assert server.admin not in text and "zebra-prompt-47" not in text
    exported = json.dumps([r.to_json() for r in server.state.audit.recorder.log.records()])
    assert server.admin not in exported and "zebra-prompt-47" not in exported


def test_ready_fails_while_the_audit_trail_cannot_be_written(server, monkeypatch):
    """Every request is refused while audit writes fail: /ready says so (503) until one succeeds."""
    recorder = server.state.audit.recorder
    real = recorder.log.append_many

    def broken(events, *args):
        raise OSError("disk full")

    admin = {"Authorization": f"Bearer {server.admin}"}
    with httpx.Client(base_url=server.url, timeout=60, headers=admin) as c:
        assert c.get("/ready").status_code == 200
        monkeypatch.setattr(recorder.log, "append_many", broken)
        assert c.get("/v1/models").status_code == 503  # refused: its record could not be written
        anonymous = httpx.get(server.url + "/ready", timeout=60)  # what a load balancer asks
        assert anonymous.status_code == 503 and anonymous.json()["status"] == "failed"
        assert c.get("/ready").status_code == 503  # with a credential: audited, so refused too
        monkeypatch.setattr(recorder.log, "append_many", real)
        assert c.get("/v1/models").status_code == 200
        assert c.get("/ready").status_code == 200


def test_a_key_sent_where_it_does_not_belong_is_not_stored(server):
    """A key pasted into the model name, the path or the User-Agent: the audit trail, the ledger
    and the access log keep only its public prefix."""
    secret = server.admin
    headers = {"Authorization": f"Bearer {secret}", "User-Agent": f"curl {secret}"}
    with httpx.Client(base_url=server.url, timeout=60, headers=headers) as c:
        r = c.post("/v1/chat/completions", json=chat(model=secret))
        assert r.status_code == 404 and secret not in r.text
        rid = r.headers["x-request-id"]
        r = c.get(f"/v1/models/{secret}")
        assert r.status_code == 404
        path_rid = r.headers["x-request-id"]
    records = records_for(server, rid) + records_for(server, path_rid)
    stored = json.dumps([rec.to_json() for rec in records])
    assert secret not in stored and "[redacted]" in stored
    deadline = time.monotonic() + 10
    while path_rid not in server.access_log.read_text():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert secret not in server.access_log.read_text()


def test_a_response_refused_for_its_audit_record_is_not_charged(server, monkeypatch):
    """Disk full: the complete response is refused with 503; its tokens were generated but never
    delivered, so the ledger charges it as refused, with no completion tokens."""
    from stratus.store import usage as ledger

    recorder = server.state.audit.recorder

    def broken(events, *args):
        raise OSError("disk full")

    rid = "audit-refused-uncharged"
    headers = {"Authorization": f"Bearer {server.admin}", "X-Request-Id": rid}
    monkeypatch.setattr(recorder.log, "append_many", broken)
    with httpx.Client(base_url=server.url, timeout=60) as c:
        r = c.post("/v1/chat/completions", json=chat(max_tokens=6, ignore_eos=True), headers=headers)
    monkeypatch.undo()
    assert r.status_code == 503 and r.json()["error"]["code"] == "audit_unavailable"
    meter = server.state.meter
    rows: list = []
    deadline = time.monotonic() + 10
    while not rows:
        assert time.monotonic() < deadline, "no ledger row"
        time.sleep(0.05)
        with meter.store.connect() as conn:
            table = ledger.usage_ledger
            rows = [dict(x) for x in conn.execute(table.select().where(table.c.request_id == rid)).mappings()]
    time.sleep(1.0)  # the ledger writer batches: any second row for this request would be in by now
    with meter.store.connect() as conn:
        rows = [dict(x) for x in conn.execute(table.select().where(table.c.request_id == rid)).mappings()]
    assert [(row["status"], row["completion_tokens"]) for row in rows] == [("error", 0)], rows
    assert rows[0]["prompt_tokens"] > 0  # the prompt was read: that much is charged


def test_a_response_whose_ledger_row_cannot_be_kept_is_refused(server, monkeypatch, tmp_path):
    """Fail closed: the database refuses the row and the spool cannot take it either, so the
    complete response is refused (503) rather than served unbilled."""
    from stratus.store import usage as ledger

    def broken(conn, row):
        raise OSError("disk full")

    writer = server.state.meter.writer
    monkeypatch.setattr(ledger, "record", broken)  # one row at a time (the fallback)
    monkeypatch.setattr(ledger, "record_many", broken)  # a batch
    monkeypatch.setattr(writer, "spool", tmp_path / "missing-dir" / "spool.jsonl")
    headers = {"Authorization": f"Bearer {server.admin}"}
    with httpx.Client(base_url=server.url, timeout=60) as c:
        r = c.post("/v1/chat/completions", json=chat(max_tokens=3), headers=headers)
    assert r.status_code == 503 and r.json()["error"]["code"] == "ledger_unavailable", r.text
