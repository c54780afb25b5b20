#!/usr/bin/env python3
"""A/B of engine settings: the engine_throughput workload on one engine per variant, in one
process, alternating rounds (A B, then B A, ...), so that slow minutes on a noisy machine fall on
every variant alike. Prints each round and the median and best of each variant.

    .venv/bin/python bench/engine_ab.py --model 100m --rounds 6 \
        --variant one-batch: --variant split:split_steps=true
    .venv/bin/python bench/engine_ab.py --model demo --variant kernel: --variant torch:native_kernels=false

A variant is NAME:KEY=JSON,KEY=JSON (EngineConfig fields over the engine_throughput settings).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from engine_throughput import THREADS, remap, resolve_model  # noqa: E402


def parse_variant(text: str) -> tuple[str, dict]:
    name, _, settings = text.partition(":")
    overrides = {}
    for pair in filter(None, settings.split(",")):
        key, _, value = pair.partition("=")
        overrides[key] = json.loads(value)
    return name, overrides


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="100m", help="demo, 100m or a checkpoint dir")
    p.add_argument("--variant", action="append", required=True, metavar="NAME:KEY=JSON,...")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--requests", type=int, default=64)
    args = p.parse_args()

    import torch

    torch.set_num_threads(THREADS)
    from stratus.engine.config import EngineConfig
    from stratus.engine.llm_engine import LLMEngine
    from stratus.engine.types import GenerateRequest, SamplingParams

    path = resolve_model(args.model)
    if path is None:
        sys.exit(f"no checkpoint for {args.model!r} (demo, 100m, or a directory with config.json)")
    vocab = common.read_config(path)["vocab_size"]
    max_len = 1024
    work = common.make_workload(args.requests, vocab, (16, 256), (32, 256), max_len, seed=0)
    base = dict(
        dtype="float32",
        max_num_seqs=64,
        max_num_batched_tokens=2048,
        kv_cache_memory_mb=2048,
        num_threads=THREADS,
        max_model_len=max_len,
    )
    variants = dict(parse_variant(v) for v in args.variant)
    engines = {name: LLMEngine(str(path), EngineConfig(**(base | o))) for name, o in variants.items()}

    def run(engine, prompts, max_tokens, tag) -> float:
        for i, (ids, m) in enumerate(zip(prompts, max_tokens)):
            params = SamplingParams(max_tokens=m, temperature=0.0, ignore_eos=True)
            engine.add_request(GenerateRequest(prompt_token_ids=ids, params=params, request_id=f"{tag}-{i}"))
        start, tokens = time.perf_counter(), 0
        while engine.has_work():
            tokens += sum(len(d.token_ids) for d in engine.step())
        return tokens / (time.perf_counter() - start)

    for engine in engines.values():  # warm-up, as engine_throughput does
        run(engine, remap(work.prompts[:8], 99, vocab), [8] * min(8, len(work.prompts)), "warm")
    rates: dict[str, list[float]] = {name: [] for name in engines}
    shift = 0
    for r in range(args.rounds):
        order = list(engines) if r % 2 == 0 else list(engines)[::-1]
        for name in order:
            shift += 1  # fresh token ids each run: the prefix cache never hits
            rates[name].append(run(engines[name], remap(work.prompts, shift, vocab), work.max_tokens, name))
            print(f"round {r + 1} {name}: {rates[name][-1]:,.0f} output tok/s", flush=True)

    print(
        f"\n{common.cpu_model()}, {args.model}, {args.rounds} rounds, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    first = next(iter(rates))
    for name, values in rates.items():
        ratio = statistics.median(values) / statistics.median(rates[first])
        print(
            f"  {name:16s} median {statistics.median(values):8,.0f}  best {max(values):8,.0f}  "
            f"median / {first}: {ratio:.2f}x   {variants[name] or '(defaults)'}"
        )
    report = {"machine": common.machine_info(), "model": args.model, "variants": variants, "rates": rates}
    common.write_report(report, common.RESULTS_DIR / f"engine_ab-{time.strftime('%Y%m%d-%H%M%S')}.json")


if __name__ == "__main__":
    main()
