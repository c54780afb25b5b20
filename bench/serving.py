#!/usr/bin/env python3
"""Serving benchmark: a live `stratus serve` under load, and what its HTTP layer costs.

    .venv/bin/python bench/serving.py                       # spawns stratus serve on a free port
    .venv/bin/python bench/serving.py --url http://127.0.0.1:8000 --model demo --model-path models/demo
    .venv/bin/python bench/serving.py --quick               # small, for a smoke test

In one run:

(a) request-rate sweep: Poisson arrivals at each rate of --rates (req/s; "inf" sends all at
    once), --requests requests per rate, ShareGPT-like lengths generated locally (log-normal
    prompt and output lengths, clipped to the context window), streamed completions over token-id
    prompts with ignore_eos, so every request produces exactly its output length. Reports
    completed req/s, output tokens/s, TTFT, TPOT and end-to-end latency p50/p99.
(b) the HTTP layer's own cost: the same requests through the server and through an `Engine` in
    this process (same checkpoint, same engine settings and isolation), one at a time, interleaved
    (server, engine, server, ...), as added latency p50/p99; then all of them at once both ways,
    as the throughput the server loses.

Results print as a table and go to bench/results/serving-<time>.json with the machine facts.
(The gateway-versus-LiteLLM comparison lands with the cluster issue's upstream replicas.)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (bench/common.py)

REPO = common.REPO
sys.path.insert(0, str(REPO))
from tests.live_server import ServeProcess  # noqa: E402

# A small Llama like the demo model, used when models/demo has not been trained yet.
SMALL_LLAMA = dict(
    hidden_size=256,
    num_layers=4,
    num_heads=8,
    num_kv_heads=4,
    intermediate_size=688,
    vocab_size=8000,
    max_position_embeddings=1024,
)


FAILURES: list[str] = []  # the first few are printed, so a broken run says why

# -- workload ------------------------------------------------------------------------------------


@dataclass
class Request:
    prompt: list[int]
    max_tokens: int


def sharegpt_like(n: int, vocab: int, window: int, seed: int, scale: float = 1.0) -> list[Request]:
    """Log-normal lengths shaped like ShareGPT conversations (long right tails), scaled down to a
    CPU-sized model: prompt median ~96 tokens, output median ~64, each clipped to the window."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        p = int(min(max(rng.lognormvariate(math.log(96 * scale), 0.9), 4), window // 2))
        o = int(min(max(rng.lognormvariate(math.log(64 * scale), 0.8), 4), window - p - 1, 512))
        out.append(Request([rng.randrange(8, vocab) for _ in range(p)], o))
    return out


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


@dataclass
class Timing:
    start: float
    first: float | None = None
    end: float | None = None
    tokens: int = 0
    ok: bool = True

    @property
    def ttft(self) -> float | None:
        return self.first - self.start if self.first else None

    @property
    def tpot(self) -> float | None:
        if self.first and self.end and self.tokens > 1:
            return (self.end - self.first) / (self.tokens - 1)
        return None

    @property
    def e2e(self) -> float | None:
        return self.end - self.start if self.end else None


@dataclass
class Summary:
    label: str
    timings: list[Timing] = field(default_factory=list)
    wall: float = 0.0

    def row(self) -> dict:
        ok = [t for t in self.timings if t.ok and t.end]
        out_tokens = sum(t.tokens for t in ok)
        ms = 1000.0

        def p(attr, q):
            return round(pct([getattr(t, attr) for t in ok if getattr(t, attr) is not None], q) * ms, 2)

        return {
            "label": self.label,
            "requests": len(self.timings),
            "failed": len(self.timings) - len(ok),
            "req_per_s": round(len(ok) / self.wall, 2) if self.wall else None,
            "output_tok_per_s": round(out_tokens / self.wall, 1) if self.wall else None,
            "ttft_ms_p50": p("ttft", 50),
            "ttft_ms_p99": p("ttft", 99),
            "tpot_ms_p50": p("tpot", 50),
            "tpot_ms_p99": p("tpot", 99),
            "e2e_ms_p50": p("e2e", 50),
            "e2e_ms_p99": p("e2e", 99),
        }


