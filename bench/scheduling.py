#!/usr/bin/env python3
"""Routing over replicas of unequal capacity: round robin, power of two choices and
capacity-aware routing (stratus.cluster.router.Router), compared in one run.

    .venv/bin/python bench/scheduling.py                 # both parts (about 10 minutes)
    .venv/bin/python bench/scheduling.py --real-only     # (a) only
    .venv/bin/python bench/scheduling.py --sim-only      # (b) only
    .venv/bin/python bench/scheduling.py --quick         # a smoke run of both, small

(a) Real: five engines on the demo model (models/demo), each step loop in a process of its own,
    throttled with EngineConfig.max_tokens_per_second to 10/15/20/25/30 output tokens/s, so
    their capacities stand as 2:3:4:5:6 (low enough that a busy 2-core machine still delivers
    them when a replica's batch runs down to a few sequences; 20..60 fell 10-25% short at load
    10-15). A batch of N (200) requests with mixed prompt lengths (16-256 tokens) and
    max_tokens (8-56), ignore_eos so the work is known, all submitted at once (closed batch;
    --arrivals poisson for open-loop arrivals), routed by each policy in turn through the same
    Router the gateway uses (priors = the throttle rates; "capacity-learned": no priors).
    Per policy: makespan, throughput, p50/p95 latency (arrival to last token) next to the
    ideal lower bound = total output tokens / total capacity; the ratios capacity-aware
    makespan / bound and round-robin p95 / capacity-aware p95; each replica's share of the
    tokens, the rate it actually achieved, and the router's capacity for it at the end.
(b) Simulation: the same Router class on a simulated clock (no sleeps), 10,000 replicas with
    capacities drawn from the same levels (--rates) and 1,000,000 requests, event-driven FIFO
    replicas, in two modes: a batch (all at t=0; makespan vs bound, max/mean of the replicas'
    finishing times) and open-loop Poisson arrivals at 90% of total capacity (latency
    percentiles, and the p95 latency over the p95 of the requests' own service times). Reports
    the router's decision cost per request (pick(), microseconds, measured around each call).

Results print as tables and go to bench/results/scheduling-<time>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from stratus.cluster.router import Router, request_work  # noqa: E402

POLICIES = ("round_robin", "p2c", "capacity")
DEMO = common.REPO / "models" / "demo"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- (a) real engines ---------------------------------------------------------------------------


async def run_policy(
    policy: str, engines: dict, rates: dict, workload, arrivals: list[float], seed: int
) -> dict:
    """`policy` is a Router policy; "capacity-learned" is capacity-aware without priors (every
    replica starts at the default and the router learns the rest)."""
    from stratus.engine import GenerateRequest, SamplingParams

    learned = policy.endswith("-learned")
    router = Router(policy.removesuffix("-learned"), seed=seed)
    for rid, rate in rates.items():
        router.add(rid, None if learned else rate)
    t0 = time.perf_counter()

    async def one(i: int) -> tuple[str, float, float, int]:
        if arrivals[i] > 0:
            await asyncio.sleep(arrivals[i] - (time.perf_counter() - t0))
        arrived = time.perf_counter()
        prompt, max_tokens = workload.prompts[i], workload.max_tokens[i]
        work = request_work(len(prompt), max_tokens)
        rid = router.pick(work)
        router.begin(rid, work)
        params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
        request = GenerateRequest(prompt_token_ids=prompt, params=params, request_id=f"{policy}-{i}")
        start, tokens = time.perf_counter(), 0
        async for delta in engines[rid].generate(request):
            tokens += len(delta.token_ids)
            router.progress(rid, len(delta.token_ids))
        done = time.perf_counter()
        router.end(rid, work, tokens, done - start, ok=True)
        return rid, done - t0, done - arrived, tokens

    results = await asyncio.gather(*(one(i) for i in range(len(workload.prompts))))
    latencies = [lat for _, _, lat, _ in results]
    tokens = sum(t for *_, t in results)
    makespan = max(end for _, end, _, _ in results)
    per_replica = {}
    learned_caps = router.snapshot()
    for rid, rate in rates.items():
        mine = [(end, t) for r, end, _, t in results if r == rid]
        got = sum(t for _, t in mine)
        last = max((end for end, _ in mine), default=0.0)
        per_replica[rid] = {
            "rate": rate,
            "requests": len(mine),
            "token_share": round(got / tokens, 4),
            "finished_at_s": round(last, 2),
            "achieved_tokens_per_s": round(got / last, 1) if last else 0.0,
            "router_capacity_at_end": learned_caps[rid]["capacity"],
        }
    return {
        "policy": policy,
        "makespan_s": round(makespan, 2),
        "throughput_tokens_per_s": round(tokens / makespan, 1),
        "p50_latency_s": round(percentile(latencies, 0.50), 2),
        "p95_latency_s": round(percentile(latencies, 0.95), 2),
        "mean_latency_s": round(statistics.fmean(latencies), 2),
        "output_tokens": tokens,
        "replicas": per_replica,
    }


async def real_part(args) -> dict:
    from stratus.engine import Engine, EngineConfig

    rates = {f"r{i}": float(r) for i, r in enumerate(args.rates)}
    engines = {}
    for rid, rate in rates.items():
        config = EngineConfig(
            max_tokens_per_second=rate, num_threads=1, kv_cache_memory_mb=64, max_num_seqs=256
        )
        engines[rid] = Engine(DEMO, config, isolation=args.isolation)
    await asyncio.gather(*(e.start() for e in engines.values()))
    max_len = next(iter(engines.values())).max_model_len
    workload = common.make_workload(args.requests, 4096, (16, 256), (8, 56), max_len, seed=args.seed)
    total_capacity = sum(rates.values())
    bound = workload.output_tokens / total_capacity
    if args.arrivals == "poisson":  # open loop at --load of the total capacity
        rng = random.Random(args.seed + 1)
        rate = args.load * total_capacity / statistics.fmean(workload.max_tokens)
        arrivals, t = [], 0.0
        for _ in workload.max_tokens:
            t += rng.expovariate(rate)
            arrivals.append(t)
        how = f"Poisson arrivals at {args.load:.0%} of capacity (last at {t:.1f} s)"
        bound = max(bound, t)
    else:
        arrivals = [0.0] * len(workload.max_tokens)
        how = "all at once"
    print(
        f"\n(a) real: {len(rates)} demo-model engines throttled to "
        f"{'/'.join(f'{r:g}' for r in rates.values())} tokens/s; {args.requests} requests "
        f"({workload.output_tokens} output tokens, {workload.prompt_tokens} prompt tokens), {how}; "
        f"ideal makespan {bound:.1f} s (total output / total capacity = "
        f"{workload.output_tokens / total_capacity:.1f} s)"
    )
    runs = []
    try:
        for policy in args.policies:
            load = [round(x, 2) for x in common.load_average()]
            result = await run_policy(policy, engines, rates, workload, arrivals, args.seed)
            result["load_average_before"] = load
            result["makespan_over_bound"] = round(result["makespan_s"] / bound, 3)
            runs.append(result)
            shares = " ".join(
                f"{v['token_share']:.3f}@{v['achieved_tokens_per_s']:g}/s"
                for v in result["replicas"].values()
            )
            print(
                f"  {policy:<16} makespan {result['makespan_s']:6.1f} s ({result['makespan_over_bound']:.2f}x "
                f"bound)  {result['throughput_tokens_per_s']:6.1f} tok/s  p50 {result['p50_latency_s']:6.1f} s  "
                f"p95 {result['p95_latency_s']:6.1f} s  load {load[0]}  shares {shares}"
            )
    finally:
        await asyncio.gather(*(e.shutdown() for e in engines.values()))
    out = {
        "rates": rates,
        "requests": args.requests,
        "arrivals": how,
        "output_tokens": workload.output_tokens,
        "prompt_tokens": workload.prompt_tokens,
        "bound_s": round(bound, 2),
        "capacity_share": {rid: round(r / total_capacity, 4) for rid, r in rates.items()},
        "runs": runs,
    }
    by = {r["policy"]: r for r in runs}
    if "capacity" in by:
        cap = by["capacity"]
        out["capacity_makespan_over_bound"] = cap["makespan_over_bound"]
        for other in ("round_robin", "p2c"):
            if other in by:
                out[f"{other}_p95_over_capacity_p95"] = round(
                    by[other]["p95_latency_s"] / cap["p95_latency_s"], 2
                )
                out[f"{other}_makespan_over_capacity_makespan"] = round(
                    by[other]["makespan_s"] / cap["makespan_s"], 2
                )
        print(
            f"  capacity-aware makespan / bound = {out['capacity_makespan_over_bound']:.3f} (target <= 1.10); "
            + "; ".join(
                f"{o} p95 / capacity p95 = {out[f'{o}_p95_over_capacity_p95']:.2f}"
                for o in ("round_robin", "p2c")
                if f"{o}_p95_over_capacity_p95" in out
            )
            + " (target round robin >= 1.5)"
        )
    return out


# -- (b) simulation -----------------------------------------------------------------------------


class SimClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def sim_setup(replicas: int, requests: int, seed: int, levels: list[float]):
    rng = random.Random(seed)
    caps = [rng.choice(levels) for _ in range(replicas)]
    works = [float(rng.randint(16, 256)) for _ in range(requests)]
    return caps, works


def sim_router(policy: str, caps: list[float], seed: int, clock: SimClock) -> tuple[Router, dict[str, int]]:
    """A router over replicas n0.. with these capacities, and each replica's index in `caps`."""
    learned = policy.endswith("-learned")  # equal priors; capacities learned as it runs
    router = Router(policy.removesuffix("-learned"), seed=seed, clock=clock, learn=learned)
    ids = [f"n{i}" for i in range(len(caps))]
    for rid, cap in zip(ids, caps):
        router.add(rid, None if learned else cap)
    return router, {rid: i for i, rid in enumerate(ids)}


