"""Two `stratus worker` processes behind two gateways: registration, and who may register.

The gateway runs in this process (a real uvicorn on loopback, access control on) with no model
of its own: the workers register over HTTP with the cluster secret and become the replicas of
model "demo". A worker killed mid-stream, restarted and rejoining is the fault suite's
(tests/fault/test_worker_killed.py).
"""

from __future__ import annotations

import secrets

import httpx
import pytest

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
    args = ("--engine-isolation", "thread", "--gateway", gateway.url, "--heartbeat-interval", "0.5")
    args += ("--gateway", second.url)
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
