"""All replicas of one model, seen by the gateway as one engine.

`generate()` picks a replica with the Router, and when the replica fails (`ReplicaError`):
- before any token was delivered, the request is sent again to another replica;
- mid-stream, each unfinished choice is resumed on another replica from its prompt plus the
  tokens and text already delivered (the engine's `resume_token_ids`), so the caller sees one
  uninterrupted stream: no token lost or repeated, and a seeded stream continues identically.
Both are bounded by `max_failovers`. Two signals keep traffic off a bad replica: a
CircuitBreaker fed by request outcomes (opened by consecutive failures, closed again by a
successful trial request once half-open), and an active probe loop that marks a replica
unreachable when its health check fails and reachable when it passes. Draining replicas
finish their requests and receive nothing new.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from stratus.cluster.breaker import CircuitBreaker
from stratus.cluster.merge import merge_streams
from stratus.cluster.replica import EmbeddingsUnsupported, Replica, ReplicaError
from stratus.cluster.router import NoReplicaAvailable, Router, request_work
from stratus.engine.inputs import prepare_prompt
from stratus.engine.types import Delta, EngineStats, GenerateRequest

if TYPE_CHECKING:
    import numpy as np

    from stratus.engine.pooling import Pooling

log = logging.getLogger("stratus.cluster")

AFFINITY_TOKENS = 64  # requests sharing this many leading tokens prefer the same replica
OnEvent = Callable[[dict], None]


@dataclass
class ReplicaEntry:
    replica: Replica
    breaker: CircuitBreaker
    draining: bool = False
    unreachable: bool = False  # its last probe failed: only a passing probe brings it back
    inflight: int = 0
    served: int = 0
    failed: int = 0

    @property
    def available(self) -> bool:
        """Up, or due a trial: may be counted on to take requests."""
        return not self.draining and not self.unreachable and self.breaker.state != "open"

    def routable(self) -> bool:
        """May the next request go here? A half-open breaker grants one request as its trial
        (taken in _pick by the request sent here): a replica that answers probes but fails
        requests comes back only by serving one."""
        return not self.draining and not self.unreachable and self.breaker.ready()


@dataclass
class _Choice:
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    finished: bool = False


class ReplicaSet:
    def __init__(
        self,
        model: str,
        policy: str = "capacity",
        *,
        max_failovers: int = 3,
        probe_interval: float = 2.0,
        probe_timeout: float = 5.0,
        breaker: Callable[[], CircuitBreaker] = CircuitBreaker,
    ):
        self.model = model
        self.router = Router(policy)
        self.max_failovers = max_failovers
        self.probe_interval = probe_interval
        self.probe_timeout = probe_timeout
        self._new_breaker = breaker
        self.entries: dict[str, ReplicaEntry] = {}
        self._prober: asyncio.Task | None = None
        self._probes: set[asyncio.Task] = set()  # probes a failure started
        self.retries = 0  # requests re-sent before their first token
        self.migrations = 0  # streams resumed on another replica

    # -- membership ----------------------------------------------------------------------------

    def add(self, replica: Replica, capacity: float | None = None) -> None:
        """Add a started replica; it receives requests at once."""
        if replica.id in self.entries:
            raise ValueError(f"replica {replica.id!r} is already serving {self.model}")
        self.entries[replica.id] = ReplicaEntry(replica, self._new_breaker())
        self.router.add(replica.id, capacity)
        self._ensure_prober()
        log.info("model %s: replica %s (%s) joined", self.model, replica.id, replica.kind)

    def remove(self, replica_id: str) -> Replica | None:
        """Stop routing to a replica at once (in-flight requests fail over when it goes)."""
        entry = self.entries.pop(replica_id, None)
        self.router.remove(replica_id)
        if entry is not None:
            log.info("model %s: replica %s left", self.model, replica_id)
        return entry.replica if entry else None

    async def drain(self, replica_id: str, timeout: float = 300.0) -> Replica | None:
        """Send nothing new to a replica, wait for its requests to finish, then remove it."""
        entry = self.entries.get(replica_id)
        if entry is None:
            return None
        entry.draining = True
        deadline = time.monotonic() + timeout
        while entry.inflight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.entries.get(replica_id) is not entry:  # it left (and maybe rejoined) meanwhile
            return None
        return self.remove(replica_id)

    @property
    def replicas(self) -> list[Replica]:
        return [e.replica for e in self.entries.values()]

    # -- what the gateway reads as it would from an engine -------------------------------------

    def _any(self) -> Replica:
        for entry in self.entries.values():
            return entry.replica
        raise ReplicaError(f"no replica of model {self.model} is registered")

    @property
    def tokenizer(self):
        return self._any().tokenizer

    @property
    def model_config(self):
        return self._any().model_config

    @property
    def max_model_len(self) -> int:
        return min(e.replica.max_model_len for e in self.entries.values()) if self.entries else 0

    @property
    def healthy(self) -> bool:
        return any(e.available for e in self.entries.values())

    def problems(self) -> list[str]:
        """What replicas that know why they cannot serve say (an engine restarting, or given up)."""
        found = []
        for rid, entry in self.entries.items():
            problem = getattr(entry.replica, "problem", None)
            if problem:
                found.append(f"replica {rid}: {problem}")
        return found

    def restarting(self) -> bool:
        """Some replica's engine is being replaced (it will come back by itself)."""
        return any(getattr(e.replica, "restarting", False) for e in self.entries.values())

    def gave_up(self) -> bool:
        """Every replica is dead for good: nothing short of restarting the server brings it back."""
        return bool(self.entries) and all(getattr(e.replica, "gave_up", False) for e in self.entries.values())

    def prepare(self, request: GenerateRequest) -> list[int]:
        """Validate and tokenize without running anything; raises ValidationError."""
        return prepare_prompt(request, self.tokenizer, self.model_config.vocab_size, self.max_model_len)

    def stats(self) -> EngineStats:
        """The sum over replicas (hit rate over all their lookups)."""
        total = EngineStats.empty()
        for entry in self.entries.values():
            s = entry.replica.stats()
            for f in dataclasses.fields(EngineStats):
                if f.name != "prefix_hit_rate":
                    setattr(total, f.name, getattr(total, f.name) + getattr(s, f.name))
        queries = total.prefix_cache_queries
        total.prefix_hit_rate = total.prefix_cache_hits / queries if queries else 0.0
        return total

    def snapshot(self) -> list[dict]:
        """Per replica, for /admin/cluster."""
        routing = self.router.snapshot()
        out = []
        for rid, e in self.entries.items():
            s = e.replica.stats()
            out.append(
                {
                    "id": rid,
                    "kind": e.replica.kind,
                    "state": "draining" if e.draining else ("up" if e.available else "down"),
                    "problem": getattr(e.replica, "problem", None),
                    "reachable": not e.unreachable,
                    "breaker": e.breaker.snapshot(),
                    "inflight": e.inflight,
                    "served": e.served,
                    "failed": e.failed,
                    "running": s.running,
                    "waiting": s.waiting,
                    "tokens_per_second": s.tokens_per_second,
                    "layout": getattr(e.replica, "layout", None),  # local engines: TP x PP, ranks
                    **{k: v for k, v in routing.get(rid, {}).items() if k not in ("id",)},
                }
            )
        return out

    # -- generation with failover --------------------------------------------------------------

    async def generate(
        self, request: GenerateRequest, on_event: OnEvent | None = None, affinity: str | None = None
    ) -> AsyncIterator[Delta]:
        """Deltas of every choice, from whichever replicas it takes. Raises ValidationError for
        a bad request, ReplicaError when no replica can serve (or continue) it. `on_event`
        hears of each retry and migration (for the audit record). `affinity` (a user or
        session) keeps its requests on one replica; by default requests sharing the prompt's
        first tokens do (a conversation's turns, a common system prompt)."""
        prompt_ids = self.prepare(request)
        params = request.params
        choices = {request.first_index + i: _Choice() for i in range(params.n)}
        affinity = f"session:{affinity}" if affinity else _affinity_key(prompt_ids)
        tried: set[str] = set()
        failovers = 0
        while True:
            for i, choice in choices.items():  # delivered its last token, but not the finish
                if not choice.finished and _used_up(
                    choice, params.max_tokens, len(prompt_ids), self.max_model_len
                ):
                    choice.finished = True
                    yield _length_finish(request.request_id, i, len(prompt_ids), len(choice.tokens))
            pending = [i for i, c in choices.items() if not c.finished]
            if not pending:
                return
            subrequests = self._subrequests(request, prompt_ids, choices, pending, failovers)
            left = sum(params.max_tokens - len(choices[i].tokens) for i in pending)
            work = request_work(len(prompt_ids) * len(subrequests), left)
            replica_id = self._pick(work, affinity, tried, any(c.tokens for c in choices.values()))
            entry = self.entries[replica_id]
            started, produced, ok = time.monotonic(), 0, False
            self.router.begin(replica_id, work)
            entry.inflight += 1
            try:
                streams = [entry.replica.generate(r) for r in subrequests]
                async with aclosing(merge_streams(streams)) as merged:
                    async for _, delta in merged:
                        choice = choices[delta.index]
                        choice.tokens += delta.token_ids
                        choice.text += delta.text
                        choice.finished = delta.finish_reason is not None
                        produced += len(delta.token_ids)
                        self.router.progress(replica_id, len(delta.token_ids))
                        yield delta
                if any(not c.finished for c in choices.values()):
                    raise ReplicaError(f"replica {replica_id} ended the stream before every choice finished")
                ok = True
                entry.served += 1
                entry.breaker.record_success()
                return
            except ReplicaError as exc:
                entry.failed += 1
                tried.add(replica_id)
                failovers += 1
                self._replica_failed(entry, exc)
                kind = "migrate" if any(c.tokens for c in choices.values()) else "retry"
                if kind == "migrate":
                    self.migrations += 1
                else:
                    self.retries += 1
                delivered = sum(len(c.tokens) for c in choices.values())
                log.warning(
                    "model %s: replica %s failed (%s); %s after %d delivered tokens",
                    self.model,
                    replica_id,
                    exc,
                    kind,
                    delivered,
                )
                if on_event is not None:
                    on_event({"event": kind, "from": replica_id, "delivered_tokens": delivered})
                if failovers > self.max_failovers:
                    raise ReplicaError(
                        f"the model {self.model} failed on {failovers} replicas in a row; retry later"
                    ) from exc
            finally:
                entry.inflight -= 1
                self.router.end(replica_id, work, produced, time.monotonic() - started, ok)

    # -- embeddings ----------------------------------------------------------------------------

    async def embed(
        self,
        prompts: list[list[int]],
        pooling: Pooling,
        on_event: OnEvent | None = None,
        affinity: str | None = None,
    ) -> np.ndarray:
        """One vector per prompt, from a replica that computes embeddings (a local engine; see
        EmbeddingsUnsupported), sent again to another one if it fails (ReplicaError), at most
        `max_failovers` times. Raises ValidationError for bad input."""
        capable = {rid for rid, e in self.entries.items() if callable(getattr(e.replica, "embed", None))}
        if not capable:
            kinds = sorted({e.replica.kind for e in self.entries.values()}) or ["no"]
            raise EmbeddingsUnsupported(
                f"The model {self.model} is served here only by {' and '.join(kinds)} replicas, which "
                "do not compute embeddings; serve it with a local engine (stratus serve --model "
                "NAME=PATH --task embed)."
            )
        work = request_work(sum(len(ids) for ids in prompts), 0)
        key = f"session:{affinity}" if affinity else _affinity_key(prompts[0] if prompts else [])
        tried: set[str] = set(self.entries) - capable
        failovers = 0
        while True:
            replica_id = self._pick(work, key, tried, False)
            entry = self.entries[replica_id]
            started, ok = time.monotonic(), False
            self.router.begin(replica_id, work)
            entry.inflight += 1
            try:
                vectors = await entry.replica.embed(prompts, pooling)  # type: ignore[attr-defined]
                ok = True
                entry.served += 1
                entry.breaker.record_success()
                return vectors
            except ReplicaError as exc:
                entry.failed += 1
                tried.add(replica_id)
                failovers += 1
                self.retries += 1
                self._replica_failed(entry, exc)
                log.warning(
                    "model %s: replica %s failed an embedding request (%s)", self.model, replica_id, exc
                )
                if on_event is not None:
                    on_event({"event": "retry", "from": replica_id, "delivered_tokens": 0})
                if failovers > self.max_failovers:
                    raise ReplicaError(
                        f"the model {self.model} failed on {failovers} replicas in a row; retry later"
                    ) from exc
            finally:
                entry.inflight -= 1
                self.router.end(replica_id, work, 0, time.monotonic() - started, ok)

    def _pick(self, work: float, affinity: str, tried: set[str], midstream: bool) -> str:
        exclude = tried | {rid for rid, e in self.entries.items() if not e.routable()}
        try:
            chosen = self.router.pick(work, affinity, exclude)
        except NoReplicaAvailable:
            what = "continue this stream" if midstream else "serve this request"
            raise ReplicaError(
                f"no replica of the model {self.model} is available to {what}; retry shortly"
            ) from None
        self.entries[chosen].breaker.allow()  # a half-open breaker's trial is this request
        return chosen

    @staticmethod
    def _subrequests(
        request: GenerateRequest,
        prompt_ids: list[int],
        choices: dict[int, _Choice],
        pending: list[int],
        attempt: int,
    ) -> list[GenerateRequest]:
        """The first attempt, or a retry before anything was delivered: the request as it came.
        After a mid-stream failure: one resume request per unfinished choice."""
        base = dataclasses.replace(request, prompt=None, prompt_token_ids=prompt_ids)
        if not any(c.tokens or c.text or c.finished for c in choices.values()):
            return [dataclasses.replace(base, request_id=_attempt_id(request.request_id, attempt))]
        return [
            dataclasses.replace(
                base,
                params=dataclasses.replace(request.params, n=1),
                request_id=_attempt_id(request.request_id, attempt, i),
                first_index=i,
                resume_token_ids=list(choices[i].tokens),
                resume_text=choices[i].text,
            )
            for i in pending
        ]

    def _replica_failed(self, entry: ReplicaEntry, exc: Exception) -> None:
        entry.breaker.record_failure()
        # Find out now whether the replica is gone, rather than after more requests fail.
        task = asyncio.get_running_loop().create_task(self._probe(entry))
        self._probes.add(task)
        task.add_done_callback(self._probes.discard)

    # -- health --------------------------------------------------------------------------------

    def _ensure_prober(self) -> None:
        if self._prober is None or self._prober.done():
            with contextlib.suppress(RuntimeError):  # no running loop: started by start()
                self._prober = asyncio.get_running_loop().create_task(self._probe_loop())

    async def start(self) -> None:
        self._ensure_prober()

    async def _probe_loop(self) -> None:
        while True:
            await asyncio.gather(*(self._probe(e) for e in list(self.entries.values())))
            await asyncio.sleep(self.probe_interval)

    async def _probe(self, entry: ReplicaEntry) -> None:
        """A failed probe takes the replica out of rotation at once; a passing one brings back
        only a replica that probes had taken out. Request failures are the breaker's business:
        a replica that answers probes but fails requests stays out until a request succeeds."""
        try:
            await asyncio.wait_for(entry.replica.probe(), self.probe_timeout)
        except (ReplicaError, TimeoutError, OSError) as exc:
            if not entry.unreachable:
                log.warning("model %s: replica %s is down: %s", self.model, entry.replica.id, exc)
            entry.unreachable = True
        except Exception:
            log.exception("probing replica %s failed", entry.replica.id)
        else:
            if entry.unreachable:
                log.info("model %s: replica %s is back", self.model, entry.replica.id)
            entry.unreachable = False

    async def shutdown(self) -> None:
        for task in self._probes:
            task.cancel()
        if self._prober is not None:
            self._prober.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._prober
        for entry in list(self.entries.values()):
            try:
                await entry.replica.shutdown()
            except Exception:
                log.exception("shutting down replica %s failed", entry.replica.id)


def _affinity_key(prompt_ids: list[int]) -> str:
    head = prompt_ids[:AFFINITY_TOKENS]
    return hashlib.blake2b(repr(head).encode(), digest_size=8).hexdigest()


def _attempt_id(request_id: str, attempt: int, choice: int | None = None) -> str:
    if attempt == 0 and choice is None:
        return request_id
    return f"{request_id}.{attempt}" + ("" if choice is None else f".{choice}")


def _used_up(choice: _Choice, max_tokens: int, prompt_len: int, max_model_len: int) -> bool:
    n = len(choice.tokens)
    return n >= max_tokens or (n > 0 and prompt_len + n >= max_model_len)


def _length_finish(request_id: str, index: int, prompt_tokens: int, completion_tokens: int) -> Delta:
    return Delta(
        request_id=request_id,
        index=index,
        text="",
        token_ids=[],
        finish_reason="length",
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
    )
