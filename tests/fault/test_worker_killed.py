"""A `stratus worker` killed (kill -9) while streams run through it, then restarted.

The gateway runs in this process (a real uvicorn on loopback, access control and metering on)
with no model of its own: two workers register over HTTP with the cluster secret and become the
replicas of model "demo". Greedy streams and complete requests run on both; once each stream has
text, the busier worker is killed. Every stream continues on the survivor and ends byte-identical
to an uninterrupted run, with [DONE] and the usage it asked for (the prompt's tokens, not the
resumed prompt's); every complete response likewise. The test then restarts the killed worker
under its id, as an operator's supervisor would: it registers again from its new address,
/admin/cluster shows it up, and the gateway routes requests to it again. Then the survivor gets
SIGTERM while streams run on both workers: it deregisters, every stream still ends whole, and it
exits 0. Finally the stopped gateway reconciles with what every client saw: each request charged
once, each migration in its request's audit record, the chain intact.

Short form (CI): a few short streams. Full form (`make fault`): 20 streams of 400 tokens.
"""

from __future__ import annotations

import asyncio
import secrets
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from stratus.config import Settings, demo_model_path
from tests import issued
from tests.fault.conftest import fault_seconds
from tests.fault.reconcile import Outcome, call, reconcile
from tests.live_server import LiveServer
from tests.waiting import wait_for
from tests.worker_process import WorkerProcess

pytestmark = [pytest.mark.timeout(420), pytest.mark.slow]

DEMO = demo_model_path()
if not (DEMO / "config.json").is_file():
    pytest.skip(f"no demo model at {DEMO}: run `make demo-model`", allow_module_level=True)

STREAMS = int(fault_seconds(4, 20))
WHOLE = int(fault_seconds(2, 4))  # complete (not streamed) responses in flight too
DRAINED = int(fault_seconds(4, 8))  # streams running when the surviving worker gets SIGTERM
MAX_TOKENS = int(fault_seconds(128, 400))
PROMPTS = [
    "Tell me a story about a brave little fox who",
    "What did Elizabeth say to Mr. Darcy when",
    "Describe the garden at Pemberley in spring.",
    "Write a letter from Emma to her sister about",
]
CHAT = "/v1/chat/completions"


def request(prompt: str, stream: bool, max_tokens: int = MAX_TOKENS) -> dict:
    return {
        "model": "demo",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": stream,
        **({"stream_options": {"include_usage": True}} if stream else {}),
    }


