#!/usr/bin/env python3
"""A GGUF file served natively (Q4_1/Q8_0 as int4 layers) against the same file dequantized to
float32: load time, resident memory and decode tokens/s at batch 1 and 32.

    .venv/bin/python bench/gguf_native.py                      # the SmolLM2 Q4_1 fixture
    .venv/bin/python bench/gguf_native.py --gguf F.gguf --rounds 3 --threads 2
    .venv/bin/python bench/gguf_native.py --quick              # a smoke test, not a measurement

The file defaults to SmolLM2-135M-Instruct.Q4_1.gguf (tests/smollm2.py fetches it into
~/.cache/stratus-test). Each variant loads in a fresh process (so its memory is its own):
load time is EngineCore's construction (GGUF parse, weights, KV pool of 64 MiB), resident memory
is VmRSS after the load and VmHWM (the peak) of that process, decode tokens/s counts only decode
steps (64 new tokens per sequence, greedy, best of --repeats). Variants run round robin for
--rounds rounds and the best of each figure is kept; each round records how many cores other
processes used meanwhile (a shared machine makes every timing noisy). Results print as a table
and go to bench/results/gguf-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

REPO = common.REPO
VARIANTS = {"native": False, "float32": True}  # name -> gguf_dequantize
BATCHES = (1, 32)


def proc_status_mib(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def worker(path: Path, variant: str, threads: int, tokens: int, repeats: int) -> dict:
    """Runs in its own process: load, then decode at each batch size."""
    sys.path.insert(0, str(REPO / "src"))
    import torch

    torch.set_num_threads(threads)
    from stratus.compress.evaluate import decode_speed
    from stratus.engine import EngineConfig, EngineCore

    share = common.CpuShare()
    start = time.perf_counter()
    engine = EngineCore(
        path,
        EngineConfig(
            num_threads=threads,
            kv_cache_memory_mb=64,
            max_model_len=1024,
            enable_prefix_caching=False,
            gguf_dequantize=VARIANTS[variant],
        ),
    )
    load_s = time.perf_counter() - start
    rss = proc_status_mib("VmRSS")
    prompt = engine.tokenizer.encode("It is a truth universally acknowledged, that a single man")
    speed = {
        str(batch): max(decode_speed(engine, batch, tokens, prompt) for _ in range(repeats))
        for batch in BATCHES
    }
    return {
        "load_s": round(load_s, 2),
        "rss_mib": round(rss),
        "peak_rss_mib": round(proc_status_mib("VmHWM")),
        "weight_mib": round(engine.runner.weight_bytes / 2**20),
        "decode_tokens_per_s": {k: round(v, 1) for k, v in speed.items()},
        "others_cores": round(share.result()["others_cores"], 2),
    }


def run_variant(path: Path, variant: str, args) -> dict:
    command = [
        sys.executable,
        __file__,
        "--worker",
        variant,
        "--gguf",
        str(path),
        "--threads",
        str(args.threads),
        "--tokens",
        str(args.tokens),
        "--repeats",
        str(args.repeats),
    ]
    out = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise SystemExit(f"{variant} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def best(runs: list[dict]) -> dict:
    return {
        "load_s": min(r["load_s"] for r in runs),
        "rss_mib": min(r["rss_mib"] for r in runs),
        "peak_rss_mib": min(r["peak_rss_mib"] for r in runs),
        "weight_mib": runs[0]["weight_mib"],
        "decode_tokens_per_s": {
            b: max(r["decode_tokens_per_s"][b] for r in runs) for b in runs[0]["decode_tokens_per_s"]
        },
        "others_cores": [r["others_cores"] for r in runs],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gguf", type=Path, help="the GGUF file (default: the SmolLM2 fixture)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per sequence")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--worker", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.tokens, args.repeats, args.rounds = 8, 1, 1
    path = args.gguf
    if path is None:
        sys.path.insert(0, str(REPO))
        from tests.smollm2 import smollm2_gguf

        path = smollm2_gguf()
    if args.worker:
        print(json.dumps(worker(path, args.worker, args.threads, args.tokens, args.repeats)))
        return

    info = common.machine_info()
    print(f"{info['cpu']}, {info['cores']} cores, load {info['load_average']}, {path.name}", flush=True)
    runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    for round_ in range(args.rounds):
        for variant in VARIANTS:
            result = run_variant(path, variant, args)
            runs[variant].append(result)
            print(f"  round {round_ + 1} {variant}: {result}", flush=True)
    results = {v: best(r) for v, r in runs.items()}
    print("\n| variant | load s | RSS MiB | peak RSS MiB | weights MiB | decode tok/s b1 | b32 |")
    print("|---|---|---|---|---|---|---|")
    for variant, r in results.items():
        speed = r["decode_tokens_per_s"]
        print(
            f"| {variant} | {r['load_s']} | {r['rss_mib']} | {r['peak_rss_mib']} | {r['weight_mib']} "
            f"| {speed['1']} | {speed['32']} |"
        )
    report = {"machine": info, "file": str(path), "args": vars(args) | {"gguf": str(path)}}
    report |= {"runs": runs, "best": results}
    stamp = time.strftime("%Y%m%d-%H%M%S")
    common.write_report(report, common.RESULTS_DIR / f"gguf-{stamp}.json")


if __name__ == "__main__":
    main()
