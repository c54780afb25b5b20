"""RayCluster's job without Ray: keep N replicas of a model registered, scale at run time
(down drains first), autoscale on queue depth with a cooldown; and the parsing of the Ray
settings. The replicas here are real engines in this process (LocalReplica over the demo
model), handed in through RayCluster's factory; Ray actors themselves are tested in
tests/integration/test_cluster_ray.py."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import pytest

from stratus.api.registry import ModelRegistry
from stratus.cluster.local import LocalReplica
from stratus.cluster.ray_cluster import Autoscale, RayCluster, ScaleError, desired_replicas
from stratus.cluster.ray_config import RayModelSpec, build_specs, parse_counts, parse_resources
from stratus.config import ConfigError, load_settings
from stratus.engine import Engine, EngineConfig, GenerateRequest, SamplingParams

pytestmark = pytest.mark.timeout(180)

DEMO = Path(__file__).resolve().parents[3] / "models" / "demo"


def spec(replicas=1, low=None, high=None) -> RayModelSpec:
    return RayModelSpec("demo", DEMO, replicas, min_replicas=low, max_replicas=high)


@pytest.mark.parametrize(
    ("current", "depth", "expected"),
    [
        (1, 0, 1),  # idle at the minimum: stays
        (1, 2, 1),  # at the target: stays
        (1, 3, 2),  # over it: enough replicas for `target` each
        (1, 9, 4),  # ... at once, but never past max_replicas
        (1, 100, 4),
        (3, 5, 3),  # 5/3 per replica: between half the target and the target, stays
        (3, 2, 2),  # well under: one fewer
        (3, 0, 2),  # idle: one at a time, not straight to the minimum
        (0, 0, 1),  # below the minimum (a failed start): back up to it
    ],
)
def test_desired_replicas(current, depth, expected):
    assert desired_replicas(current, depth, spec(current, 1, 4), Autoscale(target=2.0)) == expected


def test_parse_counts_and_resources():
    assert parse_counts("demo=2, b=1", ["demo", "b"], "replicas") == {"demo": 2, "b": 1}
    assert parse_counts("3", ["demo", "b"], "replicas") == {"demo": 3, "b": 3}
    for bad in ("demo", "demo=x", "other=1", "demo=-1"):
        with pytest.raises(ValueError, match="replicas"):
            parse_counts(bad, ["demo"], "replicas")
    assert parse_resources('demo={"CPU": 2, "node_type_a": 1}; b={"GPU": 1}', ["demo", "b"]) == {
        "demo": {"CPU": 2.0, "node_type_a": 1.0},
        "b": {"GPU": 1.0},
    }
    for bad in ('demo={"CPU": -1}', "demo={CPU: 1}", 'demo=["CPU"]', 'demo={"CPU": true}', 'x={"CPU": 1}'):
        with pytest.raises(ValueError, match="replica_resources"):
            parse_resources(bad, ["demo"])


def test_build_specs():
    specs = build_specs({"demo": DEMO, "b": DEMO}, "demo=2", 'b={"CPU": 4}', "b=1", "b=3")
    assert (specs["demo"].replicas, specs["demo"].resources, specs["demo"].autoscaled) == (
        2,
        {"CPU": 1.0},
        False,
    )
    assert (specs["b"].replicas, specs["b"].resources, specs["b"].autoscaled) == (1, {"CPU": 4.0}, True)
    with pytest.raises(ValueError, match="outside"):
        build_specs({"demo": DEMO}, "demo=5", None, "1", "3")
    with pytest.raises(ValueError, match="both"):
        build_specs({"demo": DEMO}, None, None, "1", None)


def test_ray_settings_are_checked_at_load():
    ok = load_settings({"ray_address": "10.0.0.5:6379", "replicas": "2"}, env={})
    assert ok.ray_address == "10.0.0.5:6379"
    env = {"STRATUS_RAY_ADDRESS": "auto", "STRATUS_REPLICAS": "demo=2"}
    assert load_settings({}, env=env).replicas == "demo=2"
    for cli, message in [
        ({"replicas": "2"}, "need ray_address"),
        ({"ray_address": "http://x"}, "ray_address must be"),
        ({"ray_address": "ray://head:10001"}, "Ray Client .* cannot stream"),
        ({"ray_address": "auto", "replicas": "nope=1"}, "no model named"),
        ({"ray_address": "auto", "autoscale_target": 0.0}, "autoscale_target"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_settings(cli, env={})


def test_actor_options():
    pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[ray]'")
    from stratus.cluster.ray_replica import actor_options

    options = actor_options({"CPU": 2, "GPU": 1, "memory": 1e9, "node_type_a": 1}, max_restarts=-1)
    assert options["num_cpus"] == 2 and options["num_gpus"] == 1 and options["memory"] == 1e9
    assert options["resources"] == {"node_type_a": 1}
    assert options["max_restarts"] == -1 and options["max_task_retries"] == 0
    assert options["scheduling_strategy"] == "SPREAD"
    assert actor_options({}, 3)["num_cpus"] == 1


# -- scaling with real replicas ---------------------------------------------------------------


class CountingReplica(LocalReplica):
    """A local replica that counts its open streams, as RayReplica does (`in_flight`): what
    RayCluster reads to remove idle replicas first."""

    in_flight = 0

    async def generate(self, request):
        self.in_flight += 1
        try:
            async for delta in super().generate(request):
                yield delta
        finally:
            self.in_flight -= 1


def local_cluster(
    model_spec: RayModelSpec,
    policy: Autoscale,
    config: EngineConfig | None = None,
    drain_timeout: float = 30.0,
) -> tuple[RayCluster, ModelRegistry]:
    registry = ModelRegistry()
    numbers = itertools.count()
    config = config or EngineConfig(kv_cache_memory_mb=16, num_threads=1)

    def factory(s: RayModelSpec) -> CountingReplica:
        engine = Engine(s.path, config, isolation="thread")
        return CountingReplica(s.name, engine, replica_id=f"{s.name}/{next(numbers)}")

    cluster = RayCluster(
        registry,
        {model_spec.name: model_spec},
        autoscale=policy,
        factory=factory,
        drain_timeout=drain_timeout,
    )
    return cluster, registry


def test_scale_up_and_down_keeps_the_registry_in_step():
    asyncio.run(_scale_up_and_down())


async def _scale_up_and_down() -> None:
    cluster, registry = local_cluster(spec(1), Autoscale())
    with pytest.raises(ScaleError) as early:  # before the initial replicas are placed
        await cluster.scale("demo", 2)
    assert early.value.status == 409 and "demo" not in registry.models
    await cluster.start()
    try:
        replicas = registry.models["demo"].replicas
        assert list(replicas.entries) == ["demo/0"]
        result = await cluster.scale("demo", 3)
        assert result["replicas"] == 3 and result["errors"] == []
        assert sorted(replicas.entries) == ["demo/0", "demo/1", "demo/2"]

        # a stream running while the count goes down finishes: its replica drains first
        request = GenerateRequest(prompt="Mr. Darcy", params=SamplingParams(max_tokens=40, temperature=0))
        stream = replicas.generate(request)
        first = await anext(stream)
        busy = next(rid for rid, e in replicas.entries.items() if e.inflight)
        down = asyncio.create_task(cluster.scale("demo", 1))
        rest = [d async for d in stream]
        assert (rest or [first])[-1].finish_reason is not None
        assert (await down)["replicas"] == 1
        # the idle ones went first; the busy one was kept
        assert list(replicas.entries) == [busy]

        for bad, status in [(("demo", -1), 400), (("demo", True), 400), (("nope", 1), 404)]:
            with pytest.raises(ScaleError) as info:
                await cluster.scale(*bad)
            assert info.value.status == status
        assert len(replicas.entries) == 1
    finally:
        await cluster.shutdown()
    assert not registry.models["demo"].replicas.entries


def test_autoscaler_follows_queue_depth_with_a_cooldown():
    asyncio.run(_autoscale())


async def _autoscale() -> None:
    cluster, registry = local_cluster(spec(1, 1, 3), Autoscale(target=2.0, interval=3600, cooldown=0))
    await cluster.start()
    replicas = registry.models["demo"].replicas
    try:
        with pytest.raises(ScaleError, match="between 1 and 3"):
            await cluster.scale("demo", 4)  # an autoscaled model stays within its bounds
        params = SamplingParams(max_tokens=900, temperature=0, ignore_eos=True)

        async def drain(i: int) -> None:
            async for _ in replicas.generate(GenerateRequest(prompt=f"Chapter {i}.", params=params)):
                pass

        load = [asyncio.create_task(drain(i)) for i in range(8)]
        for _ in range(300):  # wait until the engine has taken all eight in
            if (await cluster.depth("demo")) >= 8:
                break
            await asyncio.sleep(0.05)
        await cluster.autoscale_once()  # depth 8, target 2 per replica: 4 wanted, capped at 3
        assert len(replicas.entries) == 3

        cluster.policy.cooldown = 3600  # right after a change, nothing moves however low the load
        for task in load:
            task.cancel()
        await asyncio.gather(*load, return_exceptions=True)
        for _ in range(300):
            if (await cluster.depth("demo")) == 0:
                break
            await asyncio.sleep(0.05)
        await cluster.autoscale_once()
        assert len(replicas.entries) == 3

        cluster.policy.cooldown = 0  # idle: down one at a time, to the minimum and no further
        for expected in (2, 1, 1):
            await cluster.autoscale_once()
            assert len(replicas.entries) == expected
        assert [e["reason"] for e in cluster.events] == ["autoscale"] * 3
    finally:
        await cluster.shutdown()


def test_scale_down_drains_within_the_clusters_own_timeout():
    asyncio.run(_drain_bounded())


async def _drain_bounded() -> None:
    # A throttled engine: the request below would run for minutes; the drain gives up after
    # drain_timeout (not the registry's default of 300 s) and the replica goes anyway.
    throttled = EngineConfig(kv_cache_memory_mb=16, num_threads=1, max_tokens_per_second=5)
    cluster, registry = local_cluster(spec(1), Autoscale(), config=throttled, drain_timeout=0.5)
    await cluster.start()
    replicas = registry.models["demo"].replicas
    params = SamplingParams(max_tokens=900, temperature=0, ignore_eos=True)
    stream = replicas.generate(GenerateRequest(prompt="Chapter 1.", params=params))
    try:
        await anext(stream)
        result = await asyncio.wait_for(cluster.scale("demo", 0), 60)
        assert result["replicas"] == 0 and not replicas.entries
    finally:
        await stream.aclose()
        await cluster.shutdown()


def test_a_background_scale_that_fails_is_logged(caplog):
    from stratus.api.routes.cluster_admin import _background, in_background

    async def failing() -> None:
        await asyncio.sleep(0)
        raise RuntimeError("no node has node_type_c")

    async def run() -> None:
        task = in_background(failing(), "scaling demo to 2")
        assert task in _background  # held until done: the loop keeps only a weak reference
        await asyncio.gather(task, return_exceptions=True)
        await asyncio.sleep(0)  # done callbacks run on the next turn of the loop
        assert task not in _background

    with caplog.at_level("ERROR", logger="stratus.cluster"):
        asyncio.run(run())
    assert "scaling demo to 2 failed: RuntimeError: no node has node_type_c" in caplog.text


def test_ray_client_addresses_are_refused_with_the_reason():
    from stratus.cluster.ray_connect import connect

    # before any connection attempt (nothing listens there): Ray Client cannot stream
    with pytest.raises(ConnectionError, match=r"Ray Client \(ray://\) cannot serve replicas.*auto"):
        connect("ray://127.0.0.1:1")
