"""Workers joining and leaving a gateway: registration, heartbeats, deregistration.

Worker side (`Heartbeat`, run by `stratus worker --gateway URL`):
    POST {gateway}/internal/v1/workers/register    {id, model, url}        once its model is warm
    POST {gateway}/internal/v1/workers/heartbeat   {id, model, state, stats} every `interval` s
    POST {gateway}/internal/v1/workers/deregister  {id, model}              on SIGTERM, before draining
A heartbeat answered 404 (the gateway restarted, or dropped the worker) makes it register again.

Gateway side (`WorkerDirectory`, behind api/routes/internal.py): a registration builds a
`WorkerReplica` (it fetches the worker's tokenizer and config, so a worker that cannot be reached
back is refused) and adds it to the model's replica set; a worker that misses `missed`
heartbeats in a row is probed, and removed if the probe fails (kept, and logged, if it
answers); a deregistered one is drained (finishes, takes nothing new).
All of it is authenticated with the cluster secret (cluster/secret.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from stratus.cluster.aio import maybe_await
from stratus.cluster.replica import ReplicaError
from stratus.cluster.worker_replica import WorkerReplica
from stratus.names import MODEL_NAME_RE
from stratus.net.urls import check_http_url

log = logging.getLogger("stratus.cluster")

PREFIX = "/internal/v1/workers"
WORKER_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@/-]{0,127}$")


class RegistrationError(ValueError):
    """A registration the gateway refuses; the message is safe to send back."""

    status = 400


class RegistrationConflict(RegistrationError):
    """The worker is well-formed but clashes with what is registered (another checkpoint under the
    model's name, or a live worker's id from another URL): 409."""

    status = 409


def check_worker_url(url: str, *, insecure_http: bool = False) -> str:
    """http(s)://host[:port][/path] with no credentials, query or fragment; plain http:// only to a
    loopback host unless `insecure_http` (the gateway sends the cluster secret there)."""
    try:
        return check_http_url(url, "url", plain_remote=insecure_http)
    except ValueError as exc:
        raise RegistrationError(str(exc)) from None


def _field(body: dict, name: str, pattern: re.Pattern) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not pattern.match(value):
        raise RegistrationError(f"{name} must be a string matching {pattern.pattern}")
    return value


@dataclass
class _Known:
    replica: WorkerReplica
    last_seen: float
    draining: bool = False
    late: bool = False  # heartbeats stopped but probes pass (logged once)


class WorkerDirectory:
    """The workers registered with this gateway, kept in the model registry's replica sets."""

    def __init__(
        self,
        registry: Any,
        secret: bytes,
        *,
        interval: float = 2.0,
        missed: int = 3,
        verify: ssl.SSLContext | bool = True,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        first_token_timeout: float = 600.0,
        insecure_http: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.registry = registry
        self.secret = secret
        self.interval = interval
        self.missed = missed
        self.verify = verify
        self.timeouts = (connect_timeout, read_timeout, first_token_timeout)
        self.insecure_http = insecure_http  # plain http:// to workers off loopback
        self.clock = clock
        self.workers: dict[str, _Known] = {}
        self._lock = asyncio.Lock()
        self._watcher: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()

    async def register(self, body: dict) -> dict:
        worker_id = _field(body, "id", WORKER_ID_RE)
        model = _field(body, "model", MODEL_NAME_RE)
        url = check_worker_url(
            body.get("url") if isinstance(body.get("url"), str) else "", insecure_http=self.insecure_http
        )
        replica = WorkerReplica(
            worker_id,
            model,
            url,
            self.secret,
            connect_timeout=self.timeouts[0],
            read_timeout=self.timeouts[1],
            first_token_timeout=self.timeouts[2],
            verify=self.verify,
        )
        await self._check_not_taken(worker_id, url)
        try:
            await replica.start()
        except (ReplicaError, OSError, ValueError) as exc:
            await replica.shutdown()
            # The reason stays in the log: echoing what the URL answered would let a caller holding
            # the secret read (or map) whatever the gateway can reach.
            log.warning("worker %s at %s refused: %s", worker_id, url, exc)
            raise RegistrationError(
                "the gateway could not read the worker's checkpoint files at that URL with the "
                "cluster secret (is it a stratus worker serving that model? see the gateway log)"
            ) from None
        async with self._lock:
            try:
                self._check_same_checkpoint(replica)
                await self._check_not_taken(worker_id, url)  # again: another may have won the race
            except RegistrationConflict:
                await replica.shutdown()
                raise
            old = self.workers.pop(worker_id, None)
            if old is not None:  # a restarted worker: its old connection state is stale
                await self._remove(old)
            await maybe_await(self.registry.add_replica(replica))
            self.workers[worker_id] = _Known(replica, self.clock())
        self._ensure_watcher()
        log.info("worker %s registered for model %s at %s", worker_id, model, url)
        return {"heartbeat_interval": self.interval}

    async def _check_not_taken(self, worker_id: str, url: str) -> None:
        """A live worker's id cannot be taken over from another URL (its traffic would follow);
        a restarted worker at a new address can, once the old address stops answering."""
        old = self.workers.get(worker_id)
        if old is None or old.replica.url == url:
            return
        try:
            await old.replica.probe()
        except ReplicaError:
            return  # the old one is gone
        raise RegistrationConflict(
            f"worker id {worker_id!r} is registered from another URL and still answers"
        )

    def _check_same_checkpoint(self, replica: WorkerReplica) -> None:
        sets = self.registry.replica_sets() if hasattr(self.registry, "replica_sets") else {}
        existing = sets.get(replica.model)
        for other in existing.replicas if existing is not None else []:
            digest = getattr(other, "checkpoint_digest", "")
            if other.id != replica.id and digest and digest != replica.checkpoint_digest:
                raise RegistrationConflict(
                    f"the worker's checkpoint for {replica.model!r} differs from replica {other.id!r} "
                    "(config or tokenizer files): replicas of one model must serve the same checkpoint"
                )

    def heartbeat(self, body: dict) -> bool:
        """Refresh a known worker; False (404 to the worker) when it must register again."""
        known = self.workers.get(body.get("id")) if isinstance(body.get("id"), str) else None
        if known is None or known.replica.model != body.get("model"):
            return False
        known.last_seen = self.clock()
        known.late = False
        stats = body.get("stats")
        if isinstance(stats, dict):
            with contextlib.suppress(TypeError, ValueError):
                known.replica.update_stats(stats)
        return True

    async def deregister(self, body: dict) -> bool:
        """Drain the worker: it finishes what it runs and gets nothing new. `final`: it has
        stopped, remove it now (else it goes once its heartbeats stop)."""
        known = self.workers.get(body.get("id")) if isinstance(body.get("id"), str) else None
        if known is None or known.replica.model != body.get("model"):
            return False
        if body.get("final") is True:
            async with self._lock:
                if self.workers.get(known.replica.id) is known:
                    del self.workers[known.replica.id]
                    await self._remove(known)
            log.info("worker %s stopped and was removed", known.replica.id)
            return True
        if not known.draining:
            known.draining = True
            # The drain waits for the worker's streams to end; the worker need not wait for that.
            task = asyncio.create_task(
                maybe_await(self.registry.drain_replica(known.replica.model, known.replica.id))
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        log.info("worker %s is draining", known.replica.id)
        return True

    async def expire(self) -> list[str]:
        """Probe the workers whose heartbeats stopped; remove those that fail it (their streams
        migrate), keep those that answer (only the heartbeats were late). Returns removed ids."""
        limit = self.missed * self.interval
        late = [(wid, k) for wid, k in list(self.workers.items()) if self.clock() - k.last_seen > limit]
        gone = []
        for worker_id, known in late:
            try:
                await known.replica.probe()  # outside the lock: it may take a connect timeout
            except ReplicaError as exc:
                async with self._lock:  # recheck: a heartbeat or a re-registration may have come
                    if self.workers.get(worker_id) is not known or self.clock() - known.last_seen <= limit:
                        continue
                    del self.workers[worker_id]
                    log.warning(
                        "worker %s missed %d heartbeats and failed a probe (%s); removed",
                        worker_id,
                        self.missed,
                        exc,
                    )
                    await self._remove(known)
                gone.append(worker_id)
            else:
                if not known.late:
                    log.warning(
                        "worker %s missed %d heartbeats but answers a probe; kept", worker_id, self.missed
                    )
                known.late = True
        return gone

    async def _remove(self, known: _Known) -> None:
        try:
            await maybe_await(self.registry.remove_replica(known.replica.model, known.replica.id))
        except KeyError:
            pass  # already gone
        await known.replica.shutdown()

    def _ensure_watcher(self) -> None:
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.create_task(self._watch(), name="stratus-worker-heartbeats")

    async def _watch(self) -> None:
        while self.workers:
            await asyncio.sleep(self.interval)
            try:
                await self.expire()
            except Exception:
                log.exception("checking worker heartbeats failed")

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher


class Heartbeat:
    """The worker's side: register once serving, heartbeat, re-register when forgotten."""

    def __init__(
        self,
        gateway_url: str,
        secret: bytes,
        info: dict,
        stats: Callable[[], dict],
        *,
        interval: float = 2.0,
        verify: ssl.SSLContext | bool = True,
        timeout: float = 10.0,
    ):
        self.info = info  # id, model, url
        self.stats = stats
        self.interval = interval
        self.registered = False
        self.draining = False
        self._client = httpx.AsyncClient(
            base_url=gateway_url.rstrip("/") + PREFIX,
            headers={"Authorization": f"Bearer {secret.decode()}"},
            timeout=timeout,
            verify=verify,
        )

    async def run(self) -> None:
        while True:
            try:
                await self.beat()
            except httpx.HTTPError as exc:
                log.warning("gateway unreachable (%s); retrying in %.0f s", type(exc).__name__, self.interval)
            await asyncio.sleep(self.interval)

    async def beat(self) -> None:
        if not self.registered:
            r = await self._client.post("/register", json=self.info)
            if r.status_code != 200:
                log.error("the gateway refused registration (%d): %s", r.status_code, _message(r))
                return
            self.registered = True
            self.interval = float(r.json().get("heartbeat_interval", self.interval))
            log.info("registered with the gateway as %s", self.info["id"])
            return
        state = "draining" if self.draining else "serving"
        body = {"id": self.info["id"], "model": self.info["model"], "state": state, "stats": self.stats()}
        r = await self._client.post("/heartbeat", json=body)
        if r.status_code == 404:
            self.registered = False  # the gateway forgot us (it restarted): register again now
            if not self.draining:
                await self.beat()
        elif r.status_code != 200:
            log.warning("heartbeat refused (%d): %s", r.status_code, _message(r))

    async def deregister(self, final: bool = False) -> None:
        """Ask to be drained; `final` once stopped (the gateway then removes it at once)."""
        self.draining = True
        if not self.registered:
            return
        body = {"id": self.info["id"], "model": self.info["model"], "final": final}
        try:
            await self._client.post("/deregister", json=body)
        except httpx.HTTPError as exc:
            log.warning("could not deregister (%s); the gateway will notice the missed heartbeats", exc)

    async def close(self) -> None:
        await self._client.aclose()


def _message(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return response.text[:200]
