"""Content logging per team, the signed alert webhook, auto-suspension with reinstatement, and
lifting lockouts: on a real gateway (SQLite), through the admin API and the `stratus` CLI."""

from __future__ import annotations

import http.server
import json
import re
import threading
import time

import httpx
import openai
import pytest
from click.testing import CliRunner

from stratus.api import create_app
from stratus.api.auth import build_access
from stratus.audit.redact import redact
from stratus.audit.webhook import verify
from stratus.cli.main import main
from stratus.config import Settings
from stratus.security.bootstrap import bootstrap
from stratus.security.keys import generate
from stratus.security.secrets import SecretStore, load_keyring, rotate
from stratus.security.stage import IdentityStage
from tests import issued
from tests.conftest import TINY_MODEL
from tests.live_server import LiveServer

pytestmark = pytest.mark.timeout(240)

EMAIL = "jane.roe@example.org"
CARD = "4111 1111 1111 1111"
PHONE = "+1 415 555 2671"
PROVIDER_KEY = "sk-proj-" + "Zx8Qw2Lm" * 4


@pytest.fixture(scope="module")
def server(tiny_engine, tmp_path_factory):
    data_dir = issued.data_dir_of(tmp_path_factory.mktemp("review-gateway"))
    settings = Settings(
        data_dir=str(data_dir),
        lockout_failures=3,
        lockout_seconds=60,
        alert_suspend=True,
        response_cache_size=16,
        access_log=True,
        access_log_file=str(data_dir / "access.jsonl"),
    )
    access = build_access(settings)
    admin = issued.record(generate().secret)
    bootstrap(access.store, admin)
    app = create_app(settings, engines={TINY_MODEL: tiny_engine}, identity=IdentityStage(access))
    with LiveServer(app) as live:
        live.wait_ready()
        live.admin = admin
        live.state = app.state.stratus
        live.state.audit.review.webhook.backoff = 0.01  # retries without long pauses
        live.data_dir = data_dir
        yield live


def client(server, key: str | None, source: str = "127.0.0.1") -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    transport = httpx.HTTPTransport(local_address=source)
    return httpx.Client(base_url=server.url, headers=headers, transport=transport, timeout=60)


def user_key(server, name: str, role: str = "member", team: str | None = None) -> tuple[str, str]:
    """(key id, secret) of a new user's key, bound to `team` when given."""
    with client(server, server.admin) as c:
        if team and c.get(f"/admin/teams/{team}").status_code == 404:
            assert c.post("/admin/teams", json={"name": team}).status_code == 201
            assert c.put(f"/admin/teams/{team}/models/{TINY_MODEL}").status_code == 200
        body = {"name": name, "role": role, "team": team}
        assert c.post("/admin/users", json=body).status_code == 201
        r = c.post("/admin/keys", json={"name": name, "user": name, "team": team})
        assert r.status_code == 201, r.text
        return r.json()["key"]["id"], issued.record(r.json()["secret"])


def cli(server, key: str, *args: str, stdin: str | None = None):
    env = {"STRATUS_API_KEY": key, "STRATUS_URL": server.url}
    return CliRunner().invoke(main, list(args), env=env, input=stdin)


def database_bytes(server) -> bytes:
    return b"".join(f.read_bytes() for f in server.data_dir.glob("*.db*"))


