"""Keep N Ray actor replicas of each model alive and registered with the gateway.

    cluster = RayCluster(registry, {"demo": RayModelSpec("demo", Path("models/demo"), replicas=2)})
    await cluster.start()                # places the actors, adds each to the registry
    await cluster.scale("demo", 4)       # two more; scaling down drains, then kills
    await cluster.shutdown()

Ray restarts an actor that died (its node lost, its process killed) on any node that still
has the resources it asks for; the replica object and its registration stay the same, and the
ReplicaSet's breaker keeps traffic off it until its probes pass again. What this module adds is
the number: `scale()` at run time (the admin endpoint `POST /admin/cluster/scale`) and, for a
model with `max_replicas > min_replicas`, an autoscaler on the queue depth per replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from stratus.cluster.aio import maybe_await
from stratus.cluster.ray_config import MAX_REPLICAS, RayModelSpec, build_specs
from stratus.cluster.ray_connect import connect_within
from stratus.engine import EngineConfig

log = logging.getLogger("stratus.cluster")


class ScaleError(ValueError):
    """A scale request this cluster refuses (unknown model, count out of range); changes nothing."""

    def __init__(self, message: str, param: str | None = None, status: int = 400):
        super().__init__(message)
        self.param = param
        self.status = status


class ReplicaRegistry(Protocol):
    """The gateway's side (api/registry.py: ModelRegistry); each call may be sync or async."""

    def add_replica(self, replica: Any) -> Any: ...
    def drain_replica(self, model: str, replica_id: str, timeout: float) -> Any: ...
    def remove_replica(self, model: str, replica_id: str) -> Any: ...


@dataclass
class Autoscale:
    """Scale a model between min_replicas and max_replicas on its queue depth per replica
    (running + waiting requests over its replicas): up when above `target`, so each replica
    keeps about `target` requests, down when the count at `target` needs fewer replicas."""

    target: float = 4.0  # requests per replica (running + waiting) the autoscaler aims for
    interval: float = 5.0  # seconds between looks
    cooldown: float = 30.0  # seconds after any change before the next one
    scale_down_below: float = 0.5  # and only when depth per replica is under target * this


def desired_replicas(current: int, depth: float, spec: RayModelSpec, policy: Autoscale) -> int:
    """The autoscaler's decision for one model. `depth` is running + waiting requests summed
    over its replicas. Grows to ceil(depth / target) at once; shrinks one replica at a time and
    only when the load per replica is well under the target (no flapping around it)."""
    assert spec.min_replicas is not None and spec.max_replicas is not None
    low, high = spec.min_replicas, spec.max_replicas
    wanted = current
    if current == 0 or depth / current > policy.target:
        wanted = max(current, math.ceil(depth / policy.target))
    elif depth / current < policy.target * policy.scale_down_below:
        wanted = current - 1
    return max(low, min(high, wanted))


ReplicaFactory = Callable[[RayModelSpec], Any]  # builds one (not yet started) RayReplica


class RaySettings(Protocol):
    """What `RayCluster.from_settings` reads: config.Settings has all of it (cluster/ does not
    import config, so the settings are described here rather than named)."""

    @property
    def ray_address(self) -> str | None: ...
    @property
    def replicas(self) -> str | None: ...
    @property
    def replica_resources(self) -> str | None: ...
    @property
    def min_replicas(self) -> str | None: ...
    @property
    def max_replicas(self) -> str | None: ...
    @property
    def autoscale_target(self) -> float: ...
    @property
    def autoscale_cooldown(self) -> float: ...
    @property
    def engine(self) -> EngineConfig: ...
    @property
    def engine_isolation(self) -> str: ...
    def model_paths(self) -> dict[str, Path]: ...


