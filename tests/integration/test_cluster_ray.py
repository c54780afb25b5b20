"""Ray as the cluster engine: a real multi-node Ray cluster on this machine behind a real gateway.

`ray.cluster_utils.Cluster` runs a head (no CPUs, so no replica lands there) and two nodes with
different custom resources: node A {"CPU": 2, "node_type_a": 2}, node B {"CPU": 4,
"node_type_b": 4}. The gateway (`--ray-address auto`, access control on) serves the demo
checkpoint as "demo" (2 replicas, {"CPU": 1}: spread over A and B) and as "pinned" (1 replica,
{"CPU": 1, "node_type_b": 1}: only B qualifies). One Ray for the whole session (starting one
takes ~20 s here), the only module that uses it, and it is stopped with the module so its
processes and actors (~2 GB) do not outlive it; every wait is bounded.

No assertion depends on the machine's speed: every engine is throttled to RATE tokens/s, so a
stream that must still be running when a node goes (or when it is closed) is, however fast the
machine; waits are bounded polls, never measurements.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

# Before ray is imported (tests/NOTES: without the first, Cluster nodes hang trying to reach
# the GCS on an external address; the second keeps Ray from phoning home).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[test]' (ray==2.60.0)")

from openai import AsyncOpenAI  # noqa: E402

from stratus.api import create_app  # noqa: E402
from stratus.api.auth import build_access  # noqa: E402
from stratus.config import Settings  # noqa: E402
from stratus.engine import EngineConfig  # noqa: E402
from stratus.security.bootstrap import bootstrap  # noqa: E402
from stratus.security.stage import IdentityStage  # noqa: E402
from tests import issued  # noqa: E402
from tests.live_server import LiveServer  # noqa: E402

pytestmark = [pytest.mark.timeout(420), pytest.mark.slow]

DEMO = Path(__file__).resolve().parents[2] / "models" / "demo"
PROMPTS = [
    "Once upon a time there was a little house",
    "The king looked at the old man and said",
    "In the morning the children went down to the river",
    "She opened the letter slowly, and read",
    "It was a dark and stormy night; the ship",
]
MAX_TOKENS = 32
RATE = 80.0  # output tokens/s of each replica (EngineConfig.max_tokens_per_second)


class Nodes:
    def __init__(self, cluster, a, b):
        self.cluster, self.a, self.b = cluster, a, b


@pytest.fixture(scope="module")
def ray_nodes():
    if not (DEMO / "config.json").is_file():
        pytest.skip("models/demo is missing: make demo-model")
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        a = cluster.add_node(num_cpus=2, resources={"node_type_a": 2})
        b = cluster.add_node(num_cpus=4, resources={"node_type_b": 4})
        cluster.wait_for_nodes(timeout=120)
        ray.init(address=cluster.address, namespace="stratus-test", log_to_driver=False)
        yield Nodes(cluster, a, b)
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.fixture(scope="module")
def ray_gateway(ray_nodes, tmp_path_factory, admin_key):
    settings = Settings(
        models={"demo": str(DEMO), "pinned": str(DEMO)},
        ray_address="auto",  # Ray is already initialized in this process: the app uses it
        replicas="demo=2,pinned=1",
        replica_resources='pinned={"CPU": 1, "node_type_b": 1}',
        data_dir=str(issued.data_dir_of(tmp_path_factory.mktemp("ray-gateway"))),
        engine=EngineConfig(num_threads=1, kv_cache_memory_mb=32, max_tokens_per_second=RATE),
        # The actor is a process already: a thread keeps the module's start at ~30 s instead of
        # ~110 s (an engine process per actor). STRATUS_TEST_RAY_ISOLATION=process runs the
        # default of `stratus serve` (the step loop in a child of each actor).
        engine_isolation=os.environ.get("STRATUS_TEST_RAY_ISOLATION", "thread"),
    )
    access = build_access(settings)
    bootstrap(access.store, admin_key)
    server = LiveServer(create_app(settings, identity=IdentityStage(access)), drain_timeout=10).start()
    try:
        server.wait_ready(timeout=240)
        _wait(lambda: len(_cluster(server).replicas["demo"]) == 2, 60, "both demo replicas registered")
        yield server
    finally:
        server.stop()


def _cluster(server):
    return server.app.state.stratus.ray_cluster


def _replica_set(server, model):
    return server.app.state.stratus.registry.models[model].replicas


def _named_actor_exists(name: str) -> bool:
    try:
        ray.get_actor(name)
    except ValueError:
        return False
    return True


def _wait(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


async def _node_ids(replicas) -> list[str | None]:
    for replica in replicas:
        await replica.probe()
    return [r.node_id for r in replicas]


def test_replicas_land_where_their_resources_say(ray_gateway, ray_nodes):
    cluster = _cluster(ray_gateway)
    demo_nodes = asyncio.run(_node_ids(cluster.replicas["demo"]))
    pinned_nodes = asyncio.run(_node_ids(cluster.replicas["pinned"]))
    # "demo" asks for a CPU only: spread over both worker nodes, never the CPU-less head
    assert sorted(demo_nodes) == sorted([ray_nodes.a.node_id, ray_nodes.b.node_id])
    # "pinned" asks for node_type_b, which only node B has
    assert pinned_nodes == [ray_nodes.b.node_id]


async def _complete(client: AsyncOpenAI, model: str, prompt: str, stream: bool) -> str:
    if not stream:
        r = await client.completions.create(model=model, prompt=prompt, max_tokens=MAX_TOKENS, temperature=0)
        return r.choices[0].text
    parts = []
    async for chunk in await client.completions.create(
        model=model, prompt=prompt, max_tokens=MAX_TOKENS, temperature=0, stream=True
    ):
        parts.extend(c.text for c in chunk.choices)
    return "".join(parts)


def test_node_loss_under_load_loses_no_request(ray_gateway, ray_nodes, admin_key):
    """50 greedy requests (half streaming), node A removed mid-load: every one completes with
    the text of a single reference run, and A's replica comes back on node B. A goes while
    requests run on it: at RATE tokens/s shared by them, none of those can finish before the
    node is gone."""
    demo = _replica_set(ray_gateway, "demo")
    cluster = _cluster(ray_gateway)
    before = demo.retries + demo.migrations
    nodes = asyncio.run(_node_ids(cluster.replicas["demo"]))
    on_a = cluster.replicas["demo"][nodes.index(ray_nodes.a.node_id)].id

    async def run() -> tuple[dict[str, str], list[tuple[str, str]]]:
        client = AsyncOpenAI(base_url=ray_gateway.url + "/v1", api_key=admin_key, max_retries=0, timeout=120)
        reference = {p: await _complete(client, "demo", p, stream=False) for p in PROMPTS}

        async def one(i: int) -> tuple[str, str]:
            prompt = PROMPTS[i % len(PROMPTS)]
            return prompt, await _complete(client, "demo", prompt, stream=i % 2 == 0)

        async def kill_node_a() -> int:
            # once the load is under way (several requests running on A), node A goes
            for _ in range(1200):  # bounded (60 s or more)
                if demo.entries[on_a].inflight >= 4:
                    break
                await asyncio.sleep(0.05)
            running_on_a = demo.entries[on_a].inflight
            await asyncio.to_thread(ray_nodes.cluster.remove_node, ray_nodes.a)
            return running_on_a

        limit = asyncio.Semaphore(16)

        async def bounded(i: int):
            async with limit:
                return await one(i)

        results, running_on_a = await asyncio.gather(
            asyncio.gather(*(bounded(i) for i in range(50))), kill_node_a()
        )
        await client.close()
        assert running_on_a >= 4, f"the load never reached node A ({running_on_a} requests on it)"
        return reference, results

    reference, results = asyncio.run(run())
    assert all(reference.values()), "the reference run produced empty completions"
    wrong = [(p, t) for p, t in results if t != reference[p]]
    assert len(results) == 50 and not wrong, (
        f"{len(wrong)} completions differ from the reference: {wrong[:2]}"
    )
    assert demo.retries + demo.migrations > before, "no request was on node A when it went"

    # Ray restarts the lost actor on the surviving node; its probes pass and it serves again
    deadline = time.monotonic() + 90
    while True:
        try:
            nodes = asyncio.run(_node_ids(cluster.replicas["demo"]))
            if nodes == [ray_nodes.b.node_id] * 2:
                break
        except Exception:
            pass
        assert time.monotonic() < deadline, "the lost replica did not come back on node B"
        time.sleep(0.5)
    _wait(lambda: all(e.available for e in demo.entries.values()), 30, "both demo replicas back in rotation")


def test_scale_through_the_admin_endpoint(ray_gateway, ray_nodes, auth_headers):
    cluster = _cluster(ray_gateway)
    pinned = _replica_set(ray_gateway, "pinned")
    with httpx.Client(base_url=ray_gateway.url, headers=auth_headers, timeout=300) as http:
        # bad requests: a clear 4xx in the OpenAI envelope, and nothing changes
        for body, status, param in [
            ({"model": "pinned", "replicas": 999}, 400, "replicas"),
            ({"model": "pinned", "replicas": "2"}, 400, "replicas"),
            ({"model": "pinned"}, 400, "replicas"),
            ({"model": "nope", "replicas": 1}, 404, "model"),
        ]:
            r = http.post("/admin/cluster/scale", json=body)
            assert r.status_code == status, r.text
            assert r.json()["error"]["param"] == param
        assert (
            httpx.post(
                ray_gateway.url + "/admin/cluster/scale", json={"model": "pinned", "replicas": 2}
            ).status_code
            == 401
        )
        assert len(cluster.replicas["pinned"]) == 1 and len(pinned.entries) == 1

        r = http.post("/admin/cluster/scale", json={"model": "pinned", "replicas": 2})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["replicas"] == 2 and body["errors"] == []
        assert [a["node_id"] for a in body["actors"]] == [ray_nodes.b.node_id] * 2  # node_type_b: B only
        assert len(pinned.entries) == 2

        kept, removed = cluster.replicas["pinned"][0], cluster.replicas["pinned"][1]
        # "wait": false answers 202 at once; the count follows in the background
        r = http.post("/admin/cluster/scale", json={"model": "pinned", "replicas": 1, "wait": False})
        assert r.status_code == 202, r.text
        assert r.json()["requested"] == 1
        _wait(lambda: list(pinned.entries) == [kept.id], 60, "the scale-down to finish")
        assert [r.id for r in cluster.replicas["pinned"]] == [kept.id]
        # the removed actor is gone for good (killed, not restarted): its name is free again
        _wait(lambda: not _named_actor_exists(removed.id), 30, "the scaled-down actor to be dead")
        r = http.post(
            "/v1/completions",
            json={"model": "pinned", "prompt": PROMPTS[0], "max_tokens": 8, "temperature": 0},
        )
        assert r.status_code == 200 and r.json()["choices"][0]["text"]
        # each scaling left an audit record naming who scaled which model
        audit = http.get("/admin/audit", params={"action": "POST /admin/cluster/scale", "model": "pinned"})
        records = audit.json()["data"]
        assert [(x["status"], x["principal"]) for x in records] == [
            (202, "admin"),
            (200, "admin"),
        ]  # newest first


def test_cluster_status_shows_the_ray_actors(ray_gateway, ray_nodes, auth_headers, admin_key):
    r = httpx.get(ray_gateway.url + "/admin/cluster", headers=auth_headers, timeout=30)
    assert r.status_code == 200, r.text
    ray_models = {m["model"]: m for m in r.json()["ray"]["models"]}
    assert set(ray_models) == {"demo", "pinned"}
    assert ray_models["pinned"]["resources"] == {"CPU": 1.0, "node_type_b": 1.0}
    assert [a["node_id"] for a in ray_models["pinned"]["actors"]] == [ray_nodes.b.node_id]
    kinds = {r["kind"] for m in r.json()["models"] for r in m["replicas"]}
    assert kinds == {"ray"}

    # the same through the command line: a table for people, JSON for scripts
    def cli_status(*extra: str) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "stratus.cli", "cluster", "status", "--url", ray_gateway.url, *extra],
            env={**os.environ, "STRATUS_API_KEY": admin_key, "COLUMNS": "250"},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        return out.stdout

    table = cli_status()
    assert "pinned" in table and ray_nodes.b.node_id in table
    shown = {m["model"]: m for m in json.loads(cli_status("--output", "json"))["ray"]["models"]}
    assert [a["node_id"] for a in shown["pinned"]["actors"]] == [ray_nodes.b.node_id]


def test_actor_errors_and_early_close(ray_gateway):
    """A request the engine refuses comes back as ValidationError (the caller's fault, never
    retried); closing a stream early aborts it on the actor instead of generating on."""
    from stratus.cluster.replica import ReplicaError
    from stratus.engine import GenerateRequest, SamplingParams, ValidationError

    replica = _cluster(ray_gateway).replicas["pinned"][0]

    async def run() -> tuple[int, int]:
        too_long = GenerateRequest(prompt_token_ids=[1, 2, 3], params=SamplingParams(max_tokens=5000))
        with pytest.raises(ValidationError) as info:
            async for _ in replica.generate(too_long):
                pass
        assert info.value.param == "max_tokens"
        assert not isinstance(info.value, ReplicaError)

        before = (await replica.refresh()).generated_tokens_total
        params = SamplingParams(max_tokens=1000, temperature=0, ignore_eos=True)
        stream = replica.generate(GenerateRequest(prompt_token_ids=[1, 2, 3], params=params))
        for _ in range(3):
            await anext(stream)
        await stream.aclose()
        for _ in range(200):  # bounded: the engine drops the request once the cancel arrives
            stats = await replica.refresh()
            # counted our 3 tokens: a report from after the request started, not a stale one
            fresh = stats.generated_tokens_total >= before + 3
            if fresh and stats.running == 0 and stats.waiting == 0:
                break
            await asyncio.sleep(0.05)
        return stats.running + stats.waiting, stats.generated_tokens_total - before

    left, generated = asyncio.run(run())
    assert left == 0
    # 1000 tokens take 1000 / RATE s at least: a stream that ran to its end was never aborted
    assert generated < 1000, f"the closed stream went on generating ({generated} tokens)"


def test_the_dashboard_shows_the_actors_nodes_and_scales_a_model(
    ray_gateway, ray_nodes, admin_key, tmp_path_factory
):
    """The Models page in a real browser (tests/browser.py): the Ray actors of "pinned" on node B,
    scaled to 2 and back to 1 from the page, the page following without a reload."""
    from tests.browser import Tab, chromium, expect, screenshot, screenshot_dirs

    cluster = _cluster(ray_gateway)
    with chromium() as browser:
        tab = Tab(browser, ray_gateway.url)
        tab.sign_in(admin_key)
        tab.open("models")
        page = tab.page
        panel = page.locator("[data-ray-model=pinned]")
        expect(panel.locator("h3")).to_contain_text("Ray: 1 actors")
        expect(panel.locator("tr[data-actor]")).to_contain_text(ray_nodes.b.node_id)
        form = page.locator("form[data-scale=pinned]")
        for count in (2, 1):
            form.locator("input[name=replicas]").fill(str(count))
            form.get_by_role("button", name="Scale").click()
            expect(form.locator(".form-status")).to_contain_text(f"scaling to {count}")
            expect(panel.locator("h3")).to_contain_text(f"Ray: {count} actors", timeout=120_000)
            expect(panel.locator("tr[data-actor]")).to_have_count(count)
            if count == 2:
                screenshot(page, screenshot_dirs(tmp_path_factory), "models-ray")
        assert len(cluster.replicas["pinned"]) == 1
        expect(page.locator("ul.events")).to_contain_text("pinned: 2 → 1 replicas")
        tab.close()
