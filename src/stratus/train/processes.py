"""A job's workers as local processes (`python -m stratus.train.worker`), the default."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from .spec import TrainSpec

STOP_GRACE_SECONDS = 10.0


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ProcessGroup:
    def __init__(self, procs: list[subprocess.Popen]):
        self.procs = procs
        self.pids = [p.pid for p in procs]

    def poll(self) -> list[int | None]:
        """Each rank's exit status (negative: killed by that signal), None while it runs."""
        return [p.poll() for p in self.procs]

    def describe(self, code: int) -> str:
        return signal.Signals(-code).name if code < 0 else f"exit {code}"

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after a grace period."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class ProcessLauncher:
    def launch(self, spec: TrainSpec, spec_file: str, world: int, attempt: int) -> ProcessGroup:
        port = free_port()
        threads = spec.threads or max(1, (os.cpu_count() or 1) // world)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        module = [sys.executable, "-m", "stratus.train.worker", spec_file]
        return ProcessGroup(
            [
                subprocess.Popen([*module, str(rank), str(world), str(port), str(attempt)], env=env)
                for rank in range(world)
            ]
        )