class RayCluster:
    def __init__(
        self,
        registry: ReplicaRegistry,
        specs: dict[str, RayModelSpec],
        engine_config: EngineConfig | None = None,
        *,
        autoscale: Autoscale | None = None,
        max_restarts: int = -1,
        drain_timeout: float = 30.0,
        factory: ReplicaFactory | None = None,
        address: str = "auto",
        connect_timeout: float = 60.0,
        isolation: str = "process",
    ):
        self.registry = registry
        self.address = address
        self.connect_timeout = connect_timeout
        self.isolation = isolation  # each actor's engine: step loop in a child process, or a thread
        self._started_ray = False
        self.specs = specs
        self.engine_config = engine_config or EngineConfig()
        self.policy = autoscale or Autoscale()
        self.max_restarts = max_restarts
        self.drain_timeout = drain_timeout
        self._factory = factory or self._ray_replica
        self.replicas: dict[str, list[Any]] = {name: [] for name in specs}
        self._locks = {name: asyncio.Lock() for name in specs}
        self._last_change: dict[str, float] = {}
        self._autoscaler: asyncio.Task | None = None
        self.events: list[dict[str, Any]] = []  # recent scaling decisions, newest last
        self.started = False  # the initial replicas are placed; scale requests are taken

    @classmethod
    def from_settings(cls, settings: RaySettings, registry: ReplicaRegistry) -> RayCluster:
        """Every model of `settings` served by Ray actors (`stratus serve --ray-address`)."""
        assert settings.ray_address
        specs = build_specs(
            settings.model_paths(),
            settings.replicas,
            settings.replica_resources,
            settings.min_replicas,
            settings.max_replicas,
        )
        policy = Autoscale(target=settings.autoscale_target, cooldown=settings.autoscale_cooldown)
        return cls(
            registry,
            specs,
            settings.engine,
            autoscale=policy,
            address=settings.ray_address,
            isolation=settings.engine_isolation,
        )

    async def serve(self) -> None:
        """Connect to Ray and place the replicas (the gateway runs this as it starts)."""
        try:
            self._started_ray = await connect_within(self.address, self.connect_timeout)
            await self.start()
        except Exception:  # /ready stays 503; the log says why
            log.exception("placing Ray replicas failed (--ray-address %s)", self.address)

    async def close(self) -> None:
        await self.shutdown()
        if self._started_ray:
            import ray

            await asyncio.to_thread(ray.shutdown)
            self._started_ray = False

    def _ray_replica(self, spec: RayModelSpec) -> Any:
        from stratus.cluster.ray_replica import RayReplica

        return RayReplica(
            spec.name,
            spec.path,
            self.engine_config,
            resources=spec.resources,
            max_restarts=self.max_restarts,
            isolation=self.isolation,
        )

    async def start(self) -> None:
        """Place every model's initial replicas (in parallel), register them all at once (so
        /ready turns 200 only when every model has its replicas), start the autoscaler."""
        specs = [spec for spec in self.specs.values() if spec.replicas > 0]
        started = await asyncio.gather(
            *(self._start_replica(spec) for spec in specs for _ in range(spec.replicas)),
            return_exceptions=True,
        )
        failed = [r for r in started if isinstance(r, BaseException)]
        for replica in started:
            if not isinstance(replica, BaseException):
                await self._register(replica)
        for spec in specs:
            self._last_change[spec.name] = time.monotonic()
            log.info("model %s: %d Ray replicas (start)", spec.name, len(self.replicas[spec.name]))
        if failed:
            log.error("%d Ray replica(s) failed to start: %s", len(failed), failed[0])
        self.started = True
        if any(spec.autoscaled for spec in self.specs.values()):
            self._autoscaler = asyncio.create_task(self._autoscale_loop(), name="stratus-ray-autoscaler")

    def check(self, model: str, replicas: Any) -> int:
        """Validate a scale request; raises ScaleError (404 for an unknown model, 409 before
        the initial replicas are placed)."""
        spec = self.specs.get(model)
        if spec is None:
            listed = ", ".join(sorted(self.specs)) or "none"
            raise ScaleError(
                f"the model '{model}' has no Ray replicas here (Ray models: {listed})", "model", status=404
            )
        if not isinstance(replicas, int) or isinstance(replicas, bool) or not 0 <= replicas <= MAX_REPLICAS:
            raise ScaleError(f"replicas must be an integer between 0 and {MAX_REPLICAS}", "replicas")
        if not self.started:
            raise ScaleError(
                "the Ray replicas are still being placed, or Ray could not be reached (see the "
                "server log); retry shortly",
                status=409,
            )
        if spec.autoscaled:
            assert spec.min_replicas is not None and spec.max_replicas is not None
            if not spec.min_replicas <= replicas <= spec.max_replicas:
                raise ScaleError(
                    f"the model '{model}' is autoscaled between {spec.min_replicas} and "
                    f"{spec.max_replicas} replicas; ask for a number in that range",
                    "replicas",
                )
        return replicas

    async def scale(self, model: str, replicas: int, reason: str = "admin") -> dict[str, Any]:
        """Set the number of replicas of `model`; returns its status once it is reached. New
        replicas start in parallel; removed ones drain first (newest, least busy go first)."""
        replicas = self.check(model, replicas)
        spec = self.specs[model]
        errors: list[str] = []
        async with self._locks[model]:
            before = len(self.replicas[model])
            if replicas > before:
                results = await asyncio.gather(
                    *(self._add(spec) for _ in range(replicas - before)), return_exceptions=True
                )
                failed = [r for r in results if isinstance(r, BaseException)]
                if failed:
                    log.error("model %s: %d replica(s) failed to start: %s", model, len(failed), failed[0])
                    errors = [f"{type(e).__name__}: {e}"[:300] for e in failed]
            elif replicas < before:
                # the least busy go first, the newest among equals
                newest_first = list(reversed(self.replicas[model]))
                victims = sorted(newest_first, key=lambda r: getattr(r, "in_flight", 0))
                await asyncio.gather(*(self._remove(model, r) for r in victims[: before - replicas]))
            spec.replicas = replicas
            after = len(self.replicas[model])
            if after != before:
                self._last_change[model] = time.monotonic()
                self.events = [
                    *self.events[-49:],
                    {"model": model, "from": before, "to": after, "reason": reason},
                ]
                log.info("model %s: %d -> %d Ray replicas (%s)", model, before, after, reason)
        return {**self.model_status(model), "requested": replicas, "errors": errors}

    async def _add(self, spec: RayModelSpec) -> Any:
        return await self._register(await self._start_replica(spec))

    async def _start_replica(self, spec: RayModelSpec) -> Any:
        replica = self._factory(spec)
        try:
            await replica.start()
        except BaseException:
            with contextlib.suppress(Exception):
                await replica.shutdown()
            raise
        return replica

    async def _register(self, replica: Any) -> Any:
        try:
            await maybe_await(self.registry.add_replica(replica))
        except BaseException:
            with contextlib.suppress(Exception):
                await replica.shutdown()
            raise
        self.replicas[replica.model].append(replica)
        return replica

    async def _remove(self, model: str, replica: Any) -> None:
        """Drain (no new requests, running ones finish), then unregister and kill the actor."""
        self.replicas[model].remove(replica)
        deadline = time.monotonic() + self.drain_timeout  # one bound for both waits
        with contextlib.suppress(Exception):
            await maybe_await(self.registry.drain_replica(model, replica.id, self.drain_timeout))
        while getattr(replica, "in_flight", 0) > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        with contextlib.suppress(Exception):
            await maybe_await(self.registry.remove_replica(model, replica.id))
        await replica.shutdown()

    async def depth(self, model: str) -> float:
        """Running + waiting requests over the model's replicas, fresh from each actor (a
        replica that cannot answer counts what the gateway has in flight on it)."""
        total = 0.0
        for replica in list(self.replicas[model]):
            in_flight = getattr(replica, "in_flight", 0)
            refresh = getattr(replica, "refresh", None)  # RayReplica: ask the actor now
            try:
                stats = await refresh() if refresh is not None else replica.stats()
                total += max(stats.running + stats.waiting, in_flight)
            except Exception:
                total += in_flight
        return total

    async def autoscale_once(self) -> None:
        now = time.monotonic()
        for name, spec in self.specs.items():
            if not spec.autoscaled or self._locks[name].locked():
                continue
            if now - self._last_change.get(name, -math.inf) < self.policy.cooldown:
                continue
            current = len(self.replicas[name])
            wanted = desired_replicas(current, await self.depth(name), spec, self.policy)
            if wanted != current:
                await self.scale(name, wanted, reason="autoscale")

    async def _autoscale_loop(self) -> None:
        while True:
            await asyncio.sleep(self.policy.interval)
            try:
                await self.autoscale_once()
            except Exception:  # one bad look must not end autoscaling
                log.exception("autoscaler")

    def model_status(self, model: str) -> dict[str, Any]:
        spec = self.specs[model]
        return {
            "model": model,
            "replicas": len(self.replicas[model]),
            "resources": spec.resources,
            "min_replicas": spec.min_replicas,
            "max_replicas": spec.max_replicas,
            "autoscaled": spec.autoscaled,
            "actors": [
                {"id": r.id, "node_id": getattr(r, "node_id", None), "in_flight": getattr(r, "in_flight", 0)}
                for r in self.replicas[model]
            ],
        }

    def status(self) -> dict[str, Any]:
        return {"models": [self.model_status(name) for name in self.specs], "events": self.events[-10:]}

    async def shutdown(self) -> None:
        if self._autoscaler is not None:
            self._autoscaler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._autoscaler
        for model, replicas in self.replicas.items():
            for replica in list(replicas):
                with contextlib.suppress(Exception):
                    await maybe_await(self.registry.remove_replica(model, replica.id))
                with contextlib.suppress(Exception):
                    await replica.shutdown()
            replicas.clear()
