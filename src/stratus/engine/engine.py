"""The async face of one replica: `generate()` streams deltas while a step loop runs beside it.

The step loop owns the `LLMEngine` and runs in its own thread; callers talk to it through an
inbox (add, abort) and receive deltas on per-request asyncio queues. PyTorch releases the GIL
inside its kernels, so the event loop keeps serving HTTP while a step computes.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path

from .config import EngineConfig
from .llm_engine import LLMEngine
from .types import Delta, EngineStats, GenerateRequest, SamplingParams

log = logging.getLogger("stratus.engine")


class EngineError(RuntimeError):
    """The step loop failed while this request was in flight."""


class Engine:
    def __init__(self, core: LLMEngine):
        self.core = core
        self.tokenizer = core.tokenizer
        self.model_config = core.model_config
        self.max_model_len = core.max_model_len
        self.path = core.path
        self._inbox: queue.Queue = queue.Queue()
        self._streams: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._stats = core.stats()

    @classmethod
    def from_pretrained(cls, path: str | Path, config: EngineConfig | None = None) -> Engine:
        return cls(LLMEngine(path, config))

    @property
    def model_name_or_path(self) -> str:
        return str(self.path)

    async def start(self, warmup: bool = True) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._loop, name="stratus-engine", daemon=True)
        self._thread.start()
        if warmup:  # first steps pay for allocator and kernel setup; do it before /ready
            request = GenerateRequest(
                prompt_token_ids=[0, 1, 2, 3], params=SamplingParams(max_tokens=2, temperature=0)
            )
            async for _ in self.generate(request):
                pass

    async def shutdown(self) -> None:
        self._stopping.set()
        self._inbox.put(("wake",))
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 10)
            self._thread = None

    async def generate(self, request: GenerateRequest) -> AsyncIterator[Delta]:
        """Deltas for every choice until each has a finish_reason. Raises ValidationError first
        if the request is invalid. Closing the iterator early aborts the request."""
        prompt_ids = self.core.prepare(request)
        if self._thread is None:
            await self.start(warmup=False)
        rid = request.request_id
        stream: asyncio.Queue = asyncio.Queue()
        self._streams[rid] = (asyncio.get_running_loop(), stream)
        self._inbox.put(("add", request, prompt_ids))
        remaining = request.params.n
        try:
            while remaining:
                item = await stream.get()
                if isinstance(item, BaseException):
                    raise item
                if item.finish_reason is not None:
                    remaining -= 1
                yield item
        finally:
            self._streams.pop(rid, None)
            if remaining:
                self._inbox.put(("abort", rid))

    async def abort(self, request_id: str) -> None:
        self._inbox.put(("abort", request_id))

    def stats(self) -> EngineStats:
        return self._stats

    # -- the step loop (engine thread) ---------------------------------------------------------

    def _loop(self) -> None:
        core = self.core
        while not self._stopping.is_set():
            try:
                self._drain_inbox(block=not core.has_work())
                if core.has_work():
                    self._deliver(core.step())
                self._stats = core.stats()
            except Exception as exc:  # a bug must not hang every caller: fail what is in flight
                log.exception("engine step failed; failing in-flight requests")
                for rid in list(core.requests):
                    core.abort(rid)
                    self._send(rid, [EngineError(f"engine failure: {type(exc).__name__}")])

    def _drain_inbox(self, block: bool) -> None:
        try:
            command = self._inbox.get(timeout=0.5) if block else self._inbox.get_nowait()
        except queue.Empty:
            return
        while True:
            kind = command[0]
            if kind == "add":
                _, request, prompt_ids = command
                if request.request_id in self._streams:
                    try:
                        self.core.add_request(request, prompt_ids)
                    except Exception as exc:
                        self._send(request.request_id, [exc])
            elif kind == "abort":
                self._deliver(self.core.abort(command[1]))
            try:
                command = self._inbox.get_nowait()
            except queue.Empty:
                return

    def _deliver(self, deltas: list[Delta]) -> None:
        by_request: dict[str, list] = defaultdict(list)
        for delta in deltas:
            by_request[delta.request_id].append(delta)
        for rid, items in by_request.items():
            self._send(rid, items)

    def _send(self, rid: str, items: list) -> None:
        target = self._streams.get(rid)
        if target is None:
            return
        loop, stream = target
        try:
            loop.call_soon_threadsafe(_put_all, stream, items)
        except RuntimeError:  # the caller's event loop is gone
            self._streams.pop(rid, None)


def _put_all(stream: asyncio.Queue, items: list) -> None:
    for item in items:
        stream.put_nowait(item)
