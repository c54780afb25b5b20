"""Audit trail cost: records per second with fsync-safe writes, and the gateway with audit on/off.

    .venv/bin/python bench/audit.py [--records 2000] [--requests 600] [--pg postgresql://postgres@127.0.0.1:5432/test]

0. The floor: writing ~300 bytes to a plain file and fdatasync'ing it, in the same directory
   (what any durable, fail-closed record must wait for at least once per response): appended
   (the file grows, so the filesystem journals its size too) and overwritten in place (as
   SQLite reuses its WAL after a checkpoint).
1. AuditLog.append in a loop (one transaction per record, as the gateway writes them): SQLite
   in WAL mode with synchronous=FULL (every commit reaches the disk), and PostgreSQL (default
   synchronous_commit=on) in a scratch database that is dropped afterwards.
2. A real gateway (uvicorn on a loopback port, access control on) answering GET /v1/models to
   one sequential client: per-request latency with the audit record written, and with the
   record step turned off, on the same server, interleaved in rounds (and `record_step_p50_ms`:
   the time spent inside the record step itself, timed in the request). Then the same with the
   data directory on /dev/shm (tmpfs: fsync is free), which leaves the CPU cost of auditing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import secrets
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx
import sqlalchemy as sa
import uvicorn

from stratus.api import create_app
from stratus.api.auth import build_access
from stratus.api.pipeline import Pipeline
from stratus.audit.log import AuditEvent, AuditLog
from stratus.config import Settings
from stratus.security.bootstrap import bootstrap
from stratus.security.keys import generate
from stratus.security.stage import IdentityStage
from stratus.store import Store, database_url

TMPFS = "/dev/shm"


def event(i: int) -> AuditEvent:
    return AuditEvent(
        action="POST /v1/chat/completions",
        outcome="ok",
        request_id=f"bench-{i}",
        principal="bench",
        key_prefix="sk-stratus-0123456789ab",
        resource="/v1/chat/completions",
        model="demo",
        status=200,
        prompt_tokens=12,
        completion_tokens=40,
        client="127.0.0.1",
        user_agent="bench/1",
    )


def appends(store: Store, n: int) -> dict:
    log = AuditLog(store, secrets.token_bytes(32))
    log.append(event(-1))  # warm: creates the head row
    times = []
    start, cpu = time.perf_counter(), time.process_time()
    for i in range(n):
        t = time.perf_counter()
        log.append(event(i))
        times.append(time.perf_counter() - t)
    total, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {
        "records": n,
        "records_per_s": round(n / total, 1),
        "p50_ms": round(statistics.median(times) * 1000, 3),
        "p99_ms": round(sorted(times)[int(n * 0.99) - 1] * 1000, 3),
        "cpu_ms_per_record": round(cpu / n * 1000, 3),
    }


def fdatasyncs(directory: str, n: int, append: bool) -> dict:
    """Write one record-sized line and fdatasync, n times: the disk's own durable-write latency."""
    line = b"x" * 300 + b"\n"
    path = Path(directory) / f"fsync-probe-{'append' if append else 'overwrite'}"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else 0), 0o600)
    if not append:  # the blocks exist and are on disk before the timed writes
        os.write(fd, line * n)
        os.fsync(fd)
    times = []
    try:
        for i in range(n):
            t = time.perf_counter()
            if append:
                os.write(fd, line)
            else:
                os.pwrite(fd, line, i * len(line))
            os.fdatasync(fd)
            times.append(time.perf_counter() - t)
    finally:
        os.close(fd)
    return {
        "writes": n,
        "p50_ms": round(statistics.median(times) * 1000, 3),
        "p99_ms": round(sorted(times)[int(n * 0.99) - 1] * 1000, 3),
    }


@contextlib.contextmanager
def pg_scratch(url: str):
    name = f"stratus_bench_{secrets.token_hex(4)}"
    admin = sa.create_engine(
        url.replace("postgresql://", "postgresql+psycopg://"), isolation_level="AUTOCOMMIT"
    )
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name}"))
    base = url.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


