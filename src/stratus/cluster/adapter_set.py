"""A LoRA adapter served on its base model's replicas, seen by the gateway as a model of its own.

`AdapterReplicas` is the base model's `ReplicaSet` with every request stamped with the adapter's
name (`GenerateRequest.adapter`): routing, failover and stream migration are the base's, and
each local engine applies the adapter per row (engine/lora.py). Only this gateway's own engines
(`LocalReplica`) have adapters loaded; `stratus worker` and Ray replicas do not receive them, so
a base model with such replicas refuses its adapters' requests (`non_local`) rather than send
some of them where the adapter is unknown.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from stratus.cluster.replica import EmbeddingsUnsupported

if TYPE_CHECKING:
    from stratus.cluster.replica_set import OnEvent, ReplicaSet
    from stratus.engine.types import Delta, GenerateRequest


class AdapterReplicas:
    def __init__(self, base: ReplicaSet, adapter: str):
        self.base = base
        self.adapter = adapter

    def __getattr__(self, name: str) -> Any:  # everything else is the base model's
        return getattr(self.base, name)

    def non_local(self) -> list[str]:
        """Replicas of the base model that cannot apply the adapter (workers, Ray actors)."""
        return [r.id for r in self.base.replicas if r.kind != "local"]

    def generate(
        self, request: GenerateRequest, on_event: OnEvent | None = None, affinity: str | None = None
    ) -> AsyncIterator[Delta]:
        return self.base.generate(dataclasses.replace(request, adapter=self.adapter), on_event, affinity)

    async def embed(self, *args: Any, **kwargs: Any) -> Any:
        raise EmbeddingsUnsupported("a LoRA adapter generates text; it computes no embeddings")

    async def start(self) -> None:
        """The base model's replicas are started with it."""

    async def shutdown(self) -> None:
        """The base model owns its replicas; the adapter goes with them."""
