"""The models this gateway serves: load and warm each engine, report readiness, look them up.

Models load one after another in a worker thread (loading is synchronous and memory-heavy),
while the server already answers /health; /ready turns 200 once every model is warm.
Engines handed in ready-made (tests, benchmarks) are started but owned by the caller.

A LoRA adapter is a model of its own, named `BASE:NAME` (grants, limits, usage and audit see that
name), served on its base model's local engines (`cluster/adapter_set.py`): loaded at start
(`--lora`) or at run time (`add_adapter`, POST /admin/models/{base}/adapters).

At run time (`/admin/models`, api/routes/models_admin.py) `add` loads another local model in the
background (a Hugging Face name is downloaded first: state "downloading" with its progress) and
`remove` unloads one: it stops being found at once (404), the requests it is running finish
(until the drain timeout; then they fail cleanly), and its engine is shut down. Loads, at start
and at run time, take turns, so that each sizes its KV pool from the memory the others left.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, cast

from stratus.cluster.adapter_set import AdapterReplicas
from stratus.cluster.local import LocalReplica
from stratus.cluster.replica_set import ReplicaSet
from stratus.engine.types import ValidationError
from stratus.names import ADAPTER_NAME_RE, adapter_model_name
from stratus.request.errors import APIError, model_not_found, unavailable

if TYPE_CHECKING:
    from stratus.cluster.replica import Replica
    from stratus.engine import Engine, EngineConfig, EngineStats
    from stratus.engine.pooling import Pooling

log = logging.getLogger("stratus.api")

State = Literal["downloading", "loading", "ready", "failed"]


class ModelConflict(Exception):
    """A model cannot be added or removed as asked; the message says why (a 409)."""


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
    base: str | None = None  # a LoRA adapter's base model (its name is BASE:ADAPTER)
    adapter_path: str | None = None  # a LoRA adapter's directory
    source: str | None = None  # what it was asked to serve: a path or a Hugging Face name
    progress: float | None = None  # while downloading: the fraction fetched, when known
    added_by: str | None = None  # who added it at run time (None: at start, or a replica joined)
    runtime: bool = False  # added at run time (`add`): counts for /ready only once ready

    @property
    def adapter(self) -> str | None:
        """A LoRA adapter's own name (the part after BASE:)."""
        return self.name[len(self.base) + 1 :] if self.base is not None else None

    @property
    def quantization(self) -> str | None:
        """How its weights are stored: a `stratus compress` method, or None (plain weights)."""
        for replica in self.replicas.replicas:
            config = getattr(replica, "model_config", None)
            quant = getattr(config, "quantization", None)
            if isinstance(quant, dict):
                return str(quant.get("method") or quant.get("quant_method") or "quantized")
            return str(quant) if quant else None
        return None

    @property
    def managed(self) -> bool:
        """Loaded by this gateway's own engine (at start or by `add`), so `remove` can unload it."""
        return self.path is not None or self.source is not None

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


