"""The models this gateway serves: load and warm each engine, report readiness, look them up.

Models load one after another in a worker thread (loading is synchronous and memory-heavy),
while the server already answers /health; /ready turns 200 once every model is warm.
Engines handed in ready-made (tests, benchmarks) are started but owned by the caller.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from stratus.cluster.local import LocalReplica
from stratus.cluster.replica_set import ReplicaSet
from stratus.request.errors import model_not_found, unavailable

if TYPE_CHECKING:
    from stratus.cluster.replica import Replica
    from stratus.engine import Engine, EngineConfig, EngineStats
    from stratus.engine.pooling import Pooling

log = logging.getLogger("stratus.api")

State = Literal["loading", "ready", "failed"]


@dataclass
class ServedModel:
    """A model name and the replicas that serve it: an engine of this process's (`path` set,
    loaded at start), and/or replicas that join later (workers, Ray actors)."""

    name: str
    path: Path | None
    replicas: ReplicaSet
    state: State = "loading"
    error: str | None = None
    created: int = field(default_factory=lambda: int(time.time()))
    task: str = "generate"  # or "embed": what the routes may ask of it (--task)
    pooling: Pooling | None = None  # an embed model's, from its checkpoint and --pooling (at load)

    @property
    def max_model_len(self) -> int | None:
        return self.replicas.max_model_len if self.replicas.entries else None

    @property
    def engine(self) -> Engine | None:
        """The engine of this process's replica, if it has one (tests, benchmarks)."""
        for replica in self.replicas.replicas:
            if isinstance(replica, LocalReplica):
                return replica.engine
        return None


