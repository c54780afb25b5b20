#!/usr/bin/env python3
"""Where a gateway request's CPU goes: stratus in this process, cProfile'd under wrk load.

    .venv/bin/python bench/gateway_profile.py                          # prints the table
    .venv/bin/python bench/gateway_profile.py --out docs/benchmarks/gateway-profile-before

The gateway of bench/gateway.py (`stratus serve --no-local-models`, the instant upstream as the
model `instant`, a member's key, limits, metering and audit on) is built here with the same
`build_server` the command uses, and run on this process's main thread. After a warm-up, the
event loop thread is profiled with cProfile for `--seconds` of wrk load at `--connections`,
timed by the thread's CPU clock (`time.thread_time`), so time spent runnable but preempted by
other processes on a busy machine is not counted: the figures are CPU per request. The profile
itself slows every Python call, so read the shares, not the absolute milliseconds.

Writes OUT.prof (pstats) and OUT.txt (the heaviest functions by own and by cumulative time,
per request).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import io
import os
import pstats
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import gateway  # noqa: E402  (bench/gateway.py)

sys.path.insert(0, str(common.REPO))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--out", default=None, help="write OUT.prof and OUT.txt")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument(
        "--no-gc-freeze", action="store_true", help="skip the gc.freeze() `stratus serve` does at start-up"
    )
    args = parser.parse_args()

    from stratus.cli.serve import build_server, freeze_heap
    from stratus.config import Settings

    upstream = gateway.Listening([sys.executable, str(common.REPO / "bench" / "instant_upstream.py")])
    work = Path(tempfile.mkdtemp(prefix="stratus-gateway-profile-"))
    admin_key = gateway._fake_key()
    os.environ["STRATUS_ADMIN_KEY"] = admin_key
    settings = Settings(data_dir=str(work), local_models=False, port=0, log_level="warning")
    server, sock = build_server(settings)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    profile = cProfile.Profile(time.thread_time)
    loop_ready = threading.Event()
    loop: list[asyncio.AbstractEventLoop] = []
    result: dict = {}

    async def on_loop() -> None:
        loop.append(asyncio.get_running_loop())
        loop_ready.set()

    original_startup = server.startup

    async def startup(sockets=None):
        await on_loop()
        await original_startup(sockets)

    server.startup = startup  # type: ignore[method-assign]

    def drive() -> None:
        try:
            loop_ready.wait(60)
            while not server.started:
                time.sleep(0.05)
            setup = gateway.Stratus.__new__(gateway.Stratus)
            setup.url, setup.admin_key, setup.data_dir = url, admin_key, work
            key = _member_key(setup, upstream.url)
            target = url + "/v1/chat/completions"
            gateway.wrk(target, key, args.connections, 3)  # warm-up
            loop[0].call_soon_threadsafe(profile.enable)
            gc_times.clear()
            before = thread_cpu()
            r = gateway.wrk(target, key, args.connections, args.seconds)
            after = thread_cpu()
            result["gc"] = summarize_gc(gc_times)
            loop[0].call_soon_threadsafe(profile.disable)
            result["threads"] = {n: after[n] - before.get(n, 0.0) for n in after}
            time.sleep(0.2)
            result.update(r)
        finally:
            server.should_exit = True

    gc_times: list[tuple[int, float]] = []
    gc_started: list[float] = [0.0]

    def on_gc(phase: str, info: dict) -> None:
        if phase == "start":
            gc_started[0] = time.perf_counter()
        else:
            gc_times.append((info["generation"], time.perf_counter() - gc_started[0]))

    gc.callbacks.append(on_gc)
    if not args.no_gc_freeze:
        freeze_heap()  # as run_server does
    threading.Thread(target=drive, daemon=True).start()
    server.run(sockets=[sock])
    upstream.stop()
    requests = max(result.get("requests", 1), 1)
    out = io.StringIO()
    stats = pstats.Stats(profile, stream=out)
    total = sum(v[2] for v in stats.stats.values())  # type: ignore[attr-defined]
    print(
        f"wrk: {result.get('rps')} req/s at {args.connections} connections under the profiler; "
        f"{requests} requests; profiled CPU {1000 * total / requests:.3f} ms/request",
        file=out,
    )
    print(f"garbage collections during the load (generation: count, ms): {result.get('gc')}", file=out)
    print("CPU ms per request by thread (this process):", file=out)
    for name, cpu in sorted(result.get("threads", {}).items(), key=lambda kv: -kv[1]):
        if cpu > 0:
            print(f"  {1000 * cpu / requests:8.3f}  {name}", file=out)
    stats.sort_stats("tottime").print_stats(args.top)
    stats.sort_stats("cumulative").print_stats(args.top * 2)
    text = out.getvalue()
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        stats.dump_stats(args.out + ".prof")
        Path(args.out + ".txt").write_text(text)
        print(f"profile: {args.out}.prof, {args.out}.txt")


def summarize_gc(times: list[tuple[int, float]]) -> dict:
    out: dict = {}
    for gen, seconds in times:
        count, total = out.get(gen, (0, 0.0))
        out[gen] = (count + 1, round(total + 1000 * seconds, 1))
    return out


def thread_cpu() -> dict[str, float]:
    """CPU seconds of each thread of this process so far, by Python thread name (/proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    names = {t.native_id: t.name for t in threading.enumerate()}
    out: dict[str, float] = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        name = names.get(int(tid), "native")
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def _member_key(setup: gateway.Stratus, upstream: str) -> str:
    """The same setup as bench/gateway.py's Stratus, on a server already running."""
    with setup._admin() as c:
        for method, path, body in gateway.setup_steps(upstream):
            c.request(method, path, json=body).raise_for_status()
        member = c.post("/admin/keys", json={"name": "load", "user": "member", "team": gateway.TEAM}).json()
    r = httpx.post(
        setup.url + "/v1/chat/completions",
        json=gateway.BODY,
        headers={"Authorization": f"Bearer {member['secret']}"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    return member["secret"]


if __name__ == "__main__":
    main()
