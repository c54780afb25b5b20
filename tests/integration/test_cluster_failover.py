"""Two `stratus worker` processes behind a gateway: registration, kill -9 mid-stream, drain.

The gateway runs in this process (a real uvicorn on loopback, access control on) with no model
of its own: the workers register over HTTP with the cluster secret and become the replicas of
model "demo". A greedy stream through the official openai client survives a kill -9 of the
worker serving it with exactly the text an uninterrupted run gives.
"""

from __future__ import annotations

import secrets

import httpx
import pytest
from openai import OpenAI

from stratus.config import Settings, demo_model_path
from stratus.security.stage import OPEN_ACCESS
from tests import issued
from tests.live_server import LiveServer
from tests.waiting import wait_for
from tests.worker_process import WorkerProcess

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]

DEMO = demo_model_path()
if not (DEMO / "config.json").is_file():
    pytest.skip(f"no demo model at {DEMO}: run `make demo-model`", allow_module_level=True)

PROMPT = "Tell me a story about a brave little fox who"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, admin_key):
    from stratus.api import create_app
    from stratus.api.auth import build_access
    from stratus.security.bootstrap import bootstrap
    from stratus.security.stage import IdentityStage

    secret = issued.record(secrets.token_urlsafe(32))
    settings = Settings(  # no model of its own: every replica of "demo" is a worker
        cluster_secret=secret,
        local_models=False,
        data_dir=str(issued.data_dir_of(tmp_path_factory.mktemp("cluster-gw"))),
    )
    access = build_access(settings)
    bootstrap(access.store, admin_key)
    app = create_app(settings, identity=IdentityStage(access))
    registry = app.state.stratus.registry
    gateway = LiveServer(app).start()
    # A second gateway (open, loopback only) that the same workers also register with.
    open_settings = Settings(cluster_secret=secret, local_models=False, auth=False)
    second = LiveServer(create_app(open_settings, identity=OPEN_ACCESS)).start()
    # At most 150 tokens/s each, so a 400-token stream is surely still running when its worker dies.
    args = ("--engine-isolation", "thread", "--gateway", gateway.url, "--heartbeat-interval", "0.5")
    args += ("--gateway", second.url, "--max-tokens-per-second", "150")
    workers = []
    try:
        workers = [WorkerProcess("demo", str(DEMO), secret, *args) for _ in range(2)]
        for w in workers:
            w.wait_serving()
        wait_for(
            lambda: "demo" in registry.models and len(registry.models["demo"].replicas.entries) == 2,
            "registration",
        )
        yield gateway, registry, workers, secret, second
    finally:
        for w in workers:
            w.stop()
        gateway.stop()
        second.stop()


def test_workers_serve_every_gateway_they_register_with(cluster):
    *_, workers, _, second = cluster
    registry = second.app.state.stratus.registry
    wait_for(lambda: "demo" in registry.models and len(registry.models["demo"].replicas.entries) == 2, "both")
    body = {"model": "demo", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 4}
    r = httpx.post(second.url + "/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4


def test_registration_needs_the_cluster_secret(cluster):
    gateway, registry, workers, secret, _ = cluster
    body = {"id": "intruder", "model": "demo", "url": "http://127.0.0.1:9"}
    for headers in ({}, {"Authorization": f"Bearer {secrets.token_urlsafe(32)}"}):
        for path in ("register", "heartbeat", "deregister"):
            r = httpx.post(
                f"{gateway.url}/internal/v1/workers/{path}", json=body, headers=headers, timeout=10
            )
            assert r.status_code == 401, r.text
            assert r.json()["error"]["code"] == "invalid_cluster_secret"
    assert set(registry.models["demo"].replicas.entries) == {w.id for w in workers}
    # With the secret, a worker URL with credentials, or one that does not answer, is refused.
    auth = {"Authorization": f"Bearer {secret}"}
    for url in ("http://user:pw@127.0.0.1:9", "file:///etc/passwd", "http://127.0.0.1:9"):
        r = httpx.post(
            f"{gateway.url}/internal/v1/workers/register", json={**body, "url": url}, headers=auth, timeout=30
        )
        assert r.status_code == 400, r.text
    assert set(registry.models["demo"].replicas.entries) == {w.id for w in workers}
    # Membership changes and refused callers are audited; accepted heartbeats are not.
    audit = gateway.app.state.stratus.audit.recorder.log
    seen = {
        (r.action.rsplit("/", 1)[-1], r.outcome, r.status, r.model)
        for r in audit.records()
        if "/internal/v1/workers" in r.action
    }
    assert ("register", "ok", 200, "demo") in seen  # the workers joining
    assert ("register", "error", 400, "demo") in seen
    assert {("register", "denied", 401, None), ("heartbeat", "denied", 401, None)} <= seen
    assert not any(action == "heartbeat" and status == 200 for action, _, status, _ in seen)


def test_kill_9_mid_stream_migrates_with_the_exact_greedy_text(cluster, admin_key):
    gateway, registry, workers, *_ = cluster
    client = OpenAI(base_url=gateway.url + "/v1", api_key=admin_key, max_retries=0, timeout=120)
    admin = {"Authorization": f"Bearer {admin_key}"}
    request = {
        "model": "demo",
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": 400,
        "temperature": 0,
        "extra_body": {"ignore_eos": True},
    }
    expected = client.chat.completions.create(**request).choices[0].message.content
    assert expected

    replicas = registry.models["demo"].replicas
    migrations = replicas.migrations
    parts: list[str] = []
    killed = None
    stream = client.chat.completions.create(**request, stream=True, stream_options={"include_usage": True})
    usage = None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        if not chunk.choices:
            continue
        parts.append(chunk.choices[0].delta.content or "")
        if killed is None and sum(1 for p in parts if p) == 5:
            busy = [w for w in workers if replicas.entries[w.id].inflight > 0]
            assert len(busy) == 1  # the one serving this stream
            killed = busy[0]
            killed.kill9()
    assert killed is not None
    assert "".join(parts) == expected  # no token lost or repeated
    assert replicas.migrations == migrations + 1
    assert usage is not None and usage.completion_tokens == 400

    # The audit record of that request says it moved, from which worker, after how many tokens.
    def migrated() -> list[dict]:
        r = httpx.get(gateway.url + "/admin/audit", params={"model": "demo"}, headers=admin, timeout=30)
        return [rec for rec in r.json()["data"] if "migrate" in str(rec.get("detail"))]

    wait_for(lambda: migrated(), "the audit record of the migrated stream", 30)
    record = migrated()[0]
    assert killed.id in str(record["detail"]) and record["outcome"] == "ok"
    # The dead worker stops heartbeating and is removed; the other one keeps serving.
    wait_for(lambda: killed.id not in replicas.entries, "the killed worker removed", 30)
    survivor = next(w for w in workers if w is not killed)
    assert client.chat.completions.create(**request).choices[0].message.content == expected
    # SIGTERM: the survivor deregisters (drained), exits 0, and is removed.
    survivor.terminate()
    assert survivor.proc.wait(60) == 0
    wait_for(lambda: survivor.id not in replicas.entries, "the stopped worker removed", 30)