def test_content_logging_is_off_by_default_then_redacted_and_encrypted(server):
    _, ml = user_key(server, "cl-ml", team="cl-ml")
    _, other = user_key(server, "cl-other", team="cl-other")
    _, auditor = user_key(server, "cl-aud", role="auditor")
    prompt = f"Mail {EMAIL} or call {PHONE}; card {CARD}; key {PROVIDER_KEY} and {ml}. Tell me a tale."
    issued.record_prompt(prompt)

    def chat(key: str, stream: bool = False) -> str:
        oa = openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)
        messages = [{"role": "user", "content": prompt}]
        if stream:
            raw = oa.chat.completions.with_raw_response.create(
                model=TINY_MODEL, messages=messages, max_tokens=4, stream=True
            )
            for _ in raw.parse():
                pass
            return raw.headers["x-request-id"]
        raw = oa.chat.completions.with_raw_response.create(model=TINY_MODEL, messages=messages, max_tokens=4)
        return raw.headers["x-request-id"]

    before = chat(ml)  # content logging is off by default
    with client(server, server.admin) as c:
        assert c.get("/admin/audit/content", params={"request_id": before}).json()["data"] == []
        bad = c.put("/admin/teams/cl-ml/content-logging", json={"enabled": "maybe"})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "enabled"
        missing = c.put("/admin/teams/no-such-team/content-logging", json={"enabled": True})
        assert missing.status_code == 404
    with client(server, auditor) as c:  # auditors read, only admins switch
        assert c.put("/admin/teams/cl-ml/content-logging", json={"enabled": True}).status_code == 403
    result = cli(server, server.admin, "teams", "content-logging", "cl-ml", "--on")
    assert result.exit_code == 0, result.output

    plain, streamed, untouched = chat(ml), chat(ml, stream=True), chat(other)
    with client(server, auditor) as c:
        for rid in (plain, streamed):
            deadline = time.monotonic() + 10  # a stream's record is written after its last byte
            while not (rows := c.get("/admin/audit/content", params={"request_id": rid}).json()["data"]):
                assert time.monotonic() < deadline, f"no content logged for {rid}"
                time.sleep(0.05)
            (row,) = rows
            text = row["content"]["messages"][0]["content"]
            assert row["team"] == "cl-ml" and row["principal"] == "cl-ml"
            assert "[email]" in text and "[phone]" in text and "[card]" in text
            assert text.count("[api_key]") == 2 and "Tell me a tale." in text
            for secret in (EMAIL, CARD, PHONE, PROVIDER_KEY, ml):
                assert secret not in json.dumps(row)
            assert len(row["content"]["completions"]) == 1
        assert c.get("/admin/audit/content", params={"request_id": untouched}).json()["data"] == []
        enabled = c.get("/admin/content-logging").json()["data"]
        assert [t["team"] for t in enabled] == ["cl-ml"]
        changes = c.get("/admin/audit", params={"action": "PUT /admin/teams/{name}/content-logging"})
        assert [r["status"] for r in changes.json()["data"]][:1] == [200]
    with client(server, ml) as c:  # a member cannot read logged content
        assert c.get("/admin/audit/content").status_code == 403
    blob = database_bytes(server)
    assert b"Tell me a tale" not in blob  # stored encrypted, not just redacted

    # `stratus secrets rotate`'s work: the content is re-encrypted and the server still reads it
    box = SecretStore(server.state.access.store, load_keyring(server.data_dir))
    old_key = box.ring.current
    new_key, count = rotate(box)
    assert new_key != old_key and count >= 2
    with client(server, auditor) as c:
        (row,) = c.get("/admin/audit/content", params={"request_id": plain}).json()["data"]
        assert "Tell me a tale." in row["content"]["messages"][0]["content"]
    result = cli(server, server.admin, "teams", "content-logging", "cl-ml", "--off")
    assert result.exit_code == 0, result.output


