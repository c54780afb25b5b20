#!/usr/bin/env python3
"""What the HTTP hop to a `stratus worker` costs: the same requests to an engine in this process
(its step loop in a process of its own, as `stratus serve` runs it) and to a `WorkerReplica`
talking to a `stratus worker` on loopback (same model, same engine settings), alternated in one run.

    .venv/bin/python bench/worker_hop.py               # demo model, 5 rounds
    .venv/bin/python bench/worker_hop.py --rounds 3 --concurrency 8
    .venv/bin/python bench/worker_hop.py --worker-isolation thread   # the worker's engine in a thread

Per round and side: (1) one greedy stream of --tokens tokens: time to first token and decode
rate; (2) --concurrency such streams at once: total output tokens/s. Prints the medians and the
ratio worker / local for each. Both engines share the machine's cores, so each side runs while
the other is idle.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import secrets
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from stratus.cluster.worker_replica import WorkerReplica  # noqa: E402
from stratus.engine import Engine, EngineConfig, GenerateRequest, SamplingParams  # noqa: E402

PROMPT = "Once upon a time, in a small village by the sea, there lived"


async def one_stream(target, tokens: int, tag: str) -> tuple[float, float]:
    params = SamplingParams(max_tokens=tokens, temperature=0, ignore_eos=True)
    started = time.perf_counter()
    first = None
    async for delta in target.generate(GenerateRequest(prompt=PROMPT, params=params, request_id=tag)):
        if first is None and delta.token_ids:
            first = time.perf_counter()
    end = time.perf_counter()
    return first - started, (tokens - 1) / (end - first)


async def many_streams(target, tokens: int, concurrency: int, tag: str) -> float:
    started = time.perf_counter()
    await asyncio.gather(*(one_stream(target, tokens, f"{tag}-{i}") for i in range(concurrency)))
    return tokens * concurrency / (time.perf_counter() - started)


def start_worker(model: Path, secret: str, isolation: str) -> tuple[subprocess.Popen, str, str]:
    env = {**os.environ, "STRATUS_CLUSTER_SECRET": secret, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "stratus.cli", "worker", "--model", f"demo={model}", "--port", "0"]
    cmd += ["--engine-isolation", isolation]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    assert proc.stdout is not None
    for line in proc.stdout:
        m = re.search(r"stratus worker (\S+) listening on (http://\S+)", line)
        if m:
            return proc, m.group(1), m.group(2)
    raise RuntimeError("stratus worker did not start")


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "models" / "demo"))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument(
        "--worker-isolation",
        choices=["process", "thread"],
        default="process",
        help="the worker's engine in a process of its own (default, as serve) or in a thread of it",
    )
    args = ap.parse_args()
    secret = secrets.token_urlsafe(32)
    proc, worker_id, url = start_worker(Path(args.model), secret, args.worker_isolation)
    engine = Engine(args.model, EngineConfig(), isolation="process")
    try:
        await engine.start()
        deadline = time.monotonic() + 180
        while True:  # the worker answers /health with 200 once its model is warm
            try:
                r = httpx.get(url + "/internal/v1/health", headers={"Authorization": f"Bearer {secret}"})
                if r.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("worker not serving")
            await asyncio.sleep(0.2)
        replica = WorkerReplica(worker_id, "demo", url, secret.encode())
        await replica.start()
        sides = {"local": engine, "worker": replica}
        results: dict[str, dict[str, list[float]]] = {
            s: {"ttft": [], "decode": [], "batch": []} for s in sides
        }
        for side, target in sides.items():  # warm both paths once, untimed
            await many_streams(target, 8, 4, f"warm-{side}")
        for r in range(args.rounds):
            for side, target in sides.items():
                ttft, decode = await one_stream(target, args.tokens, f"{side}-{r}")
                batch = await many_streams(target, args.tokens, args.concurrency, f"{side}-{r}-b")
                results[side]["ttft"].append(ttft)
                results[side]["decode"].append(decode)
                results[side]["batch"].append(batch)
                print(
                    f"round {r} {side:6s}  ttft {ttft * 1000:7.1f} ms  decode {decode:6.1f} tok/s  "
                    f"{args.concurrency} streams {batch:7.1f} tok/s",
                    flush=True,
                )
        med = {s: {k: statistics.median(v) for k, v in m.items()} for s, m in results.items()}
        print(
            f"\nmedians over {args.rounds} rounds ({args.tokens} tokens, {args.concurrency} streams; "
            f"worker engine isolation {args.worker_isolation}; load average {os.getloadavg()[0]:.1f})"
        )
        print(f"{'':8s} {'ttft ms':>9s} {'decode tok/s':>13s} {'batch tok/s':>12s}")
        for side in sides:
            m = med[side]
            print(f"{side:8s} {m['ttft'] * 1000:9.1f} {m['decode']:13.1f} {m['batch']:12.1f}")
        w, loc = med["worker"], med["local"]
        print(
            f"{'worker/local':8s} {w['ttft'] / loc['ttft']:9.2f} {w['decode'] / loc['decode']:13.2f} "
            f"{w['batch'] / loc['batch']:12.2f}"
        )
        await replica.shutdown()
    finally:
        await engine.shutdown()
        proc.terminate()
        proc.wait(60)


if __name__ == "__main__":
    asyncio.run(main())
