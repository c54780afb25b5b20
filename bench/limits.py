#!/usr/bin/env python3
"""Limits benchmark: what a limit decision costs, in process and through Redis, and what limits
and the usage ledger cost a gateway request.

    .venv/bin/python bench/limits.py                       # Redis at STRATUS_TEST_REDIS_URL or :6379
    .venv/bin/python bench/limits.py --quick               # fewer iterations
    .venv/bin/python bench/limits.py --redis-url none      # skip the Redis part
    .venv/bin/python bench/limits.py --no-cluster          # skip the Redis Cluster part

In one run:

(a) decisions/s: `plan_request` + one atomic acquire + one reconcile, with three rules that
    apply (a key's rpm/tpm, a team's daily tokens and monthly budget, a model's concurrency:
    7 counters), one at a time (latency p50/p99) and 64 in flight (throughput); in process
    (MemoryLimiter), through Redis (RedisLimiter: one Lua script call each way), and through a
    three-node Redis Cluster on loopback that the benchmark starts (all counters in one slot).
(b) the stage alone: LimitsStage.admit (the limit cost) and .settle (reconcile + the ledger
    row, an fsync'd SQLite insert) per request, p50/p99, against the default SQLite store.
(c) the gateway: the same small completion (token-id prompt, max_tokens 1) through one live
    gateway whose pipeline is swapped between limits+ledger on and off, one request at a time,
    interleaved (on, off, off, on, ...), as latency p50/p99; then 32 concurrent clients, as
    requests/s (best of two rounds each).

Results print and go to bench/results/limits-<time>.json with the machine facts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (bench/common.py)

REPO = common.REPO
sys.path.insert(0, str(REPO))

from stratus.api import create_app  # noqa: E402
from stratus.api.pipeline import Pipeline  # noqa: E402
from stratus.config import Settings  # noqa: E402
from stratus.limits.memory import MemoryLimiter  # noqa: E402
from stratus.limits.rules import LimitRule, parse_prices, plan_request  # noqa: E402
from stratus.limits.stage import LimitsStage  # noqa: E402
from stratus.request.context import RequestContext, Usage  # noqa: E402
from stratus.request.stage import Stage  # noqa: E402
from stratus.security.identity import Principal  # noqa: E402
from tests.live_server import LiveServer  # noqa: E402

MODEL = "bench"
PRINCIPAL = Principal(user="bench", team="ml", key_id="key_bench", models=None)
RULES = [
    LimitRule("key", "key_bench", rpm=10**9, tpm=10**12),
    LimitRule("team", "ml", tokens_per_day=10**12, budget_usd_per_month=10**8),
    LimitRule("model", MODEL, concurrent=10**6),
]
PRICES = parse_prices(f"{MODEL}=0.5/1.5")
TINY = dict(
    hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, vocab_size=512, max_position_embeddings=256
)


async def one_decision(limiter) -> float:
    t = time.perf_counter()
    plan = plan_request(RULES, PRINCIPAL, MODEL, 100, 200, PRICES, prefix="{bench:lim}:")
    decision = await limiter.acquire(plan.items)
    assert decision.allowed
    await limiter.adjust(plan.reconcile(150, 100))
    return time.perf_counter() - t


async def decisions(limiter, n: int, in_flight: int = 64) -> dict:
    for _ in range(min(200, n)):
        await one_decision(limiter)
    lat = [await one_decision(limiter) for _ in range(n)]
    t = time.perf_counter()
    sem = asyncio.Semaphore(in_flight)

    async def bounded():
        async with sem:
            await one_decision(limiter)

    await asyncio.gather(*(bounded() for _ in range(n)))
    wall = time.perf_counter() - t
    return {
        "sequential_p50_us": round(common.pct(lat, 0.5) * 1e6, 1),
        "sequential_p99_us": round(common.pct(lat, 0.99) * 1e6, 1),
        "sequential_per_s": round(len(lat) / sum(lat)),
        "concurrent_per_s": round(n / wall),
        "in_flight": in_flight,
    }


class Anyone(Stage):
    async def identify(self, ctx):
        ctx.principal = PRINCIPAL


async def hook_costs(n: int, data_dir: str) -> dict:
    app = create_app(
        Settings(metering=True, data_dir=data_dir, model_prices=f"{MODEL}=0.5/1.5"), identity=Anyone()
    )
    pipeline = app.state.stratus.pipeline
    app.state.stratus.meter.static_rules = list(RULES)
    admit, account = [], []
    for i in range(n):
        ctx = RequestContext(request_id=f"r{i}", method="POST", path="/v1/completions", client=None)
        ctx.principal, ctx.model = PRINCIPAL, MODEL
        t = time.perf_counter()
        await pipeline.admit(ctx, 100, 200)
        t2 = time.perf_counter()
        await pipeline.settle(ctx, Usage(prompt_tokens=100, completion_tokens=150))
        admit.append(t2 - t)
        account.append(time.perf_counter() - t2)
        await pipeline.record(ctx)  # as the gateway calls it last: forgets the reservation
    return {
        "admit_p50_ms": round(common.pct(admit, 0.5) * 1e3, 3),
        "admit_p99_ms": round(common.pct(admit, 0.99) * 1e3, 3),
        "account_p50_ms": round(common.pct(account, 0.5) * 1e3, 3),
        "account_p99_ms": round(common.pct(account, 0.99) * 1e3, 3),
    }


def gateway(path: Path, n: int, concurrency: int, data_dir: str) -> dict:
    """One live gateway; limits+ledger on or off by swapping its pipeline between requests, so both
    sides share one server, one event loop and one engine."""
    settings = Settings(
        models={MODEL: str(path)}, engine_isolation="thread", metering=True, data_dir=data_dir
    )
    app = create_app(settings, identity=Anyone())
    state = app.state.stratus
    metered = state.pipeline
    state.meter.static_rules = list(RULES)
    pipelines = {
        "on": metered,
        "off": Pipeline([s for s in metered.stages if not isinstance(s, LimitsStage)]),
    }
    body = {"model": MODEL, "prompt": [5, 6, 7], "max_tokens": 1}
    lat: dict[str, list[float]] = {"on": [], "off": []}
    rates: dict[str, list[float]] = {"on": [], "off": []}
    with LiveServer(app) as server:
        server.wait_ready(600)
        url = server.url + "/v1/completions"
        with httpx.Client(timeout=60) as c:
            for i in range(n + 20):
                for name in ("on", "off") if i % 2 else ("off", "on"):
                    state.pipeline = pipelines[name]
                    t = time.perf_counter()
                    r = c.post(url, json=body)
                    if i >= 20:
                        lat[name].append(time.perf_counter() - t)
                    assert r.status_code == 200, r.text
        for _ in range(2):
            for name in ("on", "off"):
                state.pipeline = pipelines[name]
                rates[name].append(asyncio.run(rate(url, body, n, concurrency)))
        state.pipeline = metered
    return {
        name: {
            "p50_ms": round(common.pct(lat[name], 0.5) * 1e3, 2),
            "p99_ms": round(common.pct(lat[name], 0.99) * 1e3, 2),
            "requests_per_s": max(rates[name]),
        }
        for name in ("on", "off")
    } | {"concurrency": concurrency, "requests": n}


async def rate(url: str, body: dict, n: int, concurrency: int) -> float:
    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=concurrency)) as c:

        async def one():
            async with sem:
                r = await c.post(url, json=body)
                assert r.status_code == 200, r.text

        t = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(n)))
        return round(n / (time.perf_counter() - t), 1)


async def via_redis(url: str, n: int) -> dict:
    from stratus.limits.redis import RedisLimiter

    limiter = RedisLimiter(url)  # a cluster node's URL gives a cluster client
    try:
        return await decisions(limiter, n) | {"cluster": limiter.cluster}
    finally:
        keys = [k async for k in limiter.client.scan_iter(match="{bench:lim}:*")]
        if keys:
            await limiter.client.delete(*keys)
        await limiter.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--redis-url", default=os.environ.get("STRATUS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    ap.add_argument("--decisions", type=int, default=20000)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument(
        "--no-cluster",
        dest="cluster",
        action="store_false",
        help="Skip the Redis Cluster part (a 3-node cluster started from the redis-server binary).",
    )
    args = ap.parse_args()
    if args.quick:
        args.decisions, args.requests = 2000, 60

    result: dict = {"machine": common.machine_info(), "rules": [r.name for r in RULES]}
    result["memory"] = asyncio.run(decisions(MemoryLimiter(), args.decisions))
    print("in process:", result["memory"], flush=True)
    if args.redis_url != "none":
        result["redis"] = asyncio.run(via_redis(args.redis_url, max(1000, args.decisions // 5)))
        print("redis:", result["redis"], flush=True)
    if args.cluster and shutil.which("redis-server") and shutil.which("redis-cli"):
        from tests.redis_server import RedisServers

        with tempfile.TemporaryDirectory() as tmp, RedisServers(Path(tmp), 3, cluster=True) as servers:
            result["redis_cluster"] = asyncio.run(via_redis(servers.url, max(1000, args.decisions // 5)))
        print("redis cluster (3 nodes):", result["redis_cluster"], flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        result["hooks"] = asyncio.run(hook_costs(max(200, args.requests), tmp + "/hooks"))
        print("hooks:", result["hooks"], flush=True)
        path = common.random_llama("limits-tiny", TINY)
        result["gateway"] = gateway(path, args.requests, args.concurrency, tmp + "/gateway")
        print("gateway:", result["gateway"], flush=True)
    out = REPO / "bench" / "results" / f"limits-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print("wrote", out)


if __name__ == "__main__":
    main()
