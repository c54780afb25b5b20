#!/usr/bin/env python3
"""A/B of engine settings: the engine_throughput workload on one engine per variant, in one
process, alternating rounds (A B, then B A, ...), so that slow minutes on a noisy machine fall on
every variant alike. Prints each round and the median and best of each variant.

    .venv/bin/python bench/engine_ab.py --model 100m --rounds 6 \
        --variant kernel: --variant torch:native_kernels=false
    .venv/bin/python bench/engine_ab.py --model demo --variant kernel: --variant torch:native_kernels=false

A variant is NAME:KEY=JSON,KEY=JSON (EngineConfig fields over the engine_throughput settings).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from engine_throughput import (  # noqa: E402
    THREADS,
    parse_settings,
    remap,
    resolve_model,
    run_offline,
    stratus_engine_config,
    warm_up,
)


def parse_variant(text: str) -> tuple[str, dict]:
    name, _, settings = text.partition(":")
    return name, parse_settings(filter(None, settings.split(",")))


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
    from stratus.engine.core import EngineCore

    path = resolve_model(args.model)
    if path is None:
        sys.exit(f"no checkpoint for {args.model!r} (demo, 100m, or a directory with config.json)")
    vocab = common.read_config(path)["vocab_size"]
    max_len = 1024
    work = common.make_workload(args.requests, vocab, (16, 256), (32, 256), max_len, seed=0)
    base = stratus_engine_config(2048, max_len)
    variants = dict(parse_variant(v) for v in args.variant)
    engines = {name: EngineCore(str(path), EngineConfig(**(base | o))) for name, o in variants.items()}

    def run(engine, prompts, max_tokens, tag) -> float:
        seconds, tokens, _ = run_offline(engine, prompts, max_tokens, tag)
        return tokens / seconds

    for engine in engines.values():
        warm_up(engine, work, vocab)
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
