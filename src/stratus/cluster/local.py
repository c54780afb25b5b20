"""A replica on this machine: an `Engine` whose step loop runs in a worker process (or thread)."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

from stratus.cluster.checkpoint_files import checkpoint_digest, read_checkpoint_files
from stratus.cluster.replica import ReplicaError
from stratus.engine import EngineError

if TYPE_CHECKING:
    import numpy as np

    from stratus.engine import Delta, Engine, EngineStats, GenerateRequest
    from stratus.engine.pooling import Pooling


class LocalReplica:
    kind = "local"

    def __init__(self, model: str, engine: Engine, replica_id: str | None = None, owned: bool = True):
        self.id = replica_id or f"{model}/local"
        self.model = model
        self.engine = engine
        self.owned = owned  # shut the engine down with the replica
        self.tokenizer = engine.tokenizer
        self.model_config = engine.model_config
        self.max_model_len = engine.max_model_len

    @functools.cached_property
    def checkpoint_digest(self) -> str:
        """Of its config and tokenizer files (cluster/checkpoint_files.py): other replicas of the
        model must have the same, so that a stream moving between them stays one model's answer."""
        path = getattr(self.engine, "path", None)
        return checkpoint_digest(read_checkpoint_files(Path(path))) if path is not None else ""

    async def start(self) -> None:
        await self.engine.start()
        self.max_model_len = self.engine.max_model_len  # an engine process knows its pool once started

    @property
    def layout(self) -> dict | None:
        """Its engine's split over processes (TP x PP) and per-rank memory, for /admin/cluster."""
        return getattr(self.engine, "layout", None)

    @property
    def problem(self) -> str | None:
        """Why the replica cannot serve right now (its engine is restarting, or gave up)."""
        problem = getattr(self.engine, "problem", None)
        return problem or (None if self.engine.healthy else "its engine is not running")

    @property
    def restarting(self) -> bool:
        """Its engine process died and is being replaced."""
        return getattr(self.engine, "state", None) == "restarting"

    @property
    def gave_up(self) -> bool:
        """The engine died and could not be restarted: only a restart of the server helps."""
        return getattr(self.engine, "state", None) == "failed"

    async def generate(self, request: GenerateRequest) -> AsyncIterator[Delta]:
        if not self.engine.healthy:
            raise ReplicaError(f"replica {self.id}: {self.problem}")
        try:
            async for delta in self.engine.generate(request):
                yield delta
        except EngineError as exc:
            raise ReplicaError(f"replica {self.id}: {exc}") from exc

    async def embed(self, prompts: list[list[int]], pooling: Pooling) -> np.ndarray:
        """One vector per prompt (the engine's embedding pass); ValidationError for bad input,
        ReplicaError when the engine is not serving."""
        if not self.engine.healthy:
            raise ReplicaError(f"replica {self.id}: {self.problem}")
        try:
            return await self.engine.embed(prompts, pooling)
        except EngineError as exc:
            raise ReplicaError(f"replica {self.id}: {exc}") from exc

    async def probe(self) -> None:
        if not self.engine.healthy:
            raise ReplicaError(f"replica {self.id}: {self.problem}")

    def stats(self) -> EngineStats:
        return self.engine.stats()

    async def shutdown(self) -> None:
        if self.owned:
            await self.engine.shutdown()
