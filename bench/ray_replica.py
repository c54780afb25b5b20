#!/usr/bin/env python3
"""What a Ray actor costs a replica: the same engine behind a Ray actor (RayReplica) and as
`stratus serve` runs it by default (LocalReplica, step loop in a process of its own), side by
side in one run.

    .venv/bin/python bench/ray_replica.py                 # demo model, 3 rounds
    .venv/bin/python bench/ray_replica.py --rounds 1 --tokens 64 --streams 8   # quicker

All replicas use the same EngineConfig (--threads torch threads each) and exist together;
the workloads alternate between them (local, ray, local, ray, ...) so machine noise hits both
alike. Per round and replica:
- single: one greedy stream of --tokens tokens (ignore_eos): time to first token, tokens/s;
- batch: --streams such streams at once: total tokens/s;
- the cost of a bare Ray streaming generator per delta, one or 8 deltas per object;
- ray/local ratio of each (--thread-actor adds an actor whose engine runs in a thread of
  the actor process instead of a child process). Also the time from RayReplica() to serving (actor start + load).
A local Ray (no dashboard) is started for the run. Results print as a table and go to
bench/results/ray-replica-<time>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

from stratus.cluster.local import LocalReplica  # noqa: E402
from stratus.engine import Engine, EngineConfig, GenerateRequest, SamplingParams  # noqa: E402

DEMO = common.REPO / "models" / "demo"
DELTAS: dict[str, int] = {}  # per replica id, to compare with RayReplica.handoffs


async def one_stream(replica, tokens: int, i: int) -> tuple[float, int, float]:
    params = SamplingParams(max_tokens=tokens, temperature=0, ignore_eos=True)
    request = GenerateRequest(prompt=f"Chapter {i}. It was a fine morning and", params=params)
    start = time.perf_counter()
    first, produced = None, 0
    async for delta in replica.generate(request):
        if first is None:
            first = time.perf_counter() - start
        produced += len(delta.token_ids)
        DELTAS[replica.id] = DELTAS.get(replica.id, 0) + 1
    return first or 0.0, produced, time.perf_counter() - start


async def single(replica, tokens: int) -> dict:
    ttft, produced, seconds = await one_stream(replica, tokens, 0)
    return {"ttft_ms": ttft * 1000, "tokens_per_s": produced / seconds}


async def batch(replica, tokens: int, streams: int) -> dict:
    start = time.perf_counter()
    results = await asyncio.gather(*(one_stream(replica, tokens, i) for i in range(streams)))
    seconds = time.perf_counter() - start
    return {"tokens_per_s": sum(r[1] for r in results) / seconds}


class Emitter:
    """A bare Ray streaming generator: the cost of handing objects over, without an engine."""

    async def emit(self, objects: int, per_object: int):
        from stratus.engine import Delta

        for _ in range(objects):
            yield [Delta("r", 0, "x", [1]) for _ in range(per_object)]

    async def ping(self) -> None:
        return None


async def object_cost(total: int = 2000) -> dict[str, float]:
    """Microseconds per delta when each Ray object carries 1 delta, and 8."""
    import ray

    emitter = ray.remote(num_cpus=0)(Emitter).remote()
    await emitter.ping.remote()
    out = {}
    for per_object in (1, 8):
        start = time.perf_counter()
        count = 0
        stream = emitter.emit.options(num_returns="streaming").remote(total // per_object, per_object)
        async for ref in stream:
            count += len(await ref)
        out[f"us_per_delta_{per_object}_per_object"] = (time.perf_counter() - start) / count * 1e6
    ray.kill(emitter)
    return out


async def main(args: argparse.Namespace) -> dict:
    import ray

    from stratus.cluster.ray_replica import RayReplica

    config = EngineConfig(num_threads=args.threads, kv_cache_memory_mb=64)
    ray.init(include_dashboard=False, log_to_driver=False, num_cpus=2)
    local = LocalReplica("demo", Engine(DEMO, config, isolation="process"))
    await local.start()
    started = time.perf_counter()
    remote = RayReplica("demo", DEMO, config, resources={"CPU": 1}, isolation="process")
    await remote.start()
    start_seconds = time.perf_counter() - started
    replicas = {"local": local, "ray": remote}
    if args.thread_actor:  # the engine's step loop in a thread of the actor process instead
        replicas["ray-thread"] = RayReplica("demo", DEMO, config, resources={"CPU": 1}, isolation="thread")
        await replicas["ray-thread"].start()
    handover = await object_cost()
    rows: dict[str, list[dict]] = {name: [] for name in replicas}
    try:
        for _ in range(args.rounds):
            for name, replica in replicas.items():
                rows[name].append(
                    {
                        "single": await single(replica, args.tokens),
                        "batch": await batch(replica, args.tokens, args.streams),
                    }
                )
        handoffs = {
            name: DELTAS.get(r.id, 0) / r.handoffs
            for name, r in replicas.items()
            if getattr(r, "handoffs", 0)
        }
    finally:
        for replica in replicas.values():
            await replica.shutdown()
        ray.shutdown()

    def median(name: str, part: str, key: str) -> float:
        return statistics.median(r[part][key] for r in rows[name])

    summary = {
        name: {
            "single_ttft_ms": median(name, "single", "ttft_ms"),
            "single_tokens_per_s": median(name, "single", "tokens_per_s"),
            "batch_tokens_per_s": median(name, "batch", "tokens_per_s"),
        }
        for name in rows
    }
    ratios = {
        name: {key: summary[name][key] / summary["local"][key] for key in summary["local"]}
        for name in summary
        if name != "local"
    }
    return {
        "machine": common.machine_info(),
        "args": vars(args),
        "ray_actor_start_seconds": start_seconds,
        "rounds": rows,
        "median": summary,
        "ray_over_local": ratios,
        "deltas_per_ray_object": handoffs,
        "bare_generator": handover,
    }


def report(result: dict) -> None:
    m = result["machine"]
    print(f"{m['cpu']}, {m['cores']} cores, {m['date']}, commit {m['git_commit']}, load {m['load_average']}")
    a = result["args"]
    print(
        f"demo model, {a['tokens']} tokens per stream, batch of {a['streams']}, {a['rounds']} rounds (medians)"
    )
    print(f"Ray actor start (placement + load + warm-up): {result['ray_actor_start_seconds']:.1f} s")
    names = list(result["median"])
    others = [n for n in names if n != "local"]
    print(f"{'':24}" + "".join(f"{n:>12}" for n in names) + "".join(f"{n + '/local':>18}" for n in others))
    labels = {
        "single_ttft_ms": "single: first token ms",
        "single_tokens_per_s": "single: tokens/s",
        "batch_tokens_per_s": "batch: tokens/s",
    }
    for key, label in labels.items():
        values = "".join(f"{result['median'][n][key]:12.1f}" for n in names)
        ratios = "".join(f"{result['ray_over_local'][n][key]:18.2f}" for n in others)
        print(f"{label:24}{values}{ratios}")
    per = ", ".join(f"{n} {v:.1f}" for n, v in result["deltas_per_ray_object"].items())
    print(f"deltas per Ray object: {per}")
    bare = result["bare_generator"]
    print(
        f"bare Ray streaming generator: {bare['us_per_delta_1_per_object']:.0f} us per delta one per "
        f"object, {bare['us_per_delta_8_per_object']:.0f} us in objects of 8"
    )
    # the end load too: the run's own share of it is two engines at most
    print(f"load average at the end: {[round(x, 2) for x in os.getloadavg()]}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per engine")
    parser.add_argument(
        "--thread-actor", action="store_true", help="also an actor whose engine runs in a thread of it"
    )
    args = parser.parse_args()
    result = asyncio.run(main(args))
    report(result)
    common.write_report(result, common.RESULTS_DIR / f"ray-replica-{time.strftime('%Y%m%d-%H%M%S')}.json")
