"""The generate step: run a request's engine generations and keep its timing and usage.

A completions request with several prompts runs one engine generation per prompt, merged into
one stream whose choice indices are `prompt_index * n + choice`. Whoever consumes the deltas,
closing the stream early (a client that went away) closes every engine generator, which
aborts those requests and frees their KV blocks.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

import anyio
from fastapi import Request

from stratus.api.deps import Gateway
from stratus.api.prompts import engine_error
from stratus.cluster.merge import merge_streams
from stratus.cluster.replica import ReplicaError
from stratus.engine.types import Delta, GenerateRequest, TokenLogprob, ValidationError
from stratus.observe import tracing
from stratus.request.context import Usage
from stratus.request.errors import APIError, unavailable

if TYPE_CHECKING:
    from stratus.cluster.replica_set import ReplicaSet

log = logging.getLogger("stratus.api")
T = TypeVar("T")


class ClientDisconnected(Exception):
    """The client closed the connection before the response was ready."""


@dataclass
class Choice:
    index: int
    parts: list[str] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    tokens: int = 0

    @property
    def text(self) -> str:
        return "".join(self.parts)


class Generation:
    """The engine work behind one API request."""

    def __init__(
        self, gw: Gateway, engine: ReplicaSet, requests: list[GenerateRequest], affinity: str | None = None
    ):
        self.gw = gw
        self.engine = engine
        self.requests = requests
        self.affinity = affinity  # the request's `user`: its requests prefer one replica
        self.n = requests[0].params.n
        self.choices = {i: Choice(i) for i in range(len(requests) * self.n)}
        self.prompt_tokens = [0] * len(requests)
        self.cached_tokens = [0] * len(requests)
        self.first_token_at: float | None = None
        self.last_token_at: float | None = None
        self.outcome = "ok"
        self.withheld = False  # a complete response that failed: the client got no tokens
        self._finished = False

    async def deltas(self) -> AsyncIterator[tuple[int, Delta]]:
        """(choice index, delta) pairs as the engine produces them; updates the choices. Traced
        as stratus.generate, with the engine's queueing and prefill (to the first token) and its
        decode (first token to last) as child spans."""
        generating = tracing.start("stratus.generate", {"stratus.model": self.gw.ctx.model})
        started_ns, started = time.time_ns(), time.perf_counter()
        error: BaseException | None = None
        try:
            async with aclosing(self._deltas(generating)) as inner:
                async for item in inner:
                    yield item
        except Exception as exc:
            error = exc
            raise
        finally:
            if generating is not None:
                self._end_span(generating, started_ns, started, error)

    def _end_span(
        self, generating: tracing.Started, started_ns: int, started: float, error: BaseException | None
    ) -> None:
        def ns(t: float) -> int:
            return started_ns + int((t - started) * 1e9)

        if self.first_token_at is not None:
            first = ns(self.first_token_at)
            generating.record("engine.queue_prefill", started_ns, first)
            generating.record("engine.decode", first, ns(self.last_token_at or self.first_token_at))
        usage = self.usage()
        attributes = {
            "stratus.prompt_tokens": usage.prompt_tokens,
            "stratus.cached_tokens": usage.cached_tokens,
            "stratus.completion_tokens": sum(c.tokens for c in self.choices.values()),
            "stratus.outcome": self.outcome,
            "stratus.failovers": len(self.gw.ctx.failovers),
        }
        if self.first_token_at is not None:
            attributes["stratus.time_to_first_token_ms"] = (self.first_token_at - started) * 1000
        generating.end(attributes, error)

    async def _deltas(self, generating: tracing.Started | None) -> AsyncGenerator[tuple[int, Delta], None]:
        on_event = self.gw.ctx.failovers.append
        streams = [
            tracing.stream_under(generating, self.engine.generate(r, on_event, self.affinity))
            for r in self.requests
        ]
        async with aclosing(merge_streams(streams)) as merged:
            async for which, delta in merged:
                index = which * self.n + delta.index
                self.prompt_tokens[which] = delta.prompt_tokens
                self.cached_tokens[which] = delta.cached_tokens
                choice = self.choices[index]
                if delta.token_ids:
                    now = time.perf_counter()
                    self.first_token_at = self.first_token_at or now
                    self.last_token_at = now
                choice.tokens = max(choice.tokens, delta.completion_tokens)
                choice.parts.append(delta.text)
                if delta.logprobs:
                    choice.logprobs.extend(delta.logprobs)
                if delta.finish_reason is not None:
                    choice.finish_reason = delta.finish_reason
                    if delta.finish_reason == "abort":
                        self.outcome = "aborted"
                yield index, delta

    async def collect(self) -> list[Choice]:
        async with aclosing(self.deltas()) as stream:
            async for _ in stream:
                pass
        if self.outcome == "aborted":
            raise unavailable("The generation was stopped because the server is shutting down.")
        return [self.choices[i] for i in sorted(self.choices)]

    def usage(self) -> Usage:
        """What the client received: completion tokens only if they reached it."""
        return Usage(
            prompt_tokens=sum(self.prompt_tokens),
            completion_tokens=0 if self.withheld else sum(c.tokens for c in self.choices.values()),
            cached_tokens=sum(self.cached_tokens),
        )

    async def finish(self, outcome: str | None = None, *, deliver_later: bool = False) -> None:
        """Metrics and the settle step, once, however the generation ended. Shielded from
        cancellation: a client that left still pays for what was generated. `deliver_later`: a
        complete response, charged at the record step once the audit trail has accepted it (a
        response refused for its audit record is not charged as delivered)."""
        if self._finished:
            return
        self._finished = True
        if outcome:
            self.outcome = outcome
        ctx = self.gw.ctx
        if self.outcome != "ok":
            ctx.outcome = self.outcome
        ctx.completions = [self.choices[i].text for i in sorted(self.choices)]  # content logging
        usage = self.usage()
        model = ctx.model or ""
        metrics = self.gw.state.metrics
        started = ctx.started
        metrics.observe_generation(
            model,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            ttft=self.first_token_at - started if self.first_token_at else None,
            decode_seconds=(self.last_token_at - self.first_token_at if self.first_token_at else None),
            e2e=time.perf_counter() - started,
        )
        if self.outcome in ("client_disconnect", "aborted"):
            metrics.aborted.labels(model, self.outcome).inc()
        if deliver_later:
            ctx.usage = usage
            return
        with anyio.CancelScope(shield=True):
            await self.gw.settle(usage)


async def until_disconnected(request: Request, awaitable: Awaitable[T]) -> T:
    """Await `awaitable` unless the client disconnects first; then cancel it (aborting the
    generation) and raise ClientDisconnected. Engine validation errors become 400s."""
    work = asyncio.ensure_future(awaitable)
    watcher = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if not work.done():
            raise ClientDisconnected()
        try:
            return work.result()
        except ValidationError as exc:
            raise engine_error(exc) from None
    finally:
        for task in (work, watcher):
            task.cancel()
        with anyio.CancelScope(shield=True):
            await asyncio.gather(work, watcher, return_exceptions=True)


async def _wait_for_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def check_engine_failure(exc: Exception, request_id: str) -> APIError:
    """Any other failure from the engine: logged in full here, generic to the client, except
    that no replica could serve it, which the client may retry."""
    if isinstance(exc, ReplicaError):
        log.warning("request %s: %s", request_id, exc)
        return unavailable(f"{exc} (request id {request_id}).", 2, "no_replica_available")
    log.error("generation failed for request %s", request_id, exc_info=exc)
    return APIError(500, f"The model failed while generating (request id {request_id}); retry.")
