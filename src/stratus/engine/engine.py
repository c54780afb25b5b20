"""The async face of one replica: `generate()` streams deltas while a step loop runs beside it.

The step loop (step_loop.py) owns the `EngineCore` (core.py). It runs either in a thread of this process
(`isolation="thread"`: quick to start, for tests and embedding) or in a process of its own
(`isolation="process"`, what `stratus serve` uses, as vLLM's engine core does) so the HTTP event
loop and the token loop never compete for one interpreter lock. Callers see the same interface.

An engine process that dies (kill -9, the OOM killer, a crash in native code) fails the
requests it held and is started again with backoff, warmed up, and serves again: `state` goes
ready -> restarting -> ready. After `MAX_RESTART_ATTEMPTS` failed starts in a row it is
"failed" for good, and the gateway's /health says so, so that a supervisor restarts the server.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np

from .config import EngineConfig, ModelConfig
from .core import EngineCore
from .inputs import check_embedding_inputs, context_window, prepare_prompt
from .messages import (
    AbortRequest,
    AdapterChanged,
    AddRequest,
    Command,
    Deltas,
    Died,
    Embed,
    Embeddings,
    LoadAdapter,
    RequestError,
    Result,
    Stats,
    Stop,
    UnloadAdapter,
)
from .pooling import Pooling
from .step_loop import run_step_loop
from .tokenizer import Tokenizer
from .types import (
    Delta,
    EngineStats,
    FatalEngineError,
    GenerateRequest,
    RequestFailed,
    SamplingParams,
    ValidationError,
)

log = logging.getLogger("stratus.engine")

MAX_RESTART_ATTEMPTS = 5  # failed starts in a row before the engine is given up
RESTART_BACKOFF_S = (0.5, 1.0, 2.0, 5.0, 10.0)  # before each attempt; the last repeats


class EngineError(RuntimeError):
    """The step loop failed while this request was in flight."""


class Engine:
    def __init__(self, path: str | Path, config: EngineConfig | None = None, isolation: str = "thread"):
        if isolation not in ("thread", "process"):
            raise ValueError(f"isolation must be 'thread' or 'process', got {isolation!r}")
        self.path = Path(path)
        self.config = config or EngineConfig()
        self.isolation = isolation
        self._core: EngineCore | None = None
        if isolation == "thread":
            self._core = EngineCore(self.path, self.config)
            self.model_config = self._core.model_config
            self.tokenizer = self._core.tokenizer
        else:  # the child loads the weights; this side needs only what validation reads
            self.model_config = ModelConfig.from_dir(self.path)
            self.tokenizer = Tokenizer(self.path)
        # The context served: the core's (capped to its KV pool); with process isolation the
        # model's window until the child says what its pool holds (start).
        self.max_model_len = (
            self._core.max_model_len if self._core else context_window(self.model_config, self.config)
        )
        self._streams: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._transport = None
        self._failure: str | None = None  # set when the step loop's process died
        self._stats = self._core.stats() if self._core else EngineStats.empty()
        self.state = "starting"  # starting | ready | restarting | failed
        self.restarts = 0  # successful restarts after a death
        self.restart_attempt = 0  # of the restart under way
        self.last_death: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._restarter: asyncio.Task | None = None
        self._closing = False
        # LoRA adapters served (name -> directory): loaded again into a restarted engine process
        self.adapters: dict[str, str] = {}

    @classmethod
    def from_pretrained(
        cls, path: str | Path, config: EngineConfig | None = None, isolation: str = "thread"
    ) -> Engine:
        return cls(path, config, isolation)

    @property
    def core(self) -> EngineCore:
        """The engine core, reachable only with thread isolation (tests and offline use)."""
        if self._core is None:
            raise RuntimeError("the engine core lives in another process")
        return self._core

    @property
    def healthy(self) -> bool:
        return self._transport is not None and self._failure is None and self.state != "restarting"

    @property
    def problem(self) -> str | None:
        """Why it cannot serve right now, in words for a 503 and /ready; None when it can."""
        if self.state == "restarting":
            return (
                f"its engine process died ({self.last_death}) and is being restarted "
                f"(attempt {self.restart_attempt} of {MAX_RESTART_ATTEMPTS})"
            )
        if self.state == "failed":
            return f"its engine process died and could not be restarted: {self._failure}"
        if self._failure is not None:
            return f"its engine failed: {self._failure}"
        return None

    @property
    def layout(self) -> dict | None:
        """How the replica is split over processes and what each holds (EngineCore.layout);
        None until its process has loaded the model."""
        if self._core is not None:
            return self._core.layout()
        return getattr(self._transport, "layout", None)

    @property
    def model_name_or_path(self) -> str:
        return str(self.path)

    async def start(self, warmup: bool = True) -> None:
        self._loop = asyncio.get_running_loop()
        if self._transport is None:
            if self.isolation == "thread":
                self._transport = ThreadTransport(self._core, self._on_result)
            else:
                from .process import ProcessTransport

                transport = ProcessTransport(self.path, self.config, self._on_result)
                try:
                    await asyncio.to_thread(transport.wait_ready)
                except BaseException:
                    await asyncio.to_thread(transport.stop)
                    raise
                self._transport = transport
                if transport.max_model_len is not None:  # capped to what the child's pool holds
                    self.max_model_len = transport.max_model_len
        if warmup:  # the first steps pay for allocator and kernel setup; pay before /ready
            await self._warm_up()
        self.state = "ready"

    async def _warm_up(self) -> None:
        params = SamplingParams(max_tokens=4, temperature=0, ignore_eos=True)
        async for _ in self.generate(GenerateRequest(prompt_token_ids=[1, 2, 3, 4], params=params)):
            pass

    def _died(self, why: str) -> None:
        """On the event loop: the engine process is gone; start a new one in the background."""
        if self._closing or self._restarter is not None:
            return
        log.error("engine process of %s died: %s; restarting it", self.path, why)
        self.last_death = why
        self.state = "restarting"
        self._restarter = asyncio.get_running_loop().create_task(self._restart())

    async def _restart(self) -> None:
        from .process import ProcessTransport

        try:
            for attempt in range(1, MAX_RESTART_ATTEMPTS + 1):
                self.restart_attempt = attempt
                await asyncio.sleep(RESTART_BACKOFF_S[min(attempt, len(RESTART_BACKOFF_S)) - 1])
                old, self._transport = self._transport, None
                if old is not None:
                    await asyncio.to_thread(old.stop)
                started = time.perf_counter()
                try:
                    self._transport = ProcessTransport(self.path, self.config, self._on_result)
                    await asyncio.to_thread(self._transport.wait_ready)
                    self._failure = None
                    await self._reload_adapters()
                    await asyncio.wait_for(self._warm_up(), 120)
                except Exception as exc:
                    self._failure = f"restart attempt {attempt}: {type(exc).__name__}: {exc}"
                    log.error("engine of %s: %s", self.path, self._failure)
                    continue
                self.restarts += 1
                self.state = "ready"
                log.info(
                    "engine of %s restarted (attempt %d, %.1f s)",
                    self.path,
                    attempt,
                    time.perf_counter() - started,
                )
                return
            self.state = "failed"
            log.critical(
                "engine of %s could not be restarted after %d attempts; giving up", self.path, attempt
            )
        finally:
            self._restarter = None

    async def _reload_adapters(self) -> None:
        """Into a new engine process: the adapters the dead one served (one that no longer loads
        is dropped, and the log says why)."""
        for name, path in list(self.adapters.items()):
            try:
                await self._adapter_command(LoadAdapter(f"adapter-{uuid.uuid4().hex}", name, path))
            except ValidationError as exc:
                self.adapters.pop(name, None)
                log.error(
                    "engine of %s: adapter %s no longer loads after a restart: %s", self.path, name, exc
                )

    async def load_adapter(self, name: str, path: str | Path) -> bool:
        """Serve the PEFT LoRA adapter at `path` as `name` (requests name it in `adapter`),
        replacing an adapter of that name; True if one was replaced. Raises ValidationError
        naming what is wrong when it cannot be served on this model (engine/lora.py)."""
        changed = await self._adapter_command(LoadAdapter(f"adapter-{uuid.uuid4().hex}", name, str(path)))
        self.adapters[name] = str(path)
        return changed.found

    async def unload_adapter(self, name: str) -> bool:
        """Stop serving `name` (running requests finish with it); False if it was not served."""
        self.adapters.pop(name, None)
        changed = await self._adapter_command(UnloadAdapter(f"adapter-{uuid.uuid4().hex}", name))
        return changed.found

    async def _running(self):
        """The transport to the core, started on first use; EngineError once the engine gave up."""
        if self._failure is not None:
            raise EngineError(self._failure)
        if self._transport is None:
            await self.start(warmup=False)
        if self._transport is None:
            raise EngineError("the engine is not running")
        return self._transport

    async def _adapter_command(self, command: LoadAdapter | UnloadAdapter) -> AdapterChanged:
        transport = await self._running()
        stream: asyncio.Queue = asyncio.Queue()
        self._streams[command.request_id] = (asyncio.get_running_loop(), stream)
        try:
            transport.send(command)
            item = await stream.get()
        finally:
            self._streams.pop(command.request_id, None)
        if isinstance(item, BaseException):
            raise item
        return item

    async def shutdown(self) -> None:
        self._closing = True
        if self._restarter is not None:
            self._restarter.cancel()
            await asyncio.gather(self._restarter, return_exceptions=True)
        if self._transport is not None:
            await asyncio.to_thread(self._transport.stop)
            self._transport = None
        if self._core is not None:
            await asyncio.to_thread(self._core.close)
        for loop, stream in list(self._streams.values()):
            loop.call_soon_threadsafe(stream.put_nowait, EngineError("the engine shut down"))

    def prepare(self, request: GenerateRequest) -> list[int]:
        """Validate and tokenize without running anything; raises ValidationError."""
        return prepare_prompt(request, self.tokenizer, self.model_config.vocab_size, self.max_model_len)

    async def generate(self, request: GenerateRequest) -> AsyncIterator[Delta]:
        """Deltas for every choice until each has a finish_reason. Raises ValidationError first
        if the request is invalid. Closing the iterator early aborts the request."""
        prompt_ids = self.prepare(request)
        transport = await self._running()
        rid = request.request_id
        if rid in self._streams:
            raise ValidationError(f"request id {rid!r} is already running", "request_id")
        stream: asyncio.Queue = asyncio.Queue()
        self._streams[rid] = (asyncio.get_running_loop(), stream)
        transport.send(AddRequest(request, prompt_ids))
        remaining = request.params.n
        try:
            while remaining:
                item = await stream.get()
                if isinstance(item, BaseException):
                    remaining = 0
                    raise item
                if item.finish_reason is not None:
                    remaining -= 1
                yield item
        finally:
            self._streams.pop(rid, None)
            if remaining and self._transport is not None:
                self._transport.send(AbortRequest(rid))

    async def embed(
        self, prompts: list[list[int]], pooling: Pooling, request_id: str | None = None
    ) -> np.ndarray:
        """One vector per prompt, [len(prompts), hidden] float32, pooled as `pooling` says (see
        pooling.py). The step loop computes them between two steps, so a large request delays
        the generations running beside it. Raises ValidationError first for an input that is
        empty, longer than the context window or outside the vocabulary. Abandoning the call
        does not stop the computation; its result is dropped."""
        check_embedding_inputs(prompts, self.model_config.vocab_size, self.max_model_len)
        transport = await self._running()
        rid = request_id or f"embed-{uuid.uuid4().hex}"
        if rid in self._streams:
            raise ValidationError(f"request id {rid!r} is already running", "request_id")
        stream: asyncio.Queue = asyncio.Queue()
        self._streams[rid] = (asyncio.get_running_loop(), stream)
        try:
            transport.send(Embed(rid, [list(ids) for ids in prompts], pooling))
            item = await stream.get()
        finally:
            self._streams.pop(rid, None)
        if isinstance(item, BaseException):
            raise item
        return np.frombuffer(item.data, dtype=np.float32).reshape(item.count, item.dim)

    async def abort(self, request_id: str) -> None:
        if self._transport is not None:
            self._transport.send(AbortRequest(request_id))

    async def abort_all(self) -> int:
        """Stop every request in flight: each ends through the aborted path (finish_reason
        "abort"), so its caller can still close it properly. Returns how many there were."""
        running = list(self._streams)
        for rid in running:
            await self.abort(rid)
        return len(running)

    def stats(self) -> EngineStats:
        return self._stats

    def _on_result(self, result: Result | Died) -> None:
        """Called on the transport's thread with each result of the step loop."""
        match result:
            case Stats(stats):
                self._stats = stats
            case Deltas(deltas):
                by_request: dict[str, list] = defaultdict(list)
                for delta in deltas:
                    by_request[delta.request_id].append(delta)
                for rid, items in by_request.items():
                    self._send(rid, items)
            case RequestError():
                self._send(result.request_id, [_exception(result)])
            case Embeddings() | AdapterChanged():
                self._send(result.request_id, [result])
            case Died(message):
                self._failure = message
                for rid in list(self._streams):
                    self._send(rid, [EngineError(message)])
                if self._loop is not None and self.isolation == "process":
                    try:
                        self._loop.call_soon_threadsafe(self._died, message)
                    except RuntimeError:  # the event loop is closed: nobody to serve
                        pass

    def _send(self, rid: str, items: list) -> None:
        target = self._streams.get(rid)
        if target is None:
            return
        loop, stream = target
        try:
            loop.call_soon_threadsafe(_put_all, stream, items)
        except RuntimeError:  # the caller's event loop is gone
            self._streams.pop(rid, None)


