"""Live model management: an admin loads a model on a running gateway (/admin/models, `stratus
models`), clients call it with the openai client, and removing it lets running requests finish
while later calls get 404. Members lack `models.manage`: 403, and the attempt is audited."""

from __future__ import annotations

import json
import threading
import time

import httpx
import openai
import pytest
from click.testing import CliRunner

from stratus.api import create_app
from stratus.api.auth import build_access
from stratus.cli.main import main
from stratus.config import Settings
from stratus.engine import EngineConfig
from stratus.security.bootstrap import bootstrap
from stratus.security.stage import IdentityStage
from tests import issued
from tests.checkpoints import build_checkpoint
from tests.live_server import LiveServer

pytestmark = [pytest.mark.timeout(300)]

START = "tiny"  # served from the start
ADDED = "extra"  # added at run time


@pytest.fixture(scope="module")
def gateway(tiny_checkpoint, tmp_path_factory, admin_key):
    data_dir = issued.data_dir_of(tmp_path_factory.mktemp("models-gateway"))
    settings = Settings(
        models={START: str(tiny_checkpoint)},
        data_dir=str(data_dir),
        engine_isolation="thread",  # the same registry and drain as processes, at a fraction of the time
        drain_timeout=60,
        engine=EngineConfig(kv_cache_memory_mb=8),
    )
    access = build_access(settings)
    bootstrap(access.store, admin_key)
    with LiveServer(create_app(settings, identity=IdentityStage(access))) as server:
        server.wait_ready()
        yield server


@pytest.fixture(scope="module")
def second_checkpoint(tmp_path_factory):
    return build_checkpoint(tmp_path_factory.mktemp("second"), "llama", hidden_size=96, init_std=0.1)


def admin(gateway, admin_key) -> httpx.Client:
    return httpx.Client(base_url=gateway.url, headers={"Authorization": f"Bearer {admin_key}"}, timeout=120)


def state_of(c: httpx.Client, name: str) -> dict | None:
    return next((m for m in c.get("/admin/models").json()["data"] if m["name"] == name), None)


