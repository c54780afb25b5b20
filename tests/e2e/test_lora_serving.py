"""LoRA adapters through the HTTP API with the official `openai` client: `--lora` at start,
POST/DELETE /admin/models/{base}/adapters at run time, grants, usage and audit by BASE:NAME."""

import os
import signal
import time

import httpx
import openai
import pytest

from stratus.engine import EngineConfig, EngineCore, GenerateRequest, SamplingParams
from tests import issued
from tests.checkpoints import build_lora_adapter
from tests.conftest import TINY_MODEL
from tests.live_server import LiveServer

pytestmark = pytest.mark.timeout(300)

PROMPT = "Beautiful is better than"


@pytest.fixture(scope="module")
def adapter_dirs(tiny_checkpoint, tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    return {
        "a1": build_lora_adapter(tiny_checkpoint, root / "a1", seed=11),
        "a2": build_lora_adapter(
            tiny_checkpoint, root / "a2", targets=("q_proj", "v_proj"), seed=12, std=0.1
        ),
    }


@pytest.fixture(scope="module")
def server(tiny_checkpoint, adapter_dirs, tmp_path_factory, admin_key):
    from stratus.api import create_app
    from stratus.api.auth import build_access
    from stratus.config import Settings
    from stratus.security.bootstrap import bootstrap
    from stratus.security.stage import IdentityStage

    settings = Settings(
        models={TINY_MODEL: str(tiny_checkpoint)},
        lora=f"a1={adapter_dirs['a1']}",  # the one model is the base
        engine_isolation="process",
        auth_cache_ttl=0,  # a grant takes effect on the next request
        data_dir=str(issued.data_dir_of(tmp_path_factory.mktemp("lora-gateway"))),
    )
    access = build_access(settings)
    bootstrap(access.store, admin_key)
    live = LiveServer(create_app(settings, identity=IdentityStage(access))).start()
    try:
        live.wait_ready()
        yield live
    finally:
        live.stop()


def expected(checkpoint, adapters: dict, adapter: str | None) -> str:
    """What the engine alone answers to PROMPT with `adapter` (greedy, 8 tokens)."""
    core = EngineCore(checkpoint, EngineConfig(kv_cache_memory_mb=16))
    for name, path in adapters.items():
        core.load_adapter(name, path)
    params = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)
    core.add_request(GenerateRequest(prompt=PROMPT, params=params, request_id="x", adapter=adapter))
    text = ""
    while core.has_work():
        text += "".join(d.text for d in core.step())
    return text


def complete(client: openai.OpenAI, model: str) -> str:
    r = client.completions.create(
        model=model, prompt=PROMPT, max_tokens=8, temperature=0, extra_body={"ignore_eos": True}
    )
    assert r.model == model
    return r.choices[0].text