def _removed_meanwhile(base: str) -> APIError:
    return APIError(404, f"The model '{base}' was removed while the adapter loaded.", code="model_not_found")


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
        loras: dict[str, dict[str, str]] | None = None,
        parallel: dict[str, tuple[int, int]] | None = None,
    ):
        self.engine_config = engine_config
        self.loras = loras or {}  # base model -> {adapter: directory}, loaded after the models (--lora)
        self.parallel = parallel or {}  # model -> (tensor, pipeline) parallel ranks of its replica
        self.isolation = isolation
        self.routing = routing or {}  # model -> router policy ("*": the rest); default capacity-aware
        self.tasks = tasks or {}  # model -> task ("*": the rest); default generate
        self.pooling = pooling or {}  # model -> pooling mode override ("*": the rest)
        self.embed_normalize = embed_normalize  # None: as each checkpoint says
        self.models: dict[str, ServedModel] = {}
        self._load_turn = asyncio.Lock()  # one load at a time (memory.py sizes from what is left)
        self._tasks: set[asyncio.Task] = set()  # loads started by `add`
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

    def _engine_config(self, name: str) -> EngineConfig | None:
        """The engine settings, with this model's own parallel layout (--model-parallel)."""
        if name not in self.parallel:
            return self.engine_config
        from stratus.engine import EngineConfig

        tp, pp = self.parallel[name]
        base = self.engine_config or EngineConfig()
        return dataclasses.replace(base, tensor_parallel_size=tp, pipeline_parallel_size=pp)

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
        counted = self._counted()
        return bool(counted) and all(self.available(m) for m in counted)

    @property
    def status(self) -> State:
        counted = self._counted()
        states = {m.state for m in counted}
        if "failed" in states or any(m.state == "ready" and not m.replicas.healthy for m in counted):
            return "failed"
        return "ready" if counted and states <= {"ready"} else "loading"  # none yet: waiting for replicas

    def _counted(self) -> list[ServedModel]:
        """The models /ready answers for: a model added at run time counts once it is ready, so
        that adding one (or failing to) does not take a serving gateway out of its load balancer;
        /admin/models reports its progress."""
        return [m for m in self.models.values() if not m.runtime or m.state == "ready"]

    async def load_all(self) -> None:
        for model in list(self.models.values()):
            await self._load(model)
        for base, adapters in self.loras.items():
            for name, path in adapters.items():
                try:
                    await self.add_adapter(base, name, path)
                except APIError as exc:  # reported by /ready as a failed model
                    full = adapter_model_name(base, name)
                    self.models[full] = ServedModel(
                        full,
                        None,
                        self._replica_set(full),
                        "failed",
                        exc.message,
                        base=base,
                        adapter_path=path,
                    )
                    log.error("LoRA adapter %s failed to load: %s", full, exc.message)
        if self.ready:
            log.info("ready: serving %s", ", ".join(self.models))

    async def _load(self, model: ServedModel) -> None:
        async with self._load_turn:
            await self._load_now(model)

    async def _load_now(self, model: ServedModel) -> None:
        started = time.perf_counter()
        engine = self._ready_engines.get(model.name)
        try:
            if engine is None:
                from stratus.engine import Engine

                log.info("loading model %s from %s", model.name, model.path)
                engine = await asyncio.to_thread(
                    Engine.from_pretrained, model.path, self._engine_config(model.name), self.isolation
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

    # -- models added and removed at run time (/admin/models) -----------------------------------

    def add(
        self,
        name: str,
        source: str,
        resolve: Callable[[str, Callable[[float], None]], Path],
        task: str | None = None,
        added_by: str | None = None,
        download: bool = False,
        parallel: tuple[int, int] | None = None,
    ) -> ServedModel:
        """Start serving `source` as `name`: returns at once with the model "downloading" (a
        `download`: a Hugging Face name) or "loading"; `resolve(source, progress)`, in a thread,
        turns it into a local path (removed while downloading, it is not loaded)."""
        if name in self.models:
            raise ModelConflict(f"A model named '{name}' is already served here; remove it first.")
        if task is not None:
            self.tasks[name] = task
        if parallel is not None:  # (tensor, pipeline) parallel ranks of its replica
            self.parallel[name] = parallel
        model = self._served(name, None, state="downloading" if download else "loading")
        model.source, model.added_by, model.runtime = source, added_by, True
        self.models[name] = model
        job = asyncio.get_running_loop().create_task(self._add(model, resolve), name=f"stratus-add-{name}")
        self._tasks.add(job)
        job.add_done_callback(self._tasks.discard)
        return model

    async def _add(self, model: ServedModel, resolve: Callable[[str, Callable[[float], None]], Path]) -> None:
        assert model.source is not None
        loop = asyncio.get_running_loop()

        def progress(fraction: float) -> None:  # from the download's thread
            loop.call_soon_threadsafe(_set_progress, model, fraction)

        try:
            model.path = await asyncio.to_thread(resolve, model.source, progress)
        except Exception as exc:
            model.state, model.error, model.progress = "failed", f"{type(exc).__name__}: {exc}", None
            log.error("model %s: %s", model.name, model.error)
            return
        model.progress = None
        if self.models.get(model.name) is not model:  # removed while downloading
            return
        model.state = "loading"
        if model.task == "embed":
            model.pooling = None  # read from the checkpoint at load
        await self._load(model)
        if self.models.get(model.name) is not model and model.state == "ready":  # removed meanwhile
            await model.replicas.shutdown()
        elif model.state == "ready":
            log.info("model %s added (%s)", model.name, model.source)

    async def remove(self, name: str, timeout: float) -> int:
        """Stop serving `name`: unknown to new requests at once; those it is running finish
        within `timeout` seconds (then its engine shuts down and they fail). Returns how many
        requests were still running when it stopped being found."""
        model = self.models.get(name)
        if model is None:
            raise KeyError(name)
        if model.base is not None:
            raise ModelConflict(
                f"'{name}' is a LoRA adapter of '{model.base}': remove it with "
                f"DELETE /admin/models/{model.base}/adapters/{model.adapter}."
            )
        if not model.managed:
            raise ModelConflict(
                f"The model '{name}' is served by replicas that joined this gateway (stratus worker "
                "or Ray actors), not loaded here: stop those workers, or scale its Ray replicas."
            )
        if model.state == "loading":  # an engine being built cannot be interrupted
            raise ModelConflict(f"The model '{name}' is still loading; remove it once it is ready or failed.")
        del self.models[name]  # from here on: 404 to new requests
        for adapter in self.adapters_of(name):  # served on its engines, which are going
            del self.models[adapter.name]
        running = sum(e.inflight for e in model.replicas.entries.values())
        for replica_id in list(model.replicas.entries):
            replica = await model.replicas.drain(replica_id, timeout)
            if replica is not None:
                try:
                    await replica.shutdown()
                except Exception:
                    log.exception("shutting down replica %s of %s failed", replica_id, name)
        await model.replicas.shutdown()  # its prober
        self.tasks.pop(name, None)
        log.info("model %s removed (%d requests were running)", name, running)
        return running

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
        return {name: m.replicas for name, m in self.models.items() if m.base is None}

    # -- LoRA adapters ----------------------------------------------------------------------------

    async def add_adapter(self, base: str, name: str, path: str) -> tuple[ServedModel, bool]:
        """Serve the PEFT adapter in `path` as the model BASE:NAME on every local engine of
        `base` (replacing an adapter of that name); returns it and whether one was replaced.
        Raises APIError: 404 no such base, 400 a bad name or an adapter that does not fit, 409
        a base that cannot take adapters (embeddings, replicas that are not local), 503 loading."""
        served = self.models.get(base)
        if served is None or served.base is not None:
            raise APIError(
                404, f"No model '{base}' is served here to add an adapter to.", code="model_not_found"
            )
        if not ADAPTER_NAME_RE.match(name):
            raise APIError(
                400,
                f"The adapter name {name!r} must start with a letter or digit and use at most 64 "
                "letters, digits and . _ -",
                param="name",
            )
        full = adapter_model_name(base, name)
        existing = self.models.get(full)
        if existing is not None and existing.base is None:
            raise APIError(409, f"'{full}' is already the name of a model served here.", param="name")
        if served.task != "generate":
            raise APIError(
                409, f"The model '{base}' is served for embeddings; adapters apply to text generation."
            )
        if served.state != "ready":
            raise unavailable(f"The model '{base}' is {served.state}; add adapters once it is ready.", 5)
        local, others = self._adapter_replicas(served)
        if others or not local:
            raise APIError(409, _not_local(base, others), code="adapter_not_servable")
        loaded: list[LocalReplica] = []
        for replica in local:
            try:
                await replica.engine.load_adapter(name, path)
            except ValidationError as exc:
                for done in loaded:  # all or nothing (an adapter replaced stays replaced)
                    if existing is None:
                        await done.engine.unload_adapter(name)
                raise APIError(
                    400, f"The adapter cannot be served on '{base}': {exc}", param="path"
                ) from None
            except Exception:
                if self.models.get(base) is not served:  # its engine stopped: not a server error
                    raise _removed_meanwhile(base) from None
                raise
            loaded.append(replica)
        if self.models.get(base) is not served:  # removed while the adapter loaded: engines gone
            raise _removed_meanwhile(base)
        view = cast(ReplicaSet, AdapterReplicas(served.replicas, name))  # the base's, stamped
        self.models[full] = ServedModel(full, None, view, state="ready", base=base, adapter_path=path)
        log.info("LoRA adapter %s served from %s", full, path)
        return self.models[full], existing is not None and existing.state == "ready"

    async def remove_adapter(self, base: str, name: str) -> None:
        """Stop serving BASE:NAME (requests running with it finish); 404 when it is not served."""
        full = adapter_model_name(base, name)
        adapter = self.models.get(full)
        if adapter is None or adapter.base != base:
            raise APIError(404, f"No adapter '{name}' is served on '{base}'.", code="model_not_found")
        del self.models[full]
        base_model = self.models.get(base)
        if base_model is not None:
            for replica in self._adapter_replicas(base_model)[0]:
                await replica.engine.unload_adapter(name)
        log.info("LoRA adapter %s removed", full)

    def adapters_of(self, base: str) -> list[ServedModel]:
        return [m for m in self.models.values() if m.base == base]

    @staticmethod
    def _adapter_replicas(served: ServedModel) -> tuple[list[LocalReplica], list[str]]:
        local = [r for r in served.replicas.replicas if isinstance(r, LocalReplica)]
        return local, [r.id for r in served.replicas.replicas if not isinstance(r, LocalReplica)]

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
        if model.base is not None and model.state == "ready":
            others = self._adapter_replicas(self.models[model.base])[1]
            if others:  # a worker or a Ray actor joined the base model: it has no adapters
                raise APIError(409, _not_local(model.base, others), code="adapter_not_servable")
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
            if m.base is None  # an adapter's engine is its base model's
        }

    async def abort_all(self) -> int:
        """At the drain deadline: abort what this process's engines still run (see cli/serve.py)."""
        aborted = 0
        for model in self.models.values():
            engine = model.engine if model.base is None else None
            if engine is not None:
                aborted += await engine.abort_all()
        return aborted

    async def shutdown(self) -> None:
        for job in list(self._tasks):
            job.cancel()
        for model in self.models.values():
            if model.base is not None:  # its base model's replicas
                continue
            try:
                await model.replicas.shutdown()
            except Exception:
                log.exception("shutting down model %s failed", model.name)


def _not_local(base: str, others: list[str]) -> str:
    where = f"; '{base}' has replicas that are not ({', '.join(others)})" if others else ""
    return (
        f"LoRA adapters are served by this gateway's own engines only (not by stratus worker or Ray "
        f"replicas){where}. Serve '{base}' from this gateway (--model) to use adapters with it."
    )


def _set_progress(model: ServedModel, fraction: float) -> None:
    if model.state == "downloading":
        model.progress = max(0.0, min(1.0, fraction))