def _exception(error: RequestError) -> Exception:
    """What the caller of `generate` raises for an error of the step loop."""
    match error.kind:
        case "validation":
            return ValidationError(error.message, error.param)
        case "request":
            return RequestFailed(error.message)
        case _:
            return EngineError(error.message)


def _put_all(stream: asyncio.Queue, items: list) -> None:
    for item in items:
        stream.put_nowait(item)


class ThreadTransport:
    """Runs the step loop in a daemon thread of this process."""

    def __init__(self, core: EngineCore, on_result):
        self._inbox: queue.Queue = queue.Queue()
        self._thread = threading.Thread(
            target=self._loop, args=(core, on_result), name="stratus-engine", daemon=True
        )
        self._thread.start()

    def _loop(self, core: EngineCore, on_result) -> None:
        try:
            run_step_loop(core, self._next, on_result)
        except FatalEngineError as exc:  # the replica is broken: its callers fail, not hang
            on_result(Died(str(exc)))

    def _next(self, timeout: float | None):
        try:
            return self._inbox.get(timeout=timeout) if timeout else self._inbox.get_nowait()
        except queue.Empty:
            return None

    def send(self, command: Command) -> None:
        self._inbox.put(command)

    def stop(self) -> None:
        self._inbox.put(Stop())
        self._thread.join(10)
