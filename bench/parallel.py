#!/usr/bin/env python3
"""One replica split over processes (engine/parallel/): speed and memory per rank, TP=1/2, PP=2.

    .venv/bin/python bench/parallel.py                      # the ~100M Llama of bench/common.py
    .venv/bin/python bench/parallel.py --layouts 1x1,2x1 --model models/demo

Per layout (TPxPP), one EngineCore in this process (rank 0; the other ranks are its processes):
  - time to first token: a 128-token prompt, alone, max_tokens=1 (median of --repeats);
  - decode tokens/s at batch 1 (one stream, 64 tokens) and batch 32 (32 streams of 32 tokens,
    counted once every stream has its first token);
  - time in collectives per decode step, on rank 0: the all-reduces, the step plan's broadcast,
    the logits' gather and the stage-to-stage sends, including the wait for the slowest rank;
  - per rank: the weights it holds, its KV pool, its peak RSS.
Threads: the machine's cores are shared by the ranks (cores // ranks each), so every layout
uses the same cores; --threads sets the threads per rank instead (e.g. TP=1 on one thread, to
compare with TP=2's one thread per rank on a machine where a 2-thread OpenMP run collapses
under other load). Writes bench/results/parallel.json. On a 2-core CPU, TP costs speed (each
rank has one core and the same memory bandwidth); what it buys there is memory per process.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
for entry in (REPO, REPO / "src"):
    if str(entry) not in sys.path:
        sys.path.insert(0, str(entry))
from bench import common  # noqa: E402
from stratus.engine.config import EngineConfig  # noqa: E402
from stratus.engine.core import EngineCore  # noqa: E402
from stratus.engine.types import GenerateRequest, SamplingParams  # noqa: E402


def comm_seconds(core: EngineCore) -> float:
    group = getattr(core.runner, "group", None)
    return group.comm_seconds if group is not None else 0.0


def run(core: EngineCore, prompts: list[list[int]], max_tokens: int) -> tuple[float, int, float, int]:
    """Generate; returns (decode seconds, decode tokens, collective seconds, decode steps),
    counting from the step after which every sequence has its first token."""
    params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
    for i, ids in enumerate(prompts):
        core.add_request(GenerateRequest(prompt_token_ids=ids, params=params, request_id=f"r{i}"))
    started = set()
    t0 = comm0 = None
    tokens = steps = 0
    while core.has_work():
        deltas = core.step()
        if t0 is not None:
            tokens += sum(len(d.token_ids) for d in deltas)
            steps += 1
        for d in deltas:
            started.add(d.request_id)
        if t0 is None and len(started) == len(prompts):
            t0, comm0 = time.perf_counter(), comm_seconds(core)
    assert t0 is not None and comm0 is not None
    return time.perf_counter() - t0, tokens, comm_seconds(core) - comm0, steps


def ttft(core: EngineCore, prompt: list[int], repeats: int) -> float:
    times = []
    for i in range(repeats):
        ids = [(t + i) % 1000 + 10 for t in prompt]  # no prefix-cache hits between repeats
        params = SamplingParams(max_tokens=1, temperature=0, ignore_eos=True)
        core.add_request(GenerateRequest(prompt_token_ids=ids, params=params, request_id=f"t{i}"))
        t = time.perf_counter()
        while core.has_work():
            core.step()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def measure(path: Path, tp: int, pp: int, repeats: int, threads: int | None) -> dict:
    cores = os.cpu_count() or 1
    config = EngineConfig(
        tensor_parallel_size=tp,
        pipeline_parallel_size=pp,
        num_threads=threads or max(1, cores // (tp * pp)),
        kv_cache_memory_mb=512,
        max_num_seqs=64,
    )
    t = time.perf_counter()
    core = EngineCore(path, config)
    load_s = time.perf_counter() - t
    try:
        layout = core.layout()
        vocab = core.model_config.vocab_size
        prompt = [(7 * i) % (vocab - 20) + 10 for i in range(128)]
        run(core, [prompt[:16]], 8)  # warm-up: allocators, oneDNN primitives
        first = ttft(core, prompt, repeats)
        b1 = [run(core, [[11 + r, 12, 13, 14, 15, 16, 17, 18]], 64) for r in range(repeats)]
        b32 = [
            run(core, [[(i * 13 + r) % (vocab - 20) + 10 for i in range(j, j + 16)] for j in range(32)], 32)
            for r in range(repeats)
        ]

        def rate(runs):
            return statistics.median(tokens / seconds for seconds, tokens, _, _ in runs)

        def comm_ms(runs):
            return statistics.median(1000 * comm / max(steps, 1) for _, _, comm, steps in runs)

        def step_ms(runs):
            return statistics.median(1000 * seconds / max(steps, 1) for seconds, _, _, steps in runs)

        return {
            "layout": f"TP={tp} PP={pp}",
            "threads_per_rank": config.num_threads,
            "load_s": round(load_s, 1),
            "ttft_ms": round(first * 1000, 1),
            "decode_tok_s_b1": round(rate(b1), 1),
            "decode_step_ms_b1": round(step_ms(b1), 2),
            "comm_ms_per_step_b1": round(comm_ms(b1), 2),
            "decode_tok_s_b32": round(rate(b32), 1),
            "decode_step_ms_b32": round(step_ms(b32), 2),
            "comm_ms_per_step_b32": round(comm_ms(b32), 2),
            "ranks": layout["ranks"],
        }
    finally:
        core.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a checkpoint; default: the ~100M random Llama")
    parser.add_argument("--layouts", default="1x1,2x1,1x2", help="TPxPP, comma-separated")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--threads",
        type=int,
        help="threads per rank; default: the cores shared by the ranks (cores // ranks)",
    )
    parser.add_argument("--out", default=str(common.RESULTS_DIR / "parallel.json"))
    args = parser.parse_args()
    path = Path(args.model) if args.model else common.random_llama("llama-100m", common.LLAMA_100M)
    counts = common.parameter_counts(common.read_config(path))
    info = common.machine_info()
    print(f"{info['cpu']}, {info['cores']} cores, load {info['load_average']}, commit {info['git_commit']}")
    print(f"model {path} ({counts['parameters'] / 1e6:.1f}M parameters)")
    results = []
    for spec in args.layouts.split(","):
        tp, _, pp = spec.partition("x")
        result = measure(path, int(tp), int(pp or 1), args.repeats, args.threads)
        results.append(result)
        ranks = ", ".join(
            f"r{r['rank']} {r['weight_mib']:.0f}+{r['kv_cache_mib']:.0f} MiB (rss {r['max_rss_mib']:.0f})"
            for r in result["ranks"]
        )
        print(
            f"{result['layout']} ({result['threads_per_rank']} thread(s) per rank): TTFT {result['ttft_ms']} ms | b1 {result['decode_tok_s_b1']} tok/s "
            f"({result['decode_step_ms_b1']} ms/step, comm {result['comm_ms_per_step_b1']}) | b32 "
            f"{result['decode_tok_s_b32']} tok/s ({result['decode_step_ms_b32']} ms/step, comm "
            f"{result['comm_ms_per_step_b32']}) | weights+KV per rank: {ranks}"
        )
    info["load_average_after"] = [round(x, 2) for x in common.load_average()]
    common.write_report({"machine": info, "model": str(path), **counts, "results": results}, Path(args.out))


if __name__ == "__main__":
    main()
