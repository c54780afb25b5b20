"""LoRA adapters in the registry: BASE:NAME served on the base's local engines, refused (409,
naming the replicas) where a replica cannot apply them (a stratus worker, a Ray actor)."""

import asyncio

import pytest

from stratus.api.registry import ModelRegistry
from stratus.cluster.worker_replica import WorkerReplica
from stratus.engine import Engine, EngineConfig
from stratus.request.errors import APIError
from tests.checkpoints import build_checkpoint, build_lora_adapter

pytestmark = pytest.mark.timeout(120)


def test_adapters_are_models_of_the_local_engines_only(tmp_path):
    base = build_checkpoint(tmp_path / "base", "llama")
    adapter = build_lora_adapter(base, tmp_path / "sql", targets=("q_proj", "v_proj"))

    async def scenario():
        engine = Engine(base, EngineConfig(kv_cache_memory_mb=4), isolation="thread")
        registry = ModelRegistry(engines={"m": engine}, loras={"m": {"sql": str(adapter)}})
        await registry.load_all()
        try:
            served = registry.models["m:sql"]
            assert (served.state, served.base, served.adapter) == ("ready", "m", "sql")
            assert registry.engine("m:sql").adapter == "sql"  # routes to m's replicas, stamped
            assert "m:sql" not in registry.stats() and list(registry.replica_sets()) == ["m"]
            with pytest.raises(APIError) as bad:
                await registry.add_adapter("m", "bad", str(base))  # a model, not an adapter
            assert bad.value.status == 400 and "adapter_config.json" in bad.value.message
            with pytest.raises(APIError) as taken:
                await registry.add_adapter("m", "s q", str(adapter))
            assert taken.value.status == 400

            worker = WorkerReplica("w1", "m", "http://127.0.0.1:9", b"secret")
            registry.add_replica(worker)  # a worker joins the base model: it has no adapters
            with pytest.raises(APIError) as joined:
                registry.engine("m:sql")
            assert joined.value.status == 409 and "w1" in joined.value.message
            with pytest.raises(APIError) as refused:
                await registry.add_adapter("m", "other", str(adapter))
            assert refused.value.status == 409 and "w1" in refused.value.message
            registry.remove_replica("m", "w1")
            assert registry.engine("m:sql").adapter == "sql"

            await registry.remove_adapter("m", "sql")
            assert "m:sql" not in registry.models and "sql" not in engine.adapters
            with pytest.raises(APIError) as gone:
                await registry.remove_adapter("m", "sql")
            assert gone.value.status == 404
        finally:
            await registry.shutdown()
            await engine.shutdown()

    asyncio.run(scenario())


def test_an_adapter_that_fails_at_start_is_a_failed_model(tmp_path):
    base = build_checkpoint(tmp_path / "base", "llama")

    async def scenario():
        engine = Engine(base, EngineConfig(kv_cache_memory_mb=4), isolation="thread")
        registry = ModelRegistry(engines={"m": engine}, loras={"m": {"gone": str(tmp_path / "nope")}})
        await registry.load_all()
        try:
            assert registry.models["m:gone"].state == "failed" and not registry.ready
            assert "not a directory" in registry.models["m:gone"].error
            with pytest.raises(APIError) as unavailable:
                registry.engine("m:gone")
            assert unavailable.value.status == 503
        finally:
            await registry.shutdown()
            await engine.shutdown()

    asyncio.run(scenario())


def test_an_adapter_whose_base_is_removed_while_it_loads_is_not_served(tmp_path):
    """Review finding: DELETE /admin/models/BASE while POST .../BASE/adapters was loading left
    BASE:NAME served on the removed model's stopped engines (503 for good, listed nowhere)."""
    base = build_checkpoint(tmp_path / "base", "llama")
    adapter = build_lora_adapter(base, tmp_path / "sql", targets=("q_proj", "v_proj"))

    async def scenario():
        registry = ModelRegistry(
            paths={"m": base}, engine_config=EngineConfig(kv_cache_memory_mb=4), isolation="thread"
        )
        await registry.load_all()
        engine = registry.models["m"].engine
        loading, go_on = asyncio.Event(), asyncio.Event()
        real_load = engine.load_adapter

        async def slow_load(name, path):
            loading.set()
            await go_on.wait()
            return await real_load(name, path)

        engine.load_adapter = slow_load
        try:
            adding = asyncio.ensure_future(registry.add_adapter("m", "sql", str(adapter)))
            await loading.wait()
            await registry.remove("m", timeout=5)  # its engine stops under the load
            go_on.set()
            with pytest.raises(APIError) as gone:
                await adding
            assert gone.value.status == 404 and "removed" in gone.value.message
            assert "m:sql" not in registry.models
        finally:
            await registry.shutdown()

    asyncio.run(scenario())
