"""A replica that is a Ray actor: an engine in an actor process, placed by Ray on any node.

`EngineActor` is the actor: it hosts a `stratus.engine.Engine` (thread isolation: the actor is
already a process of its own) and streams deltas back with a Ray streaming generator.
`RayReplica` is the gateway's side, implementing the `Replica` protocol around the actor's
handle. Ray restarts a dead actor (`max_restarts`), on a surviving node if its resources allow;
the handle, and so the replica, stays the same across restarts. Failures seen by the caller
(actor died or restarting, node lost, timeouts) become `ReplicaError`, so the ReplicaSet moves
the request to another replica.

The checkpoint path must be readable where the actor lands (one machine, or a shared file
system mounted at the same path on every node); the gateway reads the tokenizer and config.json
from the same path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import RayError, RayTaskError

from stratus.cluster.replica import ReplicaError
from stratus.engine import Delta, EngineConfig, EngineStats, GenerateRequest, ModelConfig, ValidationError
from stratus.engine.inputs import context_window
from stratus.engine.tokenizer import Tokenizer

log = logging.getLogger("stratus.cluster")

STREAM_WINDOW = 2  # objects of one stream handed over but not yet read by the gateway
# Deltas of one stream the actor holds for a slow reader (and so the most in one object). Past
# it the pump stops reading the engine: the backlog stays in the engine's own stream of the
# request, which its max_tokens bounds (the step loop does not pause a request for a reader).
STREAM_BUFFER = 64
_END = object()  # the engine's stream ended
PLACEMENT_WARNING = 30.0  # seconds a new actor may take to be placed and load before a warning

# Ray options a replica's resource spec may set; every other key is a custom resource.
_RAY_NAMED = {"CPU": "num_cpus", "GPU": "num_gpus", "memory": "memory"}


class EngineActor:
    """Runs inside the actor process. The engine loads and warms up on the first call (the
    gateway's probe), so a restarted actor, a new process, loads again on its own."""

    def __init__(self, path: str, config: EngineConfig, isolation: str = "process"):
        from stratus.engine import Engine

        # "process": the step loop in a child process, so it does not share this process's
        # interpreter lock with the actor's event loop, which pickles every delta.
        self._engine = Engine(path, config, isolation=isolation)
        self._started: asyncio.Lock | None = None  # made on the actor's event loop
        self._ready = False

    async def _ensure_started(self) -> None:
        if self._ready:
            return
        if self._started is None:
            self._started = asyncio.Lock()
        async with self._started:
            if not self._ready:
                await self._engine.start()  # includes the warm-up
                self._ready = True

    async def generate(self, request: GenerateRequest) -> AsyncIterator[list[Delta]]:
        """Called with num_returns="streaming". Each yielded object holds every delta produced
        since the last one: an object costs ~1.7 ms to hand over here (bench/ray_replica.py),
        so when the gateway reads slower than the engine produces (the caller's window is
        full), deltas gather into one object (at most STREAM_BUFFER) rather than queue up one
        object each. Ray cancelling the task (the caller closed the stream) stops the pump,
        which closes the engine's iterator, which aborts the request."""
        await self._ensure_started()
        queue: asyncio.Queue = asyncio.Queue(maxsize=STREAM_BUFFER)
        pump = asyncio.create_task(self._pump(request, queue))
        try:
            done = False
            while not done:
                batch = [await queue.get()]
                while not queue.empty():
                    batch.append(queue.get_nowait())
                if batch[-1] is _END:
                    batch.pop()
                    done = True
                elif isinstance(batch[-1], BaseException):
                    error = batch.pop()
                    if batch:
                        yield batch
                    raise error
                if batch:
                    yield batch
        finally:
            pump.cancel()
            with contextlib.suppress(BaseException):
                await pump

    async def _pump(self, request: GenerateRequest, queue: asyncio.Queue) -> None:
        try:
            # aclosing: cancelled while waiting for room in the queue, the engine's iterator
            # sits at a yield; closing it now (not when collected) sends the engine's abort.
            async with contextlib.aclosing(self._engine.generate(request)) as deltas:
                async for delta in deltas:
                    await queue.put(delta)
        except Exception as exc:
            await queue.put(exc)
        else:
            await queue.put(_END)

    async def probe(self) -> tuple[str, EngineStats]:
        """The node this actor runs on and its engine statistics; raises if the engine died."""
        await self._ensure_started()
        if not self._engine.healthy:
            raise RuntimeError("the engine's step loop stopped")
        return ray.get_runtime_context().get_node_id(), self._engine.stats()

    async def shutdown(self) -> None:
        await self._engine.shutdown()


def actor_options(resources: Mapping[str, float], max_restarts: int) -> dict[str, Any]:
    """Ray options for one replica: `resources` like {"CPU": 1, "GPU": 0, "node_type_a": 1}."""
    options: dict[str, Any] = {
        "max_restarts": max_restarts,
        "max_task_retries": 0,  # a failed request moves to another replica, not back to this one
        # Best effort: replicas of one model go to different nodes when they can, and a
        # restarted one lands on any node that still has the resources (a hard placement
        # would leave it pending until its node came back).
        "scheduling_strategy": "SPREAD",
    }
    custom: dict[str, float] = {}
    for key, value in resources.items():
        if key in _RAY_NAMED:
            options[_RAY_NAMED[key]] = value
        else:
            custom[key] = value
    options.setdefault("num_cpus", 1)
    if custom:
        options["resources"] = custom
    return options


class RayReplica:
    """The `Replica` protocol around an `EngineActor` handle (this process must be connected to
    Ray: `ray.init(...)`)."""

    kind = "ray"

    def __init__(
        self,
        model: str,
        path: str | Path,
        config: EngineConfig | None = None,
        *,
        resources: Mapping[str, float] | None = None,
        max_restarts: int = -1,
        isolation: str = "process",
        replica_id: str | None = None,
        start_timeout: float = 300.0,
        probe_timeout: float = 10.0,
        token_timeout: float = 60.0,
    ):
        self.model = model
        self.path = Path(path)
        self.config = config or EngineConfig()
        self.id = replica_id or f"ray-{model}-{uuid.uuid4().hex[:8]}"
        self.resources = dict(resources or {"CPU": 1})
        self.max_restarts = max_restarts
        self.isolation = isolation  # the engine's step loop inside the actor (Engine's isolation)
        self.start_timeout = start_timeout
        self.probe_timeout = probe_timeout
        # The longest wait for the next delta (first one included) before the replica counts as
        # failed: a node that vanished without a word shows up as silence.
        self.token_timeout = token_timeout
        # What the gateway validates with, read here from the same checkpoint path.
        self.model_config = ModelConfig.from_dir(self.path)
        self.tokenizer = Tokenizer(self.path)
        self.max_model_len = context_window(self.model_config, self.config)
        self.node_id: str | None = None  # where the actor was last seen
        self.in_flight = 0  # generate() calls open on this replica
        self.handoffs = 0  # Ray objects received (each a batch of deltas), for bench/
        self._stats = EngineStats.empty()
        self._handle: Any = None
        self._serving = False  # answered a probe once

    async def start(self) -> None:
        if self._handle is None:
            if not ray.is_initialized():  # ray.remote would start a Ray of its own: never silently
                raise ReplicaError(f"replica {self.id}: this process is not connected to Ray")
            actor_class = ray.remote(EngineActor)
            self._handle = actor_class.options(
                name=self.id, **actor_options(self.resources, self.max_restarts)
            ).remote(str(self.path), self.config, self.isolation)
        patience = min(PLACEMENT_WARNING, self.start_timeout)
        try:
            await self._call("probe", timeout=patience)
        except ReplicaError:
            if self.start_timeout <= patience:
                raise
            # Most often no node offers the resources asked for: say so, then keep waiting.
            log.warning(
                "replica %s is not serving after %.0f s: is there a node with %s free? (`ray status`)",
                self.id,
                patience,
                self.resources,
            )
            await self._call("probe", timeout=self.start_timeout - patience)
        self._serving = True

    async def generate(self, request: GenerateRequest) -> AsyncIterator[Delta]:
        if self._handle is None:
            raise ReplicaError(f"replica {self.id} is not started")
        self.in_flight += 1
        # At most a few objects in flight per stream: the actor gathers deltas meanwhile.
        stream = self._handle.generate.options(
            num_returns="streaming", _generator_backpressure_num_objects=STREAM_WINDOW
        ).remote(request)
        remaining = request.params.n
        try:
            while remaining:
                try:
                    ref = await asyncio.wait_for(stream.__anext__(), self.token_timeout)
                    deltas: list[Delta] = await asyncio.wait_for(ref, self.token_timeout)
                except StopAsyncIteration:
                    raise ReplicaError(f"replica {self.id} ended a stream before it finished") from None
                except (RayError, TimeoutError) as exc:
                    raise self._failure(exc) from None
                self.handoffs += 1
                for delta in deltas:
                    if delta.finish_reason is not None:
                        remaining -= 1
                    yield delta
        finally:
            self.in_flight -= 1
            if remaining:  # closed early or failed: stop the work on the actor (if it is alive)
                with contextlib.suppress(Exception):
                    ray.cancel(stream)

    async def probe(self) -> None:
        await self._call("probe", timeout=self.probe_timeout)

    async def refresh(self) -> EngineStats:
        """Fresh statistics from the actor (what probe() also records)."""
        await self.probe()
        return self._stats

    def stats(self) -> EngineStats:
        return self._stats

    async def shutdown(self) -> None:
        """Stop the engine and end the actor for good (no restart)."""
        if self._handle is None:
            return
        if self._serving:  # an actor never placed or loaded has nothing to stop gracefully
            with contextlib.suppress(ReplicaError):
                await self._call("shutdown", timeout=min(self.probe_timeout, 5.0))
        with contextlib.suppress(Exception):
            ray.kill(self._handle, no_restart=True)
        self._handle = None

    async def _call(self, method: str, *args: Any, timeout: float) -> Any:
        if self._handle is None:
            raise ReplicaError(f"replica {self.id} is not started")
        try:
            result = await asyncio.wait_for(getattr(self._handle, method).remote(*args), timeout)
        except (RayError, TimeoutError) as exc:
            raise self._failure(exc) from None
        if method == "probe":
            self.node_id, self._stats = result
        return result

    def _failure(self, exc: BaseException) -> Exception:
        """The request's own fault comes back as ValidationError; anything else means this
        replica failed and the request may move on."""
        if isinstance(exc, RayTaskError):
            cause = exc.cause
            if isinstance(cause, ValidationError):
                return ValidationError(str(cause), cause.param)
            return ReplicaError(f"replica {self.id} failed: {type(cause).__name__}: {cause}")
        if isinstance(exc, TimeoutError):
            return ReplicaError(f"replica {self.id} did not answer in time")
        return ReplicaError(f"replica {self.id} is unavailable: {type(exc).__name__}")