def test_adapters_served_granted_metered_and_audited(server, tiny_checkpoint, adapter_dirs, admin_key):
    admin = openai.OpenAI(base_url=f"{server.url}/v1", api_key=admin_key, max_retries=0, timeout=60)
    http = httpx.Client(base_url=server.url, timeout=60, headers={"Authorization": f"Bearer {admin_key}"})
    a1 = f"{TINY_MODEL}:a1"
    a2 = f"{TINY_MODEL}:a2"

    # --lora at start: listed with its parent, and it answers as the engine does with it
    cards = {m.id: m for m in admin.models.list()}
    assert set(cards) == {TINY_MODEL, a1} and cards[a1].parent == TINY_MODEL
    base_text, a1_text = complete(admin, TINY_MODEL), complete(admin, a1)
    assert base_text == expected(tiny_checkpoint, {}, None)
    assert a1_text == expected(tiny_checkpoint, adapter_dirs, "a1") != base_text

    # at run time: loaded, served, replaced (200), refused when it does not fit, removed
    made = http.post(
        f"/admin/models/{TINY_MODEL}/adapters", json={"name": "a2", "path": str(adapter_dirs["a2"])}
    )
    assert made.status_code == 201 and made.json()["id"] == a2
    assert complete(admin, a2) == expected(tiny_checkpoint, adapter_dirs, "a2")
    again = http.post(
        f"/admin/models/{TINY_MODEL}/adapters", json={"name": "a2", "path": str(adapter_dirs["a2"])}
    )
    assert again.status_code == 200
    bad = http.post(f"/admin/models/{TINY_MODEL}/adapters", json={"name": "a3", "path": str(tiny_checkpoint)})
    assert bad.status_code == 400 and "adapter_config.json" in bad.json()["error"]["message"]
    assert http.post("/admin/models/nope/adapters", json={"name": "x", "path": "/"}).status_code == 404
    assert [a["id"] for a in http.get(f"/admin/models/{TINY_MODEL}/adapters").json()["data"]] == [a1, a2]
    assert http.delete(f"/admin/models/{TINY_MODEL}/adapters/a2").status_code == 200
    with pytest.raises(openai.NotFoundError):
        complete(admin, a2)

    # a user granted the base model only: the adapter is unknown to them, as an unknown model is
    assert http.post("/admin/users", json={"name": "lora-user"}).status_code == 201
    assert http.put(f"/admin/users/lora-user/models/{TINY_MODEL}").status_code == 200
    secret = issued.record(http.post("/admin/keys", json={"name": "k", "user": "lora-user"}).json()["secret"])
    user = openai.OpenAI(base_url=f"{server.url}/v1", api_key=secret, max_retries=0, timeout=60)
    assert [m.id for m in user.models.list()] == [TINY_MODEL]
    with pytest.raises(openai.NotFoundError) as ungranted:
        complete(user, a1)
    with pytest.raises(openai.NotFoundError) as unknown:
        complete(user, f"{TINY_MODEL}:nope")
    assert ungranted.value.body["code"] == unknown.value.body["code"] == "model_not_found"
    # the same words, model name aside (it lists only what the caller may use)
    assert ungranted.value.body["message"].replace(a1, "?") == unknown.value.body["message"].replace(
        f"{TINY_MODEL}:nope", "?"
    )
    assert http.put(f"/admin/users/lora-user/models/{a1}").status_code == 200
    assert complete(user, a1) == a1_text

    # usage and audit carry the adapter's own model name
    usage = {
        row["model"]: row
        for row in http.get("/admin/usage", params={"by": "user,model"}).json()["data"]
        if row["user"] == "lora-user"
    }
    assert (usage[a1]["requests"], usage[a1]["refused"], usage[a1]["completion_tokens"]) == (2, 1, 8)
    audited = http.get("/admin/audit", params={"model": a1, "principal": "lora-user"}).json()["data"]
    assert sorted(r["status"] for r in audited) == [200, 404]  # granted, and before the grant
    assert audited[0]["completion_tokens"] == 8
    changes = http.get("/admin/audit", params={"model": a2, "principal": "admin"}).json()["data"]
    assert [(r["action"].split()[0], r["status"]) for r in changes if "/adapters" in r["action"]] == [
        ("DELETE", 200),
        ("POST", 200),  # replaced
        ("POST", 201),
    ]


def test_a_restarted_engine_process_serves_its_adapters_again(server, admin_key):
    registry = server.app.state.stratus.registry
    engine = registry.models[TINY_MODEL].engine
    admin = openai.OpenAI(base_url=f"{server.url}/v1", api_key=admin_key, max_retries=0, timeout=60)
    before = complete(admin, f"{TINY_MODEL}:a1")
    restarts = engine.restarts
    os.kill(engine._transport.process.pid, signal.SIGKILL)
    deadline = time.monotonic() + 120
    # back, and seen passing a probe by the replica set
    while engine.restarts == restarts or not registry.available(registry.models[TINY_MODEL]):
        assert time.monotonic() < deadline, "the engine process did not come back"
        time.sleep(0.2)
    assert "a1" in engine.adapters
    assert complete(admin, f"{TINY_MODEL}:a1") == before