def concurrent(base_url, key: str, clients: int, each: int) -> list[float]:
    times: list[float] = []

    def run() -> None:
        with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {key}"}) as c:
            for _ in range(each):
                t = time.perf_counter()
                assert c.get("/v1/models").status_code == 200
                times.append(time.perf_counter() - t)

    threads = [threading.Thread(target=run) for _ in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return times


def gateway(requests: int, rounds: int = 6, where: str | None = None) -> dict:
    with tempfile.TemporaryDirectory(dir=where) as tmp:
        settings = Settings(data_dir=tmp, models={"none": str(Path(tmp) / "no-model")}, lockout_failures=0)
        access = build_access(settings)
        key = generate().secret
        bootstrap(access.store, key)
        app = create_app(settings, identity=IdentityStage(access))
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(app, log_level="critical", lifespan="on"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        state = app.state.stratus
        recorder = state.audit.recorder
        pipelines = {
            "on": state.pipeline,
            "off": Pipeline([s for s in state.pipeline.stages if s is not state.audit]),
        }
        inside: list[float] = []  # time spent in the record step itself (event, commit, hand-offs)
        timing = False
        record = recorder.record

        async def timed(ctx) -> None:
            t = time.perf_counter()
            await record(ctx)
            if timing:
                inside.append(time.perf_counter() - t)

        recorder.record = timed
        samples: dict[str, list[float]] = {"on": [], "off": []}
        walls: dict[str, float] = {}
        cpu = {"on": 0.0, "off": 0.0}  # CPU seconds of this process (client, server, writer)
        try:
            with httpx.Client(
                base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {key}"}
            ) as c:
                for _ in range(200):
                    with contextlib.suppress(httpx.TransportError):
                        if c.get("/health").status_code == 200:
                            break
                    time.sleep(0.05)
                for _ in range(50):
                    c.get("/v1/models")  # warm (and the credential cache)
                timing = True
                for _ in range(rounds):
                    for mode in ("on", "off"):
                        state.pipeline = pipelines[mode]
                        c0 = time.process_time()
                        for _ in range(requests // rounds):
                            t = time.perf_counter()
                            r = c.get("/v1/models")
                            samples[mode].append(time.perf_counter() - t)
                            assert r.status_code == 200, r.text
                        cpu[mode] += time.process_time() - c0
                timing = False
                for mode in ("on", "off"):  # 16 clients at once: group commit shares the fsyncs
                    state.pipeline = pipelines[mode]
                    t0 = time.perf_counter()
                    samples[f"{mode}_16_clients"] = concurrent(c.base_url, key, 16, requests // 4)
                    walls[f"{mode}_16_clients"] = time.perf_counter() - t0
        finally:
            state.pipeline = pipelines["on"]
            server.should_exit = True
            thread.join(10)
        out = {}
        for mode, times in samples.items():
            wall = walls.get(mode, sum(times))
            out[mode] = {
                "requests": len(times),
                "p50_ms": round(statistics.median(times) * 1000, 3),
                "requests_per_s": round(len(times) / wall, 1),
            }
        for mode in ("on", "off"):
            out[mode]["cpu_ms_per_request"] = round(cpu[mode] / len(samples[mode]) * 1000, 3)
        out["audit_cost_p50_ms"] = round(out["on"]["p50_ms"] - out["off"]["p50_ms"], 3)
        # The same cost measured inside the request, one client: less exposed to the noise of two
        # separately sampled latency distributions on a shared machine.
        out["record_step_p50_ms"] = round(statistics.median(inside) * 1000, 3)
        out["audit_cpu_ms_per_request"] = round(
            out["on"]["cpu_ms_per_request"] - out["off"]["cpu_ms_per_request"], 3
        )
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/test", help="'' to skip")
    args = parser.parse_args()
    result: dict = {
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    result["load_average"] = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory() as tmp:
        result["fdatasync_append"] = fdatasyncs(tmp, args.records, append=True)
        result["fdatasync_overwrite"] = fdatasyncs(tmp, args.records, append=False)
        store = Store.open(database_url(tmp))
        result["sqlite_wal_sync_full"] = appends(store, args.records)
        store.close()
    if Path(TMPFS).is_dir():  # the same appends where fsync is free: what the CPU costs
        with tempfile.TemporaryDirectory(dir=TMPFS) as tmp:
            store = Store.open(database_url(tmp))
            result["sqlite_on_tmpfs"] = appends(store, args.records)
            store.close()
    if args.pg:
        try:
            with pg_scratch(args.pg) as url:
                store = Store.open(url)
                result["postgresql"] = appends(store, args.records)
                store.close()
        except Exception as exc:  # noqa: BLE001 - report, do not fail the other numbers
            result["postgresql"] = f"skipped: {type(exc).__name__}: {exc}"
    result["gateway_get_models"] = gateway(args.requests)
    if Path(TMPFS).is_dir():  # the same on memory, where fsync costs nothing: the CPU part alone
        result["gateway_get_models_tmpfs"] = gateway(args.requests, where=TMPFS)
        disk = result["gateway_get_models"]["audit_cost_p50_ms"]
        memory = result["gateway_get_models_tmpfs"]["audit_cost_p50_ms"]
        result["audit_cost_disk_over_tmpfs"] = round(disk / memory, 2) if memory > 0 else None
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