def sim_batch(policy: str, caps: list[float], works: list[float], seed: int) -> dict:
    """All requests at t=0: only picks and begins; each replica then drains at its speed."""
    clock = SimClock()
    router, index = sim_router(policy, caps, seed, clock)
    assigned = [0.0] * len(caps)
    cost = 0.0
    perf = time.perf_counter
    for w in works:
        t = perf()
        rid = router.pick(w)
        cost += perf() - t
        router.begin(rid, w)
        assigned[index[rid]] += w
    finish = [a / c for a, c in zip(assigned, caps)]
    bound = sum(works) / sum(caps)
    return {
        "policy": policy,
        "mode": "batch",
        "pick_us": round(cost / len(works) * 1e6, 2),
        "makespan_over_bound": round(max(finish) / bound, 4),
        "max_over_mean_finish": round(max(finish) / statistics.fmean(finish), 4),
        "bound_s": round(bound, 2),
    }


def sim_open(policy: str, caps: list[float], works: list[float], seed: int, load: float) -> dict:
    """Poisson arrivals at `load` x total capacity; FIFO replicas; completions call end()."""
    clock = SimClock()
    router, index = sim_router(policy, caps, seed, clock)
    rng = random.Random(seed + 1)
    rate = load * sum(caps) / statistics.fmean(works)
    busy_until = [0.0] * len(caps)
    events: list[tuple[float, int, str, float, float]] = []
    latencies, services = [], []
    cost = 0.0
    perf = time.perf_counter
    now = 0.0
    for seq, w in enumerate(works):
        now += rng.expovariate(rate)
        while events and events[0][0] <= now:
            done, _, rid, work, start = heapq.heappop(events)
            clock.now = done
            router.end(rid, work, int(work), done - start, ok=True)
        clock.now = now
        t = perf()
        rid = router.pick(w)
        cost += perf() - t
        router.begin(rid, w)
        i = index[rid]
        finish = max(now, busy_until[i]) + w / caps[i]
        busy_until[i] = finish
        latencies.append(finish - now)
        services.append(w / caps[i])
        heapq.heappush(events, (finish, seq, rid, w, now))
    return {
        "policy": policy,
        "mode": f"open loop, Poisson at {load:.0%} of capacity",
        "pick_us": round(cost / len(works) * 1e6, 2),
        "p50_latency_s": round(percentile(latencies, 0.5), 2),
        "p95_latency_s": round(percentile(latencies, 0.95), 2),
        "p99_latency_s": round(percentile(latencies, 0.99), 2),
        "p95_service_s": round(percentile(services, 0.95), 2),
        "p95_latency_over_p95_service": round(percentile(latencies, 0.95) / percentile(services, 0.95), 3),
        "simulated_seconds": round(now, 1),
    }


