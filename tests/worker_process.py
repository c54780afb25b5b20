"""`stratus worker` as a child process on a free loopback port, read from its banner.

    with WorkerProcess("demo", "models/demo", secret) as worker:
        worker.wait_serving()
        httpx.get(worker.url + "/internal/v1/health", headers=worker.auth)

Its output is searched for secrets at the end of the session (tests/issued.py), like serve's.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

import httpx

from tests import issued


class WorkerProcess:
    def __init__(
        self, model: str, path: str, secret: str, *args: str, env: dict[str, str] | None = None, verify=True
    ):
        cmd = [
            sys.executable,
            "-m",
            "stratus.cli",
            "worker",
            "--model",
            f"{model}={path}",
            "--port",
            "0",
            *args,
        ]
        self.secret = secret
        self.auth = {"Authorization": f"Bearer {secret}"}
        self.verify = verify  # how health() checks an https worker (an ssl context for mTLS)
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "STRATUS_CLUSTER_SECRET": secret, **(env or {})},
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.url, self.id = self._wait_for_banner()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def _wait_for_banner(self, timeout: float = 60.0) -> tuple[str, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                m = re.search(r"stratus worker (\S+) listening on (https?://127\.0\.0\.1:\d+)", line)
                if m:
                    return m.group(2), m.group(1)
            if self.proc.poll() is not None:
                raise RuntimeError("stratus worker exited early:\n" + self.output)
            time.sleep(0.05)
        raise TimeoutError("no banner from stratus worker:\n" + self.output)

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def health(self) -> httpx.Response:
        return httpx.get(self.url + "/internal/v1/health", headers=self.auth, timeout=5, verify=self.verify)

    def wait_serving(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("stratus worker exited:\n" + self.output)
            try:
                if self.health().status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise TimeoutError("worker not serving:\n" + self.output)

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self) -> None:
        self.proc.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._reader.join(5)
        issued.record_output(self.output)

    def __enter__(self) -> WorkerProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
