"""`stratus worker` processes: the internal API's auth, WorkerReplica over real HTTP, kill -9.

Each worker is a real `stratus worker` child process on a free loopback port (its engine in a
thread, so kill -9 takes the whole replica down at once, as a lost machine would).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import time
from pathlib import Path

import httpx
import pytest

from stratus.cluster.replica import ReplicaError
from stratus.cluster.worker_replica import WorkerReplica
from stratus.config import demo_model_path
from stratus.engine.tokenizer import Tokenizer
from stratus.engine.types import GenerateRequest, SamplingParams, ValidationError
from tests import issued
from tests.worker_process import WorkerProcess

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]

DEMO = demo_model_path()
if not (DEMO / "config.json").is_file():
    pytest.skip(f"no demo model at {DEMO}: run `make demo-model`", allow_module_level=True)

THREAD = ("--engine-isolation", "thread")
# Streams of 900 tokens that a test interrupts after the first few: capped, so a stalled test
# process cannot let the whole stream finish before the interruption.
PACED = ("--max-tokens-per-second", "100")


@pytest.fixture(scope="module")
def secret() -> str:
    return issued.record(secrets.token_urlsafe(32))


@pytest.fixture(scope="module")
def worker(secret):
    with WorkerProcess("demo", str(DEMO), secret, *THREAD, *PACED) as w:
        w.wait_serving()
        yield w


def _generated(worker: WorkerProcess) -> int:
    return worker.health().json()["stats"]["generated_tokens_total"]


def test_internal_calls_without_the_cluster_secret_are_refused(worker, secret):
    before = _generated(worker)
    wrong = secrets.token_urlsafe(32)
    body = {"prompt": "Once upon a time", "params": {"max_tokens": 4}}
    for headers in ({}, {"Authorization": f"Bearer {wrong}"}, {"Authorization": f"Basic {secret}"}):
        for method, path in [("POST", "/generate"), ("GET", "/health"), ("GET", "/checkpoint-files")]:
            r = httpx.request(
                method, f"{worker.url}/internal/v1{path}", headers=headers, json=body, timeout=10
            )
            assert r.status_code == 401, (method, path, r.text)
            assert r.json()["error"]["code"] == "invalid_cluster_secret"
            assert secret not in r.text
    assert _generated(worker) == before  # nothing ran


def test_worker_replica_generates_and_refuses_bad_requests(worker, secret):
    async def run():
        replica = WorkerReplica(worker.id, "demo", worker.url, secret.encode())
        try:
            await replica.start()
            assert replica.max_model_len == 1024
            assert replica.tokenizer.encode("hello world") == Tokenizer(DEMO).encode("hello world")
            params = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)
            deltas = [
                d async for d in replica.generate(GenerateRequest(prompt="Once upon a time", params=params))
            ]
            ids = [t for d in deltas for t in d.token_ids]
            assert len(ids) == 8 and deltas[-1].finish_reason == "length"
            assert "".join(d.text for d in deltas) == replica.tokenizer.decode(ids)
            with pytest.raises(ValidationError) as refused:
                bad = GenerateRequest(prompt="Once upon a time", params=SamplingParams(max_tokens=0))
                async for _ in replica.generate(bad):
                    pass
            assert refused.value.param == "max_tokens"
            await replica.probe()
            assert replica.stats().generated_tokens_total >= 8
        finally:
            await replica.shutdown()

    asyncio.run(run())


def test_closing_the_stream_aborts_the_request_on_the_worker(worker, secret):
    async def run():
        replica = WorkerReplica(worker.id, "demo", worker.url, secret.encode())
        try:
            await replica.start()
            params = SamplingParams(max_tokens=900, temperature=0, ignore_eos=True)
            stream = replica.generate(GenerateRequest(prompt="Once upon a time", params=params))
            async for delta in stream:
                if delta.completion_tokens >= 3:
                    break
            await stream.aclose()
            for _ in range(100):  # the worker sees the closed connection and aborts
                await replica.probe()
                if replica.stats().running == 0:
                    break
                await asyncio.sleep(0.1)
            assert replica.stats().running == 0
            assert replica.stats().kv_blocks_used == 0
        finally:
            await replica.shutdown()

    asyncio.run(run())


def test_a_worker_killed_mid_stream_is_a_replica_error_not_a_hang(secret):
    with WorkerProcess("demo", str(DEMO), secret, *THREAD, *PACED) as doomed:
        doomed.wait_serving()

        async def run():
            replica = WorkerReplica(doomed.id, "demo", doomed.url, secret.encode(), read_timeout=10)
            await replica.start()
            params = SamplingParams(max_tokens=900, temperature=0, ignore_eos=True)
            got = 0
            started = time.monotonic()
            with pytest.raises(ReplicaError):
                async for delta in replica.generate(
                    GenerateRequest(prompt="Once upon a time", params=params)
                ):
                    got += len(delta.token_ids)
                    if got == 3:
                        doomed.kill9()
            assert got >= 3
            assert time.monotonic() - started < 60  # far below 900 tokens: the stream broke, not ended
            with pytest.raises(ReplicaError):
                await replica.probe()
            await replica.shutdown()

        asyncio.run(run())


def test_worker_refuses_plain_http_off_loopback(secret):
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "stratus.cli", "worker", "--model", f"demo={DEMO}", "--host", "0.0.0.0"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"STRATUS_CLUSTER_SECRET": secret, "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode != 0
    assert "refusing plain HTTP" in out.stderr


def test_mutual_tls_between_gateway_and_worker(secret, tmp_path):
    from stratus.cluster.worker_replica import client_tls
    from stratus.net.tls import issue

    ca = issue("stratus test CA", [], is_ca=True)
    files = {"ca.pem": ca[0]}
    files["worker.pem"], files["worker.key"] = issue("worker", ["127.0.0.1"], ca=ca)
    files["gateway.pem"], files["gateway.key"] = issue("gateway", [], ca=ca, client=True)
    files["stranger.pem"], files["stranger.key"] = issue("stranger", [])  # not signed by the CA
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    p = {name: str(tmp_path / name) for name in files}
    mtls = client_tls(p["ca.pem"], p["gateway.pem"], p["gateway.key"])
    tls_args = ("--tls-cert", p["worker.pem"], "--tls-key", p["worker.key"], "--tls-client-ca", p["ca.pem"])
    with WorkerProcess("demo", str(DEMO), secret, *THREAD, *tls_args, verify=mtls) as w:
        assert w.url.startswith("https://")
        w.wait_serving()

        async def run():
            good = WorkerReplica(w.id, "demo", w.url, secret.encode(), verify=mtls)
            await good.start()
            params = SamplingParams(max_tokens=4, temperature=0, ignore_eos=True)
            deltas = [
                d async for d in good.generate(GenerateRequest(prompt="Once upon a time", params=params))
            ]
            assert deltas[-1].finish_reason == "length"
            await good.shutdown()
            # Without a client certificate, or with one the CA did not sign, the handshake fails.
            for verify in (
                client_tls(p["ca.pem"]),
                client_tls(p["ca.pem"], p["stranger.pem"], p["stranger.key"]),
            ):
                bad = WorkerReplica(w.id, "demo", w.url, secret.encode(), verify=verify)
                with pytest.raises(ReplicaError):
                    await bad.start()
                await bad.shutdown()
            plain = WorkerReplica(w.id, "demo", w.url.replace("https://", "http://"), secret.encode())
            with pytest.raises(ReplicaError):
                await plain.start()
            await plain.shutdown()

        asyncio.run(run())


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (ppid first, start time at [19])."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _children(pid: int) -> dict[int, str]:
    """Child pid -> its start time, so a pid the kernel reuses later is not mistaken for it."""
    found = {}
    for entry in Path("/proc").glob("[0-9]*"):
        fields = _stat(int(entry.name))
        if fields and int(fields[1]) == pid:
            found[int(entry.name)] = fields[19]
    return found


def _still_running(children: dict[int, str]) -> list[int]:
    return [c for c, started in children.items() if (f := _stat(c)) and f[19] == started and f[0] != "Z"]


def test_the_engine_process_of_a_killed_worker_exits_too(secret):
    with WorkerProcess("demo", str(DEMO), secret) as w:  # default: the engine in a process of its own
        w.wait_serving()
        children = _children(w.proc.pid)
        assert children, "no engine process"
        w.kill9()
        deadline = time.monotonic() + 30
        while _still_running(children) and time.monotonic() < deadline:
            time.sleep(0.2)
        alive = _still_running(children)
        for c in alive:  # do not leave it behind even when the test fails (same pid, same start)
            os.kill(c, signal.SIGKILL)
        assert not alive, "the engine process outlived its worker"


def test_a_stalled_worker_is_a_replica_error_after_the_read_timeout(worker, secret):
    async def run():
        replica = WorkerReplica(worker.id, "demo", worker.url, secret.encode(), read_timeout=2)
        await replica.start()
        params = SamplingParams(max_tokens=900, temperature=0, ignore_eos=True)
        got = 0
        try:
            with pytest.raises(ReplicaError, match="timed out"):
                async for delta in replica.generate(
                    GenerateRequest(prompt="Once upon a time", params=params)
                ):
                    got += len(delta.token_ids)
                    if got >= 3 and worker.proc.poll() is None:
                        worker.proc.send_signal(signal.SIGSTOP)  # hung, not dead: nothing more arrives
        finally:
            worker.proc.send_signal(signal.SIGCONT)
            await replica.shutdown()

    asyncio.run(run())
    worker.wait_serving(60)  # it carries on, and the abandoned request was aborted
    deadline = time.monotonic() + 30
    while worker.health().json()["stats"]["running"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert worker.health().json()["stats"]["running"] == 0


def test_a_request_queued_at_a_busy_worker_outlasts_the_read_timeout(secret):
    """The worker answers at once and sends keepalives while a request queues, so the gateway's
    read timeout (silence) does not fire; the separate first-token bound still does."""
    busy = ("--max-num-seqs", "1", "--max-tokens-per-second", "20", "--keepalive-interval", "0.2")
    with WorkerProcess("demo", str(DEMO), secret, *THREAD, *busy) as w:
        w.wait_serving()

        async def run():
            patient = WorkerReplica(w.id, "demo", w.url, secret.encode(), read_timeout=1.5)
            hasty = WorkerReplica(
                w.id, "demo", w.url, secret.encode(), read_timeout=1.5, first_token_timeout=1
            )
            await patient.start()
            await hasty.start()

            async def tokens(replica: WorkerReplica, n: int) -> int:
                params = SamplingParams(max_tokens=n, temperature=0, ignore_eos=True)
                request = GenerateRequest(prompt="Once upon a time", params=params)
                return sum([len(d.token_ids) async for d in replica.generate(request)])

            try:
                first = asyncio.create_task(tokens(patient, 60))  # ~3 s of the only batch slot
                await asyncio.sleep(0.3)
                queued = asyncio.create_task(tokens(patient, 4))  # waits ~3 s > read_timeout
                too_slow = asyncio.create_task(tokens(hasty, 4))
                assert await first == 60
                assert await queued == 4
                with pytest.raises(ReplicaError, match="no token within"):
                    await too_slow
            finally:
                await patient.shutdown()
                await hasty.shutdown()

        asyncio.run(run())


def test_registration_refuses_another_checkpoint_and_a_live_workers_id(worker, secret, tiny_checkpoint):
    from stratus.api.registry import ModelRegistry
    from stratus.cluster.registration import RegistrationConflict, WorkerDirectory

    with WorkerProcess("demo", str(tiny_checkpoint), secret, *THREAD) as impostor:  # not the demo model
        impostor.wait_serving()

        async def run():
            registry = ModelRegistry({"demo": DEMO}, isolation="thread")
            await registry.load_all()  # a local replica of the real demo checkpoint
            directory = WorkerDirectory(registry, secret.encode())
            try:
                with pytest.raises(RegistrationConflict, match="checkpoint"):
                    await directory.register({"id": "odd", "model": "demo", "url": impostor.url})
                await directory.register({"id": "w1", "model": "demo", "url": worker.url})
                # Another URL cannot take over a live worker's id (its traffic would follow).
                with pytest.raises(RegistrationConflict, match="still answers"):
                    await directory.register({"id": "w1", "model": "demo", "url": impostor.url})
                assert sorted(r.id for r in registry.replica_sets()["demo"].replicas) == [
                    "demo/local",
                    "w1",
                ]
                await directory.register({"id": "w1", "model": "demo", "url": worker.url})  # a restart
            finally:
                await directory.close()
                await registry.shutdown()

        asyncio.run(run())