def sim_part(args) -> dict:
    caps, works = sim_setup(args.sim_replicas, args.sim_requests, args.seed, [float(r) for r in args.rates])
    print(
        f"\n(b) simulation: {args.sim_replicas:,} replicas (capacities drawn from "
        f"{'/'.join(f'{r:g}' for r in args.rates)} tok/s, total {sum(caps):,.0f}), "
        f"{args.sim_requests:,} requests of 16-256 tokens, simulated clock"
    )
    runs = []
    for policy in args.policies:
        for mode in ("batch", "open"):
            wall = time.perf_counter()
            if mode == "batch":
                r = sim_batch(policy, caps, works, args.seed)
                detail = f"makespan {r['makespan_over_bound']:.4f}x bound, max/mean finish {r['max_over_mean_finish']:.4f}"
            else:
                r = sim_open(policy, caps, works, args.seed, args.sim_load)
                detail = (
                    f"p50 {r['p50_latency_s']:g} s, p95 {r['p95_latency_s']:g} s, p99 {r['p99_latency_s']:g} s "
                    f"(p95 latency / p95 service {r['p95_latency_over_p95_service']:g})"
                )
            r["wall_s"] = round(time.perf_counter() - wall, 1)
            runs.append(r)
            print(
                f"  {policy:<12} {mode:<5} pick {r['pick_us']:7.2f} us/request  {detail}  [{r['wall_s']} s]"
            )
    return {
        "replicas": args.sim_replicas,
        "requests": args.sim_requests,
        "load": args.sim_load,
        "capacity_levels": args.rates,
        "runs": runs,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke run, not a measurement")
    p.add_argument("--real-only", action="store_true")
    p.add_argument("--sim-only", action="store_true")
    p.add_argument("--requests", type=int, default=200, help="(a) requests per policy")
    p.add_argument("--rates", default="10,15,20,25,30", help="(a) throttles; (b) capacity levels (tok/s)")
    p.add_argument("--policies", default=",".join(POLICIES))
    p.add_argument(
        "--isolation",
        choices=("process", "thread"),
        default="process",
        help="(a) each engine's step loop in a process of its own (as serve runs it) or a thread",
    )
    p.add_argument(
        "--arrivals",
        choices=("batch", "poisson"),
        default="batch",
        help="(a) all requests at once, or open-loop Poisson arrivals at --load of total capacity",
    )
    p.add_argument("--load", type=float, default=0.8, help="(a) open-loop load, fraction of capacity")
    p.add_argument("--sim-replicas", type=int, default=10_000)
    p.add_argument("--sim-requests", type=int, default=1_000_000)
    p.add_argument("--sim-load", type=float, default=0.9, help="(b) open-loop load, fraction of capacity")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="result JSON (default bench/results/scheduling-<time>.json)")
    args = p.parse_args()
    args.rates = [float(r) for r in args.rates.split(",")]
    args.policies = [x.strip() for x in args.policies.split(",") if x.strip()]
    if args.quick:
        args.requests = min(args.requests, 30)
        args.sim_replicas = min(args.sim_replicas, 500)
        args.sim_requests = min(args.sim_requests, 20_000)

    machine = common.machine_info()
    print(
        f"machine: {machine['cpu']}, {machine['cores']} cores, {machine['ram_gib']} GiB; "
        f"{machine['date']}; commit {machine['git_commit']}; load average {machine['load_average']}"
    )
    report: dict = {"machine": machine, "args": {k: str(v) for k, v in vars(args).items()}}
    if not args.sim_only:
        report["real"] = asyncio.run(real_part(args))
    if not args.real_only:
        report["simulation"] = sim_part(args)
    report["load_average_end"] = [round(x, 2) for x in common.load_average()]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    common.write_report(report, args.out or common.RESULTS_DIR / f"scheduling-{stamp}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