# -- through the server --------------------------------------------------------------------------


async def http_one(client: httpx.AsyncClient, model: str, req: Request, stream: bool = True) -> Timing:
    body = {
        "model": model,
        "prompt": req.prompt,
        "max_tokens": req.max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": stream,
    }
    t = Timing(time.perf_counter())
    try:
        if not stream:
            r = await client.post("/v1/completions", json=body)
            t.end = time.perf_counter()
            t.ok = r.status_code == 200
            if not t.ok:
                FAILURES.append(f"{r.status_code}: {r.text[:300]}")
            t.tokens = r.json()["usage"]["completion_tokens"] if t.ok else 0
            return t
        async with client.stream("POST", "/v1/completions", json=body) as r:
            if r.status_code != 200:
                t.ok = False
                FAILURES.append(f"{r.status_code}: {(await r.aread())[:300]!r}")
                return t
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                choice = json.loads(line[6:])["choices"]
                if choice and choice[0].get("text"):
                    t.first = t.first or time.perf_counter()
            t.end = time.perf_counter()
            t.tokens = req.max_tokens  # ignore_eos: every request produces exactly this many
    except httpx.HTTPError as exc:
        t.ok = False
        FAILURES.append(f"{type(exc).__name__}: {exc}")
    return t


async def sweep_rate(url: str, model: str, reqs: list[Request], rate: float, seed: int) -> Summary:
    rng = random.Random(seed)
    limits = httpx.Limits(max_connections=len(reqs) + 4, max_keepalive_connections=len(reqs) + 4)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        tasks = []
        start = time.perf_counter()
        for req in reqs:
            tasks.append(asyncio.create_task(http_one(client, model, req)))
            if math.isfinite(rate):
                await asyncio.sleep(rng.expovariate(rate))
        timings = await asyncio.gather(*tasks)
        wall = time.perf_counter() - start
    return Summary(f"rate {rate:g}/s", list(timings), wall)


# -- in process ----------------------------------------------------------------------------------


async def engine_one(engine, req: Request) -> Timing:
    from stratus.engine import GenerateRequest, SamplingParams

    params = SamplingParams(max_tokens=req.max_tokens, temperature=0, ignore_eos=True)
    t = Timing(time.perf_counter())
    async for delta in engine.generate(GenerateRequest(prompt_token_ids=req.prompt, params=params)):
        if delta.token_ids:
            t.first = t.first or time.perf_counter()
            t.tokens = delta.completion_tokens
    t.end = time.perf_counter()
    return t


async def overhead(url: str, model: str, path: Path, reqs: list[Request], args) -> dict:
    from stratus.config import load_settings
    from stratus.engine import Engine

    settings = load_settings({}, env={}, config_file=args.config) if args.config else None
    engine_config = settings.engine if settings else None
    engine = Engine.from_pretrained(path, engine_config, args.isolation)
    await engine.start()
    try:
        async with httpx.AsyncClient(base_url=url, timeout=600) as client:
            for req in reqs[:3]:  # warm both paths
                await http_one(client, model, req, stream=False)
                await engine_one(engine, req)
            http_t, engine_t, added = [], [], []
            for req in reqs:
                h = await http_one(client, model, req, stream=False)
                e = await engine_one(engine, req)
                http_t.append(h)
                engine_t.append(e)
                if h.ok:
                    added.append((h.e2e - e.e2e) * 1000)
        # All at once, both ways: the throughput the HTTP layer costs under load.
        start = time.perf_counter()
        await asyncio.gather(*(engine_one(engine, r) for r in reqs))
        engine_wall = time.perf_counter() - start
        limits = httpx.Limits(max_connections=len(reqs) + 4)
        async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
            start = time.perf_counter()
            results = await asyncio.gather(*(http_one(client, model, r, stream=False) for r in reqs))
            http_wall = time.perf_counter() - start
    finally:
        await engine.shutdown()
    tokens = sum(r.max_tokens for r in reqs)
    http_e2e = [t.e2e * 1000 for t in http_t if t.ok]
    engine_e2e = [t.e2e * 1000 for t in engine_t]
    return {
        "requests": len(reqs),
        "failed": sum(not t.ok for t in http_t) + sum(not t.ok for t in results),
        "http_e2e_ms_p50": round(pct(http_e2e, 50), 2),
        "engine_e2e_ms_p50": round(pct(engine_e2e, 50), 2),
        "added_ms_p50": round(pct(added, 50), 2),
        "added_ms_p99": round(pct(added, 99), 2),
        "added_ms_of_medians": round(pct(http_e2e, 50) - pct(engine_e2e, 50), 2),
        "throughput_engine_tok_s": round(tokens / engine_wall, 1),
        "throughput_http_tok_s": round(tokens / http_wall, 1),
        "throughput_loss_pct": round(100 * (1 - engine_wall / http_wall), 2),
    }


