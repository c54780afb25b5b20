"""The loop that owns an `EngineCore`: take commands between steps, step, publish results.

It is the same loop whether it runs in a thread or in a process of its own; only the way
commands arrive (`next_command`) and results leave (`publish`) differs.
"""

from __future__ import annotations

import ctypes
import logging
import time
from collections.abc import Callable

from .core import EngineCore
from .messages import (
    AbortRequest,
    AdapterChanged,
    AddRequest,
    Command,
    Deltas,
    Embed,
    Embeddings,
    LoadAdapter,
    RequestError,
    Result,
    Stats,
    Stop,
    UnloadAdapter,
)
from .types import CheckpointError, FatalEngineError, ValidationError

log = logging.getLogger("stratus.engine")

NextCommand = Callable[[float | None], Command | None]  # timeout None: don't wait
Publish = Callable[[Result], None]

STATS_INTERVAL_S = 0.1
TRIM_INTERVAL_S = 10.0  # at most this often, the heap is trimmed when the engine goes idle


class HeapTrimmer:
    """Gives freed heap back to the system when the engine goes idle: glibc keeps what a burst
    of new batch shapes freed, so an engine would otherwise hold its peak (docs/ENGINE.md).
    A no-op where the C library is not glibc."""

    def __init__(self) -> None:
        self.last = 0.0
        self.trim: Callable[[int], int] | None
        try:
            self.trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            self.trim = None

    def idle(self, now: float) -> None:
        if self.trim is not None and now - self.last >= TRIM_INTERVAL_S:
            self.trim(0)
            self.last = now


class Pacer:
    """Holds the loop to `rate` output tokens per second over all sequences.

    A step that produced k tokens pushes the earliest start of the next step k/rate seconds
    past its own start, so the rate is exact whenever a step computes faster than that, and
    the step's own time counts towards the pause. Idle time earns no credit: the budget is
    never exceeded by more than one step's tokens, however long the engine was idle.
    """

    def __init__(self, rate: float):
        self.rate = rate
        self.ready_at = 0.0

    def delay(self, now: float) -> float:
        """Seconds to wait before the next step may start."""
        return max(self.ready_at - now, 0.0)

    def stepped(self, started: float, tokens: int) -> None:
        if tokens:
            self.ready_at = max(self.ready_at, started) + tokens / self.rate


def run_step_loop(core: EngineCore, next_command: NextCommand, publish: Publish) -> None:
    last_stats = 0.0
    rate = core.config.max_tokens_per_second
    pacer = Pacer(rate) if rate else None
    trimmer = HeapTrimmer()
    while True:
        wait = None if core.has_work() else 0.5
        if pacer is not None and wait is None:
            wait = pacer.delay(time.monotonic()) or None  # take commands while pacing
        command = next_command(wait)
        while command is not None:
            if isinstance(command, Stop):
                return
            _apply(core, command, publish)
            command = next_command(None)
        if pacer is not None and core.has_work() and pacer.delay(time.monotonic()) > 0:
            continue  # a command ended the wait early; wait out the rest
        deltas = []
        try:
            if core.has_work():
                started = time.monotonic()
                produced = core.generated_tokens_total
                deltas = core.step()
                if pacer is not None:
                    pacer.stepped(started, core.generated_tokens_total - produced)
                for rid, why in core.take_failures().items():
                    publish(RequestError(rid, "request", why))
        except FatalEngineError:
            raise  # the replica cannot go on (a rank is gone): the caller ends the loop
        except Exception as exc:  # a bug must not hang every caller: fail what is in flight
            log.exception("engine step failed; failing in-flight requests")
            for rid in list(core.requests):
                core.abort(rid)
                publish(RequestError(rid, "engine", f"engine failure: {type(exc).__name__}"))
        now = time.monotonic()
        # Stats go out before the deltas they include, so a caller that has seen a request
        # finish also sees it counted.
        if now - last_stats >= STATS_INTERVAL_S or not core.has_work():
            publish(Stats(core.stats()))
            last_stats = now
        if deltas:
            publish(Deltas(deltas))
        if deltas and not core.has_work():  # the last sequence just finished
            trimmer.idle(now)


def _apply(
    core: EngineCore,
    command: AddRequest | AbortRequest | Embed | LoadAdapter | UnloadAdapter,
    publish: Publish,
) -> None:
    match command:
        case AddRequest(request, prompt_ids):
            try:
                core.add_request(request, prompt_ids)
            except ValidationError as exc:
                publish(RequestError(request.request_id, "validation", str(exc), exc.param))
        case AbortRequest(request_id):
            deltas = core.abort(request_id)
            if deltas:
                publish(Deltas(deltas))
        case Embed(request_id, prompts, pooling):
            try:
                vectors = core.embed(prompts, pooling)
            except ValidationError as exc:
                publish(RequestError(request_id, "validation", str(exc), exc.param))
            except FatalEngineError:
                raise
            except Exception as exc:  # this request fails; the loop and the others go on
                log.exception("embedding request %s failed", request_id)
                publish(RequestError(request_id, "request", f"{type(exc).__name__} while embedding"))
            else:
                count, dim = vectors.shape
                publish(Embeddings(request_id, vectors.numpy().tobytes(), count, dim))
        case LoadAdapter(request_id, name, path):
            found = name in core.adapters
            try:  # reading a small adapter takes milliseconds; the steps wait meanwhile
                core.load_adapter(name, path)
            except CheckpointError as exc:
                publish(RequestError(request_id, "validation", str(exc), "path"))
            except Exception as exc:  # a bug must not end the loop
                log.exception("loading adapter %s from %s failed", name, path)
                publish(
                    RequestError(request_id, "request", f"{type(exc).__name__} while loading the adapter")
                )
            else:
                publish(AdapterChanged(request_id, name, found))
        case UnloadAdapter(request_id, name):
            publish(AdapterChanged(request_id, name, core.unload_adapter(name)))
