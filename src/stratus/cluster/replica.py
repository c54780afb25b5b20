"""The `Replica` protocol: one copy of a model that takes generation requests.

Every kind (an engine in this process's worker, a `stratus worker` over HTTP, a Ray actor)
looks the same to the router and to failover: it streams `Delta`s for a `GenerateRequest`
and raises `ReplicaError` when the replica itself failed (unreachable, died, timed out), so
the request may continue elsewhere. A `ValidationError` is the request's fault and is never
retried. OpenAI-compatible upstreams (vLLM, TGI, …) speak text, not token ids; they are routed
with the same router but proxied at the HTTP level (see cluster/upstream.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from stratus.engine import Delta, EngineStats, GenerateRequest, ModelConfig
    from stratus.engine.tokenizer import Tokenizer


class ReplicaError(RuntimeError):
    """The replica failed while serving a request; another replica may take it over."""


class EmbeddingsUnsupported(RuntimeError):
    """No replica of the model computes embeddings: only local replicas have `embed` (workers
    and Ray actors speak the generation protocol only)."""


@dataclass
class ReplicaLoad:
    """What a replica reports about its own queue (the router also counts what it sent)."""

    running: int = 0
    waiting: int = 0
    tokens_per_second: float = 0.0


@runtime_checkable
class Replica(Protocol):
    id: str  # unique within the gateway, stable across restarts of the same replica
    model: str  # the served model name
    kind: str  # "local" | "worker" | "ray"
    # From the checkpoint; the gateway tokenizes and checks lengths before routing.
    tokenizer: Tokenizer
    model_config: ModelConfig
    max_model_len: int

    async def start(self) -> None:
        """Load and warm up; returns when the replica can take requests."""

    def generate(self, request: GenerateRequest) -> AsyncIterator[Delta]:
        """Deltas of every choice until each finishes. Raises ValidationError for a bad request
        and ReplicaError if the replica fails. Closing the iterator early aborts the request."""

    async def probe(self) -> None:
        """An active health check; raises ReplicaError when the replica is not serving."""

    def stats(self) -> EngineStats:
        """The replica's latest engine statistics (may lag by a heartbeat)."""

    async def shutdown(self) -> None:
        """Stop it and free its resources (a no-op for replicas this gateway does not own)."""
