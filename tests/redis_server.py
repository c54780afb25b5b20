"""Redis for the limiter tests: the shared one, or servers a test starts itself.

Shared: STRATUS_TEST_REDIS_URL (default redis://127.0.0.1:6379/0). Tests that need it call
`redis_url_or_skip()`; each test uses its own key prefix and deletes its keys afterwards, so the
suite can share a Redis with other work.

Started by the test (`redis-server` and `redis-cli` binaries): `RedisServers(dir)` for one
server or a cluster, `started_redis(dir)` for one server, falling back to the shared one.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator

import pytest

DEFAULT = "redis://127.0.0.1:6379/0"


def redis_url_or_skip() -> str:
    url = os.environ.get("STRATUS_TEST_REDIS_URL", DEFAULT)
    try:
        import redis

        client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
        client.ping()
        client.close()
    except Exception as exc:  # redis-py missing, refused, timed out
        pytest.skip(
            f"Redis at {url} is unreachable ({type(exc).__name__}); start one "
            "(e.g. `redis-server --port 6379`) or set STRATUS_TEST_REDIS_URL=redis://host:port/db"
        )
    return url


def unique_prefix() -> str:
    return f"stratus-test:{uuid.uuid4().hex[:12]}:"


def delete_prefix(url: str, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


# -- Redis servers started by the tests (the `redis-server` binary) -------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ping(port: int, deadline: float, proc) -> None:
    import time

    import redis

    while True:
        try:
            redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.5).ping()
            return
        except redis.RedisError:
            if proc.poll() is not None:
                raise RuntimeError(f"redis-server on port {port} exited with {proc.returncode}") from None
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class RedisServers:
    """`redis-server` processes on free loopback ports, in `workdir`; a cluster if `cluster`.

    with RedisServers(tmp_path, count=3, cluster=True) as servers:
        url = servers.url          # the first node; a cluster client finds the others
    """

    def __init__(self, workdir, count: int = 1, cluster: bool = False, timeout: float = 30.0):
        import shutil

        self.binary = shutil.which("redis-server")
        self.cli = shutil.which("redis-cli")
        if self.binary is None or (cluster and self.cli is None):
            pytest.skip("needs the redis-server (and redis-cli) binaries: apt-get install redis-server")
        self.workdir = workdir
        self.count, self.cluster, self.timeout = count, cluster, timeout
        self.ports: list[int] = []
        self.procs: list = []

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def __enter__(self) -> RedisServers:
        import subprocess
        import time

        deadline = time.monotonic() + self.timeout
        try:
            for i in range(self.count):
                port = _free_port()
                node_dir = self.workdir / f"redis-{i}"
                node_dir.mkdir(parents=True, exist_ok=True)
                args = [self.binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
                args += ["--appendonly", "no", "--dir", str(node_dir)]
                if self.cluster:  # the bus port is port + 10000 unless named: past 65535 for many
                    args += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
                    args += ["--cluster-port", str(_free_port())]
                self.procs.append(
                    subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                )
                self.ports.append(port)
            for port, proc in zip(self.ports, self.procs):
                _wait_ping(port, deadline, proc)
            if self.cluster:
                self._create_cluster(deadline)
        except BaseException:
            self.__exit__()
            raise
        return self

    def _create_cluster(self, deadline: float) -> None:
        import subprocess
        import time

        import redis

        nodes = [f"127.0.0.1:{p}" for p in self.ports]
        subprocess.run(
            [self.cli, "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=max(1.0, deadline - time.monotonic()),
        )
        for port in self.ports:  # every node must know every slot's owner before tests start
            while redis.Redis(host="127.0.0.1", port=port).cluster("info")["cluster_state"] != "ok":
                if time.monotonic() > deadline:
                    raise TimeoutError(f"Redis cluster node {port} did not reach cluster_state:ok")
                time.sleep(0.1)

    def __exit__(self, *exc) -> None:
        for proc in self.procs:
            proc.kill()
        for proc in self.procs:
            proc.wait(timeout=10)


@contextlib.contextmanager
def started_redis(workdir) -> Iterator[str]:
    """The URL of a Redis this test starts (`redis-server` on a free port), or, without the
    binary, of the shared one (STRATUS_TEST_REDIS_URL); skips when neither is there."""
    import shutil

    if shutil.which("redis-server") is None:
        yield redis_url_or_skip()
        return
    with RedisServers(workdir) as servers:
        yield servers.url
