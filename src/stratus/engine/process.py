"""Run the step loop in a child process; commands and results (messages.py) cross
multiprocessing queues."""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import queue
import threading
from pathlib import Path

from .config import EngineConfig
from .messages import Command, Died, LoadFailed, LogLine, Ready, Stop, Stopped
from .types import FatalEngineError

EXIT_FATAL = 70  # the step loop hit a FatalEngineError (a parallel rank died or hung)


class _ForwardLogs(logging.Handler):
    """In the child: each record of the `stratus` loggers goes to the parent as a `LogLine`."""

    def __init__(self, results) -> None:
        super().__init__()
        self.results = results

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.results.put(LogLine(record.levelno, record.name, record.getMessage()))
        except Exception:  # a log line is never worth failing a step for
            self.handleError(record)


def _child_main(path: str, config: EngineConfig, commands, results, log_level: int = logging.INFO) -> None:
    from .core import EngineCore
    from .step_loop import run_step_loop

    logger = logging.getLogger("stratus")
    logger.addHandler(_ForwardLogs(results))
    logger.setLevel(log_level)
    logger.propagate = False
    try:
        core = EngineCore(path, config)
    except Exception as exc:  # report load failures to the parent instead of dying silently
        results.put(LoadFailed(f"{type(exc).__name__}: {exc}"))
        return
    results.put(Ready(core.runner.num_blocks, core.max_model_len, core.layout()))
    parent = os.getppid()

    def next_command(timeout):
        if os.getppid() != parent:  # the parent was killed (kill -9): nobody reads our results
            return Stop()
        try:
            return commands.get(timeout=timeout) if timeout else commands.get_nowait()
        except queue.Empty:
            return None

    try:
        run_step_loop(core, next_command, results.put)
    except FatalEngineError as exc:  # say why, then exit: the parent restarts the engine
        results.put(Died(str(exc)))
        core.close()
        results.close()
        results.join_thread()
        os._exit(EXIT_FATAL)
    core.close()
    results.put(Stopped())


class ProcessTransport:
    def __init__(self, path: Path, config: EngineConfig, on_result):
        ctx = mp.get_context("spawn")  # fork would copy the parent's threads and event loop
        self._commands = ctx.Queue()
        self._results = ctx.Queue()
        self._on_result = on_result
        self._ready = threading.Event()
        self._failure: str | None = None
        self.max_model_len: int | None = None  # the context the child serves, once Ready
        level = logging.getLogger("stratus.engine").getEffectiveLevel()
        self.layout: dict | None = None  # the replica's split, once loaded (messages.Ready)
        self.process = ctx.Process(
            target=_child_main,
            args=(str(path), config, self._commands, self._results, level),
            name="stratus-engine-core",
            daemon=True,
        )
        self.process.start()
        self._reader = threading.Thread(target=self._read, name="stratus-engine-reader", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                result = self._results.get(timeout=1.0)
            except queue.Empty:
                if not self.process.is_alive():
                    self._failure = (
                        self._failure or f"engine process exited with code {self.process.exitcode}"
                    )
                    self._ready.set()
                    self._on_result(Died(self._failure))
                    return
                continue
            match result:
                case Ready(_, max_model_len, layout):
                    self.max_model_len = max_model_len
                    self.layout = layout
                    self._ready.set()
                case LogLine(level, name, message):
                    logging.getLogger(name).log(level, "%s", message)
                case LoadFailed(message):
                    self._failure = message
                    self._ready.set()
                case Stopped():
                    return
                case Died(message):  # why the process is about to exit; reported when it has
                    self._failure = message
                case _:
                    self._on_result(result)

    def wait_ready(self) -> None:
        self._ready.wait()
        if self._failure:
            raise RuntimeError(f"the engine process failed to load the model: {self._failure}")

    def send(self, command: Command) -> None:
        self._commands.put(command)

    def stop(self) -> None:
        if self.process.is_alive():
            self._commands.put(Stop())
            self.process.join(10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)
        self._reader.join(2)