def test_a_worker_killed_mid_stream_then_restarted_loses_and_double_charges_nothing(tmp_path, admin_key):
    from stratus.api import create_app
    from stratus.api.auth import build_access
    from stratus.security.bootstrap import bootstrap
    from stratus.security.stage import IdentityStage

    secret = issued.record(secrets.token_urlsafe(32))
    data_dir = issued.data_dir_of(tmp_path / "gateway")
    settings = Settings(cluster_secret=secret, local_models=False, data_dir=str(data_dir))
    access = build_access(settings)
    bootstrap(access.store, admin_key)
    app = create_app(settings, identity=IdentityStage(access))
    registry = app.state.stratus.registry
    auth = {"Authorization": f"Bearer {admin_key}"}
    gateway = LiveServer(app).start()
    # Capped throughput per worker, so the streams are surely still running when one dies.
    args = ("--engine-isolation", "thread", "--gateway", gateway.url, "--heartbeat-interval", "0.5")
    args += ("--max-tokens-per-second", "200")
    workers: list[WorkerProcess] = []
    observed: dict[str, Outcome] = {}
    try:
        with ThreadPoolExecutor(2) as pool:  # both start at once
            starting = [
                pool.submit(WorkerProcess, "demo", str(DEMO), secret, *args, "--worker-id", f"demo-{n}")
                for n in "ab"
            ]
        workers = [f.result() for f in starting if f.exception() is None]  # stopped below, whatever
        for f in starting:
            f.result()  # a worker that failed to start fails the test
        for w in workers:
            w.wait_serving()
        wait_for(
            lambda: "demo" in registry.models and len(registry.models["demo"].replicas.entries) == 2, "both"
        )
        replicas = registry.models["demo"].replicas
        migrations = replicas.migrations

        async def run_streams() -> tuple[dict[str, str], WorkerProcess]:
            async with httpx.AsyncClient(base_url=gateway.url, timeout=120, headers=auth) as client:
                expected = {}
                for p, prompt in enumerate(PROMPTS):  # the uninterrupted greedy text of each prompt
                    rid = f"reference-{p}"
                    observed[rid] = await call(client, CHAT, request(prompt, False), rid)
                    assert observed[rid].delivered, observed[rid]
                    expected[prompt] = observed[rid].text
                progress: dict[str, int] = {}

                def seen(out: Outcome, chunk: dict, rid: str) -> None:
                    progress[rid] = len(out.text)

                async def one(i: int) -> None:
                    rid = f"stream-{i}"
                    body = request(PROMPTS[i % len(PROMPTS)], True)
                    observed[rid] = await call(client, CHAT, body, rid, on_chunk=lambda o, c: seen(o, c, rid))

                async def whole(k: int) -> None:  # a complete response, in flight through the kill
                    rid = f"whole-{k}"
                    observed[rid] = await call(client, CHAT, request(PROMPTS[k % len(PROMPTS)], False), rid)

                streams = asyncio.gather(*(one(i) for i in range(STREAMS)), *(whole(k) for k in range(WHOLE)))
                while not (len(progress) == STREAMS and all(progress.values())):
                    assert not streams.done(), "the streams ended before the kill"
                    await asyncio.sleep(0.01)
                busy = max(workers, key=lambda w: replicas.entries[w.id].inflight)
                assert replicas.entries[busy.id].inflight > 0
                busy.kill9()
                await streams
                return {rid: expected[prompt] for rid, prompt in prompt_of.items()}, busy

        prompt_of = {f"stream-{i}": PROMPTS[i % len(PROMPTS)] for i in range(STREAMS)}
        prompt_of |= {f"whole-{k}": PROMPTS[k % len(PROMPTS)] for k in range(WHOLE)}
        expected, killed = asyncio.run(run_streams())
        for rid, text in expected.items():  # every response whole: no token lost or repeated
            got = observed[rid]
            assert got.delivered and got.completion_tokens == MAX_TOKENS, (rid, got)
            assert got.text == text, rid
            reference = observed[f"reference-{PROMPTS.index(prompt_of[rid])}"]
            assert got.prompt_tokens == reference.prompt_tokens, (rid, got)  # not the resumed prompt
        moved = replicas.migrations - migrations
        assert moved >= 1

        # The operator's supervisor restarts the killed worker under its id, at a new address.
        survivor = next(w for w in workers if w is not killed)
        restarted = WorkerProcess("demo", str(DEMO), secret, *args, "--worker-id", killed.id)
        workers.append(restarted)
        restarted.wait_serving()

        def cluster() -> dict[str, dict]:
            r = httpx.get(gateway.url + "/admin/cluster", headers=auth, timeout=30)
            assert r.status_code == 200, r.text
            model = next(m for m in r.json()["models"] if m["model"] == "demo")
            return {rep["id"]: rep for rep in model["replicas"]}

        wait_for(
            lambda: (
                killed.id in replicas.entries and replicas.entries[killed.id].replica.url == restarted.url
            ),
            "the restarted worker registered again from its new address",
            30,
        )
        wait_for(lambda: cluster().get(killed.id, {}).get("state") == "up", "the restarted worker up", 30)

        async def until_routed_to_it() -> None:  # varied prompts, a few at a time, until it serves
            async with httpx.AsyncClient(base_url=gateway.url, timeout=120, headers=auth) as client:
                for batch in range(20):
                    rids = [f"after-{batch}-{j}" for j in range(4)]
                    outs = await asyncio.gather(
                        *(
                            call(client, CHAT, request(f"{PROMPTS[j]} ({batch})", False, 8), r)
                            for j, r in enumerate(rids)
                        )
                    )
                    observed.update(zip(rids, outs, strict=True))
                    assert all(o.delivered for o in outs), outs
                    if cluster()[killed.id]["served"] > 0:
                        return
                raise AssertionError(f"the gateway never routed to the restarted worker: {cluster()}")

        asyncio.run(until_routed_to_it())

        # SIGTERM to the survivor while streams run on both: it deregisters, takes nothing new,
        # finishes its streams (or they move to the restarted worker), exits 0 and is removed.
        async def sigterm_mid_stream() -> None:
            async with httpx.AsyncClient(base_url=gateway.url, timeout=120, headers=auth) as client:
                progress: dict[str, int] = {}

                async def one(i: int) -> None:
                    rid = f"drained-{i}"
                    body = request(PROMPTS[i % len(PROMPTS)], True)
                    observed[rid] = await call(
                        client, CHAT, body, rid, on_chunk=lambda o, c: progress.__setitem__(rid, len(o.text))
                    )

                streams = asyncio.gather(*(one(i) for i in range(DRAINED)))
                while not (len(progress) == DRAINED and all(progress.values())):
                    assert not streams.done(), "the streams ended before SIGTERM"
                    await asyncio.sleep(0.01)
                assert replicas.entries[survivor.id].inflight > 0, cluster()
                survivor.terminate()
                await streams

        asyncio.run(sigterm_mid_stream())
        for i in range(DRAINED):
            got = observed[f"drained-{i}"]
            assert got.delivered and got.text == observed[f"reference-{i % len(PROMPTS)}"].text, got
        assert survivor.proc.wait(60) == 0
        wait_for(lambda: survivor.id not in replicas.entries, "the stopped worker removed", 30)
    finally:
        for w in workers:
            w.stop()
        gateway.stop()

    result = reconcile(observed, data_dir)  # raises, naming request ids
    migrated = {rid for rid in expected if result.migrations(rid)}
    assert len(migrated) == moved  # each migration is in its stream's audit record, once
    for rid in migrated:
        assert all(m["from"] == killed.id for m in result.migrations(rid)), result.migrations(rid)
