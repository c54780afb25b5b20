#!/usr/bin/env python3
"""An engine's RSS under a mixed load of ever-new batch shapes, in one process (no server).

    .venv/bin/python bench/engine_memory.py --rounds 100                    # capped (the engine's default)
    LRU_CACHE_CAPACITY=1024 ONEDNN_PRIMITIVE_CACHE_CAPACITY=1024 \\
        .venv/bin/python bench/engine_memory.py --rounds 100                # oneDNN's defaults: uncapped
    ONEDNN_VERBOSE=profile_create .venv/bin/python bench/engine_memory.py 2>&1 | grep -c cache_miss

EngineCore on `--model` (models/demo), one thread; each round adds a random batch of 4-24
requests (20% long: LONG_PARAGRAPH x4 and 96 tokens, else a short prompt and 16; 10% n=2;
temperature 0.8; seeded) and steps until it is done. Prints the RSS growth every 10 rounds. The
figures in docs/ENGINE.md (pre-packed linears) came from this load.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
for entry in (REPO, REPO / "src"):
    if str(entry) not in sys.path:
        sys.path.insert(0, str(entry))
from bench.load import LONG_PARAGRAPH, SHORT_PROMPTS  # noqa: E402
from stratus.engine.config import EngineConfig  # noqa: E402
from stratus.engine.core import EngineCore  # noqa: E402
from stratus.engine.types import GenerateRequest, SamplingParams  # noqa: E402


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(REPO / "models" / "demo"))
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--trim", action="store_true", help="malloc_trim(0) after each round (glibc)")
    args = parser.parse_args()
    core = EngineCore(args.model, EngineConfig(num_threads=args.threads))
    trim = ctypes.CDLL("libc.so.6").malloc_trim if args.trim else None
    rng = random.Random(0)
    start, t0, requests, growth = rss_mib(), time.perf_counter(), 0, []
    for round_ in range(args.rounds):
        for _ in range(rng.randint(4, 24)):
            long = rng.random() < 0.2
            prompt = rng.choice(SHORT_PROMPTS) + (LONG_PARAGRAPH * 4 if long else "")
            params = SamplingParams(
                max_tokens=96 if long else 16,
                ignore_eos=True,
                n=2 if rng.random() < 0.1 else 1,
                temperature=0.8,
            )
            core.add_request(GenerateRequest(prompt=prompt, params=params))
            requests += 1
        while core.has_work():
            core.step()
        if trim is not None:
            trim(0)
        if round_ % 10 == 9:
            growth.append(round(rss_mib() - start, 1))
    caps = {k: os.environ.get(k) for k in ("LRU_CACHE_CAPACITY", "ONEDNN_PRIMITIVE_CACHE_CAPACITY")}
    print(f"{caps} {requests} requests in {time.perf_counter() - t0:.0f} s")
    print(f"RSS growth (MiB) every 10 rounds: {growth}")


if __name__ == "__main__":
    main()
