"""A real uvicorn server on a loopback port, in a thread of the test process.

    with LiveServer(create_app(settings)) as server:
        server.wait_ready()
        httpx.get(server.url + "/health")

The socket is bound before the thread starts (port 0: the kernel picks a free one), so there
is no race for the port. For the `stratus serve` process itself see `ServeProcess`.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import uvicorn

from tests import issued


class LiveServer:
    def __init__(self, app, host: str = "127.0.0.1", drain_timeout: float = 5.0):
        self.app = app
        state = getattr(getattr(app, "state", None), "stratus", None)
        if state is not None:  # its database and logs are searched for secrets at the end
            issued.gateway_dir(state.settings.data_dir)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind((host, 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        config = uvicorn.Config(
            app, log_level="warning", lifespan="on", timeout_graceful_shutdown=drain_timeout
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, name="live-server", daemon=True
        )

    def start(self, timeout: float = 30.0) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def wait_ready(self, timeout: float = 120.0) -> None:
        wait_ready(self.url, timeout)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()

    def __enter__(self) -> LiveServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def wait_ready(url: str, timeout: float = 120.0, process: subprocess.Popen | None = None) -> None:
    """Poll /ready until 200; fail fast if a model failed or the process died."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before it was ready")
        try:
            r = httpx.get(url + "/ready", timeout=5)
            if r.status_code == 200:
                return
            last = r.json()
            if last.get("status") == "failed":
                raise RuntimeError(f"a model failed to load: {last}")
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} not ready after {timeout} s (last /ready: {last})")


class ServeProcess:
    """`stratus serve` as a child process on a free loopback port, read from its banner."""

    def __init__(self, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None):
        cmd = [sys.executable, "-m", "stratus.cli", "serve", "--port", "0", *args]
        if "--data-dir" in args[:-1]:  # searched for secrets and prompts at the end, as above
            issued.gateway_dir(args[args.index("--data-dir") + 1])
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            cwd=cwd,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.url = self._wait_for_banner()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def _wait_for_banner(self, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                m = re.search(r"listening on (http://127\.0\.0\.1:\d+)", line)
                if m:
                    return m.group(1)
            if self.proc.poll() is not None:
                raise RuntimeError("stratus serve exited early:\n" + self.output)
            time.sleep(0.05)
        raise TimeoutError("no banner from stratus serve:\n" + self.output)

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_ready(self, timeout: float = 120.0) -> None:
        wait_ready(self.url, timeout, self.proc)

    def terminate(self) -> None:
        self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = 60.0) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(5)
        self._record_output()
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._reader.join(5)
        self._record_output()

    def _record_output(self) -> None:
        if not getattr(self, "_recorded", False):  # searched for secrets at the end of the session
            self._recorded = True
            issued.record_output(self.output)