def wait_settled(c: httpx.Client, name: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while (model := state_of(c, name)) is not None and model["state"] in ("downloading", "loading"):
        assert time.monotonic() < deadline, model
        time.sleep(0.1)
    assert model is not None
    return model


def test_add_call_and_remove_a_model_while_a_request_runs(gateway, admin_key, second_checkpoint):
    oa = openai.OpenAI(base_url=gateway.url + "/v1", api_key=admin_key, max_retries=0)
    with admin(gateway, admin_key) as c:
        r = c.post("/admin/models", json={"name": ADDED, "model": str(second_checkpoint)})
        assert r.status_code == 202, r.text
        assert r.json()["state"] == "loading" and r.json()["added_by"] == "admin"
        model = wait_settled(c, ADDED)
        assert model["state"] == "ready" and model["max_model_len"] == 2048, model
        assert model["replicas"] == [{"id": f"{ADDED}/local", "kind": "local"}]

        prompt = issued.record_prompt("Tell me about the quick brown fox, at length.")
        answer = oa.chat.completions.create(
            model=ADDED, messages=[{"role": "user", "content": prompt}], max_tokens=5
        )
        assert answer.choices[0].message.content is not None

        # a long stream is running when the model is removed: it finishes (or ends in an error
        # event), and nothing hangs
        outcome: dict = {}
        first_token = threading.Event()

        def stream() -> None:
            try:
                chunks = oa.chat.completions.create(
                    model=ADDED,
                    messages=[{"role": "user", "content": prompt}],
                    max_tokens=400,
                    stream=True,
                    extra_body={"ignore_eos": True},
                )
                for chunk in chunks:
                    first_token.set()
                    if chunk.choices and chunk.choices[0].finish_reason:
                        outcome["finish"] = chunk.choices[0].finish_reason
            except openai.APIError as exc:
                outcome["error"] = exc
            finally:
                first_token.set()

        runner = threading.Thread(target=stream)
        runner.start()
        assert first_token.wait(60)
        removed = c.delete(f"/admin/models/{ADDED}")
        assert removed.status_code == 200, removed.text
        assert removed.json()["running"] == 1  # the stream, which it waited for
        runner.join(60)
        assert not runner.is_alive()
        assert outcome == {"finish": "length"}, outcome

        with pytest.raises(openai.NotFoundError):
            oa.chat.completions.create(model=ADDED, messages=[{"role": "user", "content": prompt}])
        assert state_of(c, ADDED) is None
        assert c.delete(f"/admin/models/{ADDED}").status_code == 404
        assert [m.id for m in oa.models.list()] == [START]


def test_a_model_that_fails_to_load_says_why_and_can_be_removed(
    gateway, admin_key, second_checkpoint, tmp_path
):
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in second_checkpoint.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    with admin(gateway, admin_key) as c:
        assert c.post("/admin/models", json={"name": "broken", "model": str(broken)}).status_code == 202
        model = wait_settled(c, "broken")
        assert model["state"] == "failed" and "model.safetensors" in model["error"], model
        # the gateway stays ready for its load balancer: what failed was an addition
        assert httpx.get(gateway.url + "/ready").status_code == 200
        assert c.delete("/admin/models/broken").status_code == 200


def test_a_model_named_org_repo_is_removed_by_its_name(gateway, admin_key, second_checkpoint, tmp_path):
    """Review finding: a model name may hold '/', but DELETE /admin/models/{name} matched one path
    segment, so `stratus models remove org/repo` got a 404 for a model that was served."""
    broken = tmp_path / "broken"  # fails at once: the name is what is tested
    broken.mkdir()
    (broken / "config.json").write_text((second_checkpoint / "config.json").read_text())
    with admin(gateway, admin_key) as c:
        r = c.post("/admin/models", json={"name": "org/repo", "model": str(broken)})
        assert r.status_code == 202, r.text
        wait_settled(c, "org/repo")
        r = c.delete("/admin/models/org/repo")
        assert r.status_code == 200, r.text
        assert r.json()["name"] == "org/repo" and state_of(c, "org/repo") is None
        # an adapter's route is still its own: BASE/adapters/NAME is not a model's name
        assert c.delete(f"/admin/models/{START}/adapters/nope").json()["error"]["code"] == "model_not_found"


def test_refusals_say_what_is_wrong(gateway, admin_key, tmp_path):
    with admin(gateway, admin_key) as c:
        taken = c.post("/admin/models", json={"name": START, "model": str(tmp_path)})
        missing = c.post("/admin/models", json={"name": "nothing", "model": str(tmp_path / "none")})
        bad_name = c.post("/admin/models", json={"name": "bad name", "model": str(tmp_path)})
    assert missing.status_code == 400 and "No checkpoint at" in missing.json()["error"]["message"]
    assert taken.status_code == 400  # tmp_path holds no checkpoint: checked before the name
    assert bad_name.status_code == 400


def test_a_member_gets_403_and_the_attempt_is_audited(gateway, admin_key, second_checkpoint):
    with admin(gateway, admin_key) as c:
        assert c.post("/admin/users", json={"name": "mona", "role": "member"}).status_code == 201
        assert c.put(f"/admin/users/mona/models/{START}").status_code == 200
        made = c.post("/admin/keys", json={"name": "mona", "user": "mona"})
        member_key = issued.record(made.json()["secret"])
        member = httpx.Client(base_url=gateway.url, headers={"Authorization": f"Bearer {member_key}"})
        with member:
            refused = member.post("/admin/models", json={"name": "sneaky", "model": str(second_checkpoint)})
            assert refused.status_code == 403
            assert "models.manage" in refused.json()["error"]["message"]
            assert member.delete(f"/admin/models/{START}").status_code == 403
        assert state_of(c, "sneaky") is None
        params = {"action": "POST /admin/models", "principal": "mona"}
        records = c.get("/admin/audit", params=params).json()["data"]
    assert [(r["status"], r["model"]) for r in records] == [(403, None)], records

    # `stratus models list` for that member: the models she may call, with context and quantization
    env = {"STRATUS_API_KEY": member_key, "STRATUS_URL": gateway.url}
    listed = CliRunner().invoke(main, ["models", "list", "--output", "csv"], env=env)
    assert listed.exit_code == 0, listed.output
    assert listed.output.splitlines() == [
        "id,max_model_len,quantization,owned_by,ready",
        f"{START},512,,stratus,True",
    ]
    table = CliRunner().invoke(main, ["models", "list"], env=env, terminal_width=200)
    assert "CONTEXT" in table.output and "512" in table.output and "none" in table.output
    denied = CliRunner().invoke(main, ["models", "add", "x", "/tmp"], env=env)
    assert denied.exit_code == 1 and "403" in denied.output


def test_the_cli_adds_and_removes(gateway, admin_key, second_checkpoint):
    env = {"STRATUS_API_KEY": admin_key, "STRATUS_URL": gateway.url}
    added = CliRunner().invoke(main, ["models", "add", "cli-model", str(second_checkpoint)], env=env)
    assert added.exit_code == 0, added.output
    assert added.output.splitlines()[-1] == "cli-model: ready, context 2048 tokens"
    status = CliRunner().invoke(main, ["models", "status", "--output", "json"], env=env)
    listed = {m["name"]: m for m in json.loads(status.output)}
    assert listed["cli-model"]["state"] == "ready" and listed["cli-model"]["added_by"] == "admin"
    table = CliRunner().invoke(main, ["models", "status"], env=env, terminal_width=200)
    assert "ready, context 2048 tokens" in table.output
    removed = CliRunner().invoke(main, ["models", "remove", "cli-model"], env=env)
    assert removed.exit_code == 0 and "removed (0 requests were running)" in removed.output


def test_the_dashboard_adds_and_removes_a_model(gateway, admin_key, second_checkpoint, tmp_path_factory):
    """The Models page in a real browser (tests/browser.py): a model added from the page loads
    and answers, then is removed from it."""
    from tests.browser import Tab, chromium, expect, screenshot, screenshot_dirs

    with chromium() as browser:
        tab = Tab(browser, gateway.url)
        tab.sign_in(admin_key)
        tab.open("models")
        page = tab.page
        form = page.locator("#add-model")
        form.locator("input[name=name]").fill("from-ui")
        form.locator("input[name=model]").fill(str(second_checkpoint))
        form.get_by_role("button", name="Add model").click()
        article = page.locator("article[data-model=from-ui]")
        expect(article.locator("h2 .badge")).to_have_text("ready", timeout=60_000)
        expect(article.locator(".managed")).to_contain_text("added by admin")
        screenshot(page, screenshot_dirs(tmp_path_factory), "models-managed")
        oa = openai.OpenAI(base_url=gateway.url + "/v1", api_key=admin_key, max_retries=0)
        answer = oa.completions.create(model="from-ui", prompt="hello there", max_tokens=4)
        assert answer.usage.completion_tokens > 0
        page.once("dialog", lambda d: d.accept())
        article.get_by_role("button", name="Remove").click()
        expect(article).to_have_count(0)
        with admin(gateway, admin_key) as c:
            assert state_of(c, "from-ui") is None
        tab.close()