def cache_hits(server) -> float:
    with client(server, server.admin) as c:
        text = c.get("/metrics").text
    found = re.search(rf'^stratus_response_cache_hits_total{{model="{TINY_MODEL}"}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def test_a_cached_answer_is_logged_with_its_completion(server):
    _, key = user_key(server, "cache-u", team="cl-cache")
    assert cli(server, server.admin, "teams", "content-logging", "cl-cache", "--on").exit_code == 0
    body = {
        "model": TINY_MODEL,
        "messages": [{"role": "user", "content": issued.record_prompt("Same question twice, mail q@z.io")}],
        "max_tokens": 4,
        "temperature": 0,
    }
    hits = cache_hits(server)
    with client(server, key) as c:
        first, second = c.post("/v1/chat/completions", json=body), c.post("/v1/chat/completions", json=body)
    assert first.status_code == second.status_code == 200
    assert cache_hits(server) == hits + 1  # the second answer came from the response cache
    with client(server, server.admin) as c:
        logged = [
            c.get("/admin/audit/content", params={"request_id": r.headers["x-request-id"]}).json()["data"][0]
            for r in (first, second)
        ]
    answer = first.json()["choices"][0]["message"]["content"]
    for row in logged:
        assert row["content"]["messages"][0]["content"] == "Same question twice, mail [email]"
    assert logged[0]["content"]["completions"] == logged[1]["content"]["completions"]
    assert logged[1]["content"]["completions"] == [redact(answer)]
    assert cli(server, server.admin, "teams", "content-logging", "cl-cache", "--off").exit_code == 0


class Receiver:
    """A real HTTP server on loopback that records signed webhook calls; `fail` answers 500 first."""

    def __init__(self):
        self.calls: list[tuple[dict, bytes]] = []
        self.fail = 0
        self.hold = threading.Event()
        self.hold.set()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.hold.wait(30)
                outer.calls.append((dict(self.headers), body))
                status = 500 if outer.fail > 0 else 204
                outer.fail -= 1
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook?token=abc"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def wait(self, n: int, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while len(self.calls) < n:
            assert time.monotonic() < deadline, f"{len(self.calls)} webhook calls, expected {n}"
            time.sleep(0.02)


def fail_logins(server, source: str, times: int = 3) -> None:
    with client(server, None, source) as c:
        for _ in range(times):
            guess = issued.record(generate().secret)
            assert c.get("/v1/models", headers={"Authorization": f"Bearer {guess}"}).status_code == 401


def test_alert_webhook_is_signed_retried_and_never_blocks(server):
    receiver = Receiver()
    try:
        with client(server, server.admin) as c:
            assert c.put("/admin/alerts/webhook", json={"url": "ftp://x"}).status_code == 400
            short = c.put("/admin/alerts/webhook", json={"url": receiver.url, "secret": "short"})
            assert short.status_code == 400 and short.json()["error"]["param"] == "secret"
        result = cli(server, server.admin, "alerts", "webhook", "set", receiver.url)
        assert result.exit_code == 0, result.output
        secret = issued.record(result.stdout.strip().splitlines()[-1])
        with client(server, server.admin) as c:
            shown = c.get("/admin/alerts/webhook").json()
            assert shown["configured"] and "token" not in shown["url"]  # no query string shown
        assert secret.encode() not in database_bytes(server)  # stored encrypted

        receiver.fail = 1  # the first attempt fails: retried
        receiver.hold.clear()  # the receiver stalls; the request that raised the alert does not
        fail_logins(server, "127.0.0.21")
        receiver.hold.set()
        receiver.wait(2)
        (h1, b1), (h2, b2) = receiver.calls
        assert b1 == b2
        for headers, body in receiver.calls:
            assert verify(secret, headers["X-Stratus-Timestamp"], body, headers["X-Stratus-Signature"])
            assert not verify(
                "another-secret-0123", headers["X-Stratus-Timestamp"], body, headers["X-Stratus-Signature"]
            )
        event = json.loads(b1)["event"]
        assert event["kind"] == "lockout" and event["source"] == "addr:127.0.0.21"

        receiver.calls.clear()
        receiver.fail = 100  # never succeeds: bounded retries, then given up
        hook = server.state.audit.review.webhook
        failed = hook.failed
        fail_logins(server, "127.0.0.22")
        receiver.wait(hook.attempts)
        deadline = time.monotonic() + 10
        while hook.failed == failed:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        time.sleep(0.1)
        assert len(receiver.calls) == hook.attempts
        result = cli(server, server.admin, "alerts", "webhook", "clear")
        assert result.exit_code == 0 and "removed" in result.output
    finally:
        receiver.httpd.shutdown()


def test_a_key_whose_alert_fires_is_suspended_until_an_admin_reinstates_it(server):
    key_id, key = user_key(server, "susp-a", team="susp")
    _, bystander = user_key(server, "susp-b", team="susp")
    for i in range(11):  # one key from 11 addresses in one interval: a many_addresses alert
        with client(server, key, f"127.0.1.{i + 1}") as c:
            c.get("/v1/models")
    with client(server, bystander, "127.0.1.1") as c:
        assert c.get("/v1/models").status_code == 200  # other keys are unaffected
    with client(server, key) as c:
        r = c.get("/v1/models")
    assert r.status_code == 403 and r.json()["error"]["code"] == "key_suspended"
    assert key_id in r.json()["error"]["message"]

    with client(server, bystander) as c:  # a member may neither list nor lift suspensions
        assert c.post(f"/admin/keys/{key_id}/reinstate").status_code == 403
    result = cli(server, server.admin, "keys", "suspended")
    assert result.exit_code == 0 and key_id in result.output and "many_addresses" in result.output
    result = cli(server, server.admin, "keys", "reinstate", key_id)
    assert result.exit_code == 0, result.output
    with client(server, key) as c:
        assert c.get("/v1/models").status_code == 200
    with client(server, server.admin) as c:
        assert c.post(f"/admin/keys/{key_id}/reinstate").status_code == 409  # no longer suspended
        assert c.post("/admin/keys/key_nonexistent00000/reinstate").status_code == 404
        (suspended,) = c.get("/admin/audit", params={"action": "key.suspend"}).json()["data"]
        assert suspended["resource"] == f"key:{key_id}"
        reinstated = c.get("/admin/audit", params={"action": "POST /admin/keys/{key_id}/reinstate"}).json()
        assert [r["status"] for r in reinstated["data"]] == [404, 409, 200, 403]  # newest first


def test_admins_list_and_lift_lockouts(server):
    _, auditor = user_key(server, "lock-aud", role="auditor")
    fail_logins(server, "127.0.0.31")
    with client(server, server.admin, "127.0.0.31") as c:
        assert c.get("/v1/models").status_code == 429
    with client(server, auditor) as c:  # visible to auditors, liftable by admins only
        assert any(lk["source"] == "addr:127.0.0.31" for lk in c.get("/admin/lockouts").json()["data"])
        assert c.delete("/admin/lockouts/addr:127.0.0.31").status_code == 403
    result = cli(server, server.admin, "lockouts", "list")
    assert result.exit_code == 0 and "addr:127.0.0.31" in result.output
    result = cli(server, server.admin, "lockouts", "unlock", "addr:127.0.0.31")
    assert result.exit_code == 0, result.output
    with client(server, server.admin, "127.0.0.31") as c:
        assert c.get("/v1/models").status_code == 200
    with client(server, server.admin) as c:
        assert c.delete("/admin/lockouts/addr:127.0.0.99").status_code == 404
        lifted = c.get("/admin/audit", params={"action": "DELETE /admin/lockouts/{source}"}).json()["data"]
        statuses = sorted(r["status"] for r in lifted)
        assert statuses == [200, 403, 404]


def test_a_responses_api_call_is_content_logged_like_a_chat(server):
    """Review finding: /v1/responses was not among the content-logged routes, so a team with
    content logging on had none of its Responses API prompts or answers logged."""
    _, key = user_key(server, "resp-u", team="cl-resp")
    assert cli(server, server.admin, "teams", "content-logging", "cl-resp", "--on").exit_code == 0
    body = {
        "model": TINY_MODEL,
        "instructions": "Answer briefly.",
        "input": issued.record_prompt(f"Responses API, mail {EMAIL}"),
        "max_output_tokens": 4,
    }
    with client(server, key) as c:
        r = c.post("/v1/responses", json=body)
    assert r.status_code == 200, r.text
    rid = r.headers["x-request-id"]
    with client(server, server.admin) as c:
        deadline = time.monotonic() + 10
        while not (rows := c.get("/admin/audit/content", params={"request_id": rid}).json()["data"]):
            assert time.monotonic() < deadline, f"no content logged for {rid}"
            time.sleep(0.1)
    messages = rows[0]["content"]["messages"]
    assert [m["role"] for m in messages] == ["system", "user"]
    assert messages[1]["content"] == "Responses API, mail [email]"
    answer = "".join(
        p["text"] for item in r.json()["output"] if item["type"] == "message" for p in item["content"]
    )
    assert rows[0]["content"]["completions"] == [redact(answer)]
    assert cli(server, server.admin, "teams", "content-logging", "cl-resp", "--off").exit_code == 0