class ModelRegistry:
    def __init__(
        self,
        paths: dict[str, Path] | None = None,
        engines: dict[str, Engine] | None = None,
        engine_config: EngineConfig | None = None,
        isolation: str = "process",
        routing: dict[str, str] | None = None,
        *,
        tasks: dict[str, str] | None = None,
        pooling: dict[str, str] | None = None,
        embed_normalize: bool | None = None,
    ):
        self.engine_config = engine_config
        self.isolation = isolation
        self.routing = routing or {}  # model -> router policy ("*": the rest); default capacity-aware
        self.tasks = tasks or {}  # model -> task ("*": the rest); default generate
        self.pooling = pooling or {}  # model -> pooling mode override ("*": the rest)
        self.embed_normalize = embed_normalize  # None: as each checkpoint says
        self.models: dict[str, ServedModel] = {}
        self._ready_engines = engines or {}  # handed in ready-made: started here, owned by the caller
        for name, path in (paths or {}).items():
            self.models[name] = self._served(name, Path(path))
        for name in self._ready_engines:
            self.models[name] = self._served(name, None)

    def _served(self, name: str, path: Path | None, **kwargs) -> ServedModel:
        task = self.tasks.get(name, self.tasks.get("*", "generate"))
        model = ServedModel(name, path, self._replica_set(name), task=task, **kwargs)
        if task == "embed" and path is None:  # replicas that join later: no checkpoint here to read
            model.pooling = self._pooling(name, None)
        return model

    def _pooling(self, name: str, checkpoint: Path | None) -> Pooling:
        """An embed model's pooling: --pooling and --embed-normalize over what the checkpoint's
        sentence-transformers files declare (engine/pooling.py)."""
        from stratus.engine.pooling import Pooling, read_pooling

        declared = read_pooling(checkpoint) if checkpoint is not None else Pooling()
        mode = self.pooling.get(name, self.pooling.get("*", declared.mode))
        normalize = declared.normalize if self.embed_normalize is None else self.embed_normalize
        return Pooling(mode, normalize)

    def _replica_set(self, name: str) -> ReplicaSet:
        return ReplicaSet(name, self.routing.get(name, self.routing.get("*", "capacity")))

    @property
    def names(self) -> list[str]:
        return list(self.models)

    def available(self, model: ServedModel) -> bool:
        return model.state == "ready" and model.replicas.healthy

    def state_of(self, model: ServedModel) -> str:
        """What /ready and /admin/cluster report: loading, ready, restarting (an engine process
        died and is being replaced), failed (failed to load, or could not be restarted) or
        unavailable (no replica can take requests right now)."""
        if model.state != "ready":
            return model.state
        if model.replicas.healthy:
            return "ready"
        if model.replicas.gave_up():
            return "failed"
        return "restarting" if model.replicas.restarting() else "unavailable"

    def given_up(self) -> list[str]:
        """Models whose every replica died for good: /health fails so a supervisor restarts us."""
        return [m.name for m in self.models.values() if m.state == "ready" and m.replicas.gave_up()]

    @property
    def ready(self) -> bool:
        return bool(self.models) and all(self.available(m) for m in self.models.values())

    @property
    def status(self) -> State:
        states = {m.state for m in self.models.values()}
        if "failed" in states or any(
            m.state == "ready" and not m.replicas.healthy for m in self.models.values()
        ):
            return "failed"
        return "ready" if self.models and states <= {"ready"} else "loading"  # none yet: waiting for replicas

    async def load_all(self) -> None:
        for model in self.models.values():
            await self._load(model)
        if self.ready:
            log.info("ready: serving %s", ", ".join(self.models))

    async def _load(self, model: ServedModel) -> None:
        started = time.perf_counter()
        engine = self._ready_engines.get(model.name)
        try:
            if engine is None:
                from stratus.engine import Engine

                log.info("loading model %s from %s", model.name, model.path)
                engine = await asyncio.to_thread(
                    Engine.from_pretrained, model.path, self.engine_config, self.isolation
                )
            replica = LocalReplica(model.name, engine, owned=model.name not in self._ready_engines)
            if model.task == "embed":  # a checkpoint whose pooling cannot be honoured fails here
                model.pooling = self._pooling(model.name, Path(replica.engine.path))
            await replica.start()  # includes warm-up
        except Exception as exc:  # reported by /ready; the server keeps answering
            model.state, model.error = "failed", f"{type(exc).__name__}: {exc}"
            log.error("model %s failed to load: %s", model.name, model.error)
            return
        model.replicas.add(replica, engine.config.max_tokens_per_second)  # a throttle is its capacity
        model.state = "ready"
        log.info(
            "model %s ready (context window %d tokens, %.1f s)",
            model.name,
            replica.max_model_len,
            time.perf_counter() - started,
        )

    # -- replicas that join and leave at run time (workers, Ray actors) -------------------------

    def add_replica(self, replica: Replica, capacity: float | None = None) -> ServedModel:
        """Serve `replica` (already started) under its model name, creating the model if new."""
        model = self.models.get(replica.model)
        if model is None:
            model = self.models[replica.model] = self._served(replica.model, None, state="ready")
        model.replicas.add(replica, capacity)
        if model.state == "loading" and model.path is None:
            model.state = "ready"
        return model

    def remove_replica(self, model: str, replica_id: str) -> Replica | None:
        served = self.models.get(model)
        return served.replicas.remove(replica_id) if served else None

    async def drain_replica(self, model: str, replica_id: str, timeout: float = 300.0) -> Replica | None:
        served = self.models.get(model)
        return await served.replicas.drain(replica_id, timeout) if served else None

    def replica_sets(self) -> dict[str, ReplicaSet]:
        return {name: m.replicas for name, m in self.models.items()}

    def get(self, name: str, visible: Callable[[str], bool] | None = None) -> ServedModel:
        """The model called `name`, or 404. `visible`: which models the caller may know of; a
        model it may not use is answered exactly as one that does not exist."""
        model = self.models.get(name)
        if model is None or (visible is not None and not visible(name)):
            raise model_not_found(name, [n for n in self.models if visible is None or visible(n)])
        return model

    def engine(
        self, name: str, retry_after: int = 2, visible: Callable[[str], bool] | None = None
    ) -> ReplicaSet:
        """The replicas of `name`, seen as one engine; or 404 (unknown) / 503 (loading, failed,
        or no replica available right now)."""
        model = self.get(name, visible)
        if model.state == "loading":
            raise unavailable(
                f"The model '{name}' is still loading; retry shortly.", retry_after, "model_loading"
            )
        if model.state == "failed":
            raise unavailable(
                f"The model '{name}' is unavailable: it failed to load (see the server log).",
                30,
                "model_failed",
            )
        if not model.replicas.healthy:
            problems = model.replicas.problems()
            if model.replicas.gave_up():
                raise unavailable(
                    f"The model '{name}' is unavailable: {'; '.join(problems)}.", 30, "model_failed"
                )
            why = f" ({'; '.join(problems)})" if problems else ""
            raise unavailable(
                f"No replica of the model '{name}' is available right now{why}; retry shortly.",
                retry_after,
                "no_replica_available",
            )
        return model.replicas

    def stats(self) -> dict[str, EngineStats | None]:
        return {
            m.name: m.replicas.stats() if m.state == "ready" and m.replicas.entries else None
            for m in self.models.values()
        }

    async def abort_all(self) -> int:
        """At the drain deadline: abort what this process's engines still run (see cli/serve.py)."""
        aborted = 0
        for model in self.models.values():
            engine = model.engine
            if engine is not None:
                aborted += await engine.abort_all()
        return aborted

    async def shutdown(self) -> None:
        for model in self.models.values():
            try:
                await model.replicas.shutdown()
            except Exception:
                log.exception("shutting down model %s failed", model.name)