# -- main ----------------------------------------------------------------------------------------


def print_table(rows: list[dict]) -> None:
    if not rows:
        return
    keys = list(rows[0])
    widths = {k: max(len(k), *(len(str(r[k])) for r in rows)) for k in keys}
    print("  ".join(k.ljust(widths[k]) for k in keys))
    for r in rows:
        print("  ".join(str(r[k]).ljust(widths[k]) for k in keys))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="a running stratus serve; default: spawn one on a free port")
    ap.add_argument("--model", default="bench", help="served model name")
    ap.add_argument("--model-path", type=Path, help="checkpoint dir (default: models/demo or a random one)")
    ap.add_argument("--rates", default="1,2,4,8,inf", help="comma-separated request rates (req/s)")
    ap.add_argument("--requests", type=int, default=48, help="requests per rate")
    ap.add_argument("--overhead-requests", type=int, default=24)
    ap.add_argument("--overhead-max-tokens", type=int, default=16)
    ap.add_argument("--scale", type=float, default=1.0, help="multiply the length distributions")
    ap.add_argument("--isolation", default="process", choices=["process", "thread"])
    ap.add_argument("--config", help="stratus.toml the server uses (engine settings)")
    ap.add_argument("--quick", action="store_true", help="rates 2,inf; 12 requests; short outputs")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.quick:
        args.rates, args.requests, args.overhead_requests, args.scale = "2,inf", 12, 8, 0.5

    path = args.model_path or (REPO / "models" / "demo")
    if not (path / "config.json").is_file():
        path = common.random_llama("serving-small", SMALL_LLAMA)
    config = common.read_config(path)
    window = min(config.get("max_position_embeddings", 2048), 2048)

    server = None
    url = args.url
    if url is None:
        extra = ["--config", args.config] if args.config else []
        server = ServeProcess(
            "--model", f"{args.model}={path}", "--engine-isolation", args.isolation, "--no-auth", *extra
        )
        server.wait_ready(600)
        url = server.url
    try:
        rates = [float(r) for r in args.rates.split(",")]
        sweep = []
        for i, rate in enumerate(rates):
            reqs = sharegpt_like(args.requests, config["vocab_size"], window, args.seed + i, args.scale)
            summary = asyncio.run(sweep_rate(url, args.model, reqs, rate, args.seed + i))
            sweep.append(summary.row())
            print_table([sweep[-1]])
        reqs = [
            Request(r.prompt, min(r.max_tokens, args.overhead_max_tokens))
            for r in sharegpt_like(
                args.overhead_requests, config["vocab_size"], window, args.seed + 99, args.scale
            )
        ]
        cost = asyncio.run(overhead(url, args.model, path, reqs, args))
    finally:
        if server is not None:
            server.terminate()
            server.wait(120)

    result = {
        "machine": common.machine_info(),
        "model": {"path": str(path), **common.parameter_counts(config)},
        "isolation": args.isolation,
        "sweep": sweep,
        "http_overhead": cost,
    }
    if FAILURES:
        print(f"\n{len(FAILURES)} failed requests, e.g.:", *FAILURES[:3], sep="\n  ")
    print("\nrequest-rate sweep")
    print_table(sweep)
    print("\nHTTP layer versus the engine in process")
    print_table([cost])
    common.RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = common.RESULTS_DIR / f"serving-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
