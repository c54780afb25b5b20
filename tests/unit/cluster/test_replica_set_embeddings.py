"""ReplicaSet.embed: a local replica computes embeddings; one that fails is retried on another;
a model whose replicas cannot embed (workers, Ray actors) says so (EmbeddingsUnsupported)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from stratus.cluster.local import LocalReplica
from stratus.cluster.replica import EmbeddingsUnsupported, ReplicaError
from stratus.cluster.replica_set import ReplicaSet
from stratus.engine import Engine, EngineConfig
from stratus.engine.pooling import Pooling
from tests.checkpoints import build_checkpoint

pytestmark = pytest.mark.timeout(180)

PROMPTS = [[0, 5, 9, 42], [0, 7], [0, 100, 101, 102, 103, 104]]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return build_checkpoint(tmp_path_factory.mktemp("embed-replicas"), "llama")


def engine(path) -> Engine:
    return Engine(path, EngineConfig(kv_cache_memory_mb=8), isolation="thread")


class FailsEmbeddings(LocalReplica):
    async def embed(self, prompts, pooling):
        self.tried = True
        raise ReplicaError(f"replica {self.id}: injected failure")


class GenerationOnly:
    """What a worker or Ray replica looks like to the set: no `embed`."""

    kind = "worker"

    def __init__(self, model):
        self.id, self.model = f"{model}/worker", model

    async def probe(self):
        pass


def test_a_failed_replica_is_retried_on_another(checkpoint):
    async def main():
        good, bad = engine(checkpoint), engine(checkpoint)
        replicas = ReplicaSet("m", "round_robin")
        failing = FailsEmbeddings("m", bad, "m/bad")
        for replica in (failing, LocalReplica("m", good, "m/good")):
            await replica.start()
            replicas.add(replica)
        reference = good.core.embed(PROMPTS, Pooling("mean", True)).numpy()
        events = []
        try:
            for _ in range(2):  # round robin: one of the two requests goes to the bad one first
                got = await replicas.embed(PROMPTS, Pooling("mean", True), events.append)
                assert np.allclose(got, reference, atol=1e-6)
                assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
        finally:
            await replicas.shutdown()
        assert failing.tried and events == [{"event": "retry", "from": "m/bad", "delivered_tokens": 0}]

    asyncio.run(main())


def test_replicas_that_cannot_embed_are_named():
    async def main():
        replicas = ReplicaSet("m")
        replicas.add(GenerationOnly("m"))
        try:
            with pytest.raises(EmbeddingsUnsupported, match="only by worker replicas"):
                await replicas.embed(PROMPTS, Pooling())
        finally:
            await replicas.shutdown()

    asyncio.run(main())


def test_a_stopped_engine_is_a_replica_error(checkpoint):
    async def main():
        replica = LocalReplica("m", engine(checkpoint))
        await replica.start()
        await replica.shutdown()
        with pytest.raises(ReplicaError):
            await replica.embed(PROMPTS, Pooling())

    asyncio.run(main())
