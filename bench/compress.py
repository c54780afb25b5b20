#!/usr/bin/env python3
"""Compression benchmark: size, load time and decode speed of fp32, bf16, int8 and int4
checkpoints of the same model, in one run; plus the matmul measurements behind the choice of
kernel in src/stratus/engine/quant.py.

    .venv/bin/python bench/compress.py                      # demo + 100m
    .venv/bin/python bench/compress.py --models 100m --threads 2
    .venv/bin/python bench/compress.py --quick              # small, for a smoke test
    .venv/bin/python bench/compress.py --models none --threads 1   # only the kernel table
    .venv/bin/python bench/compress.py --interleave --skip-kernels  # variants alternated in one process

Per model (demo: models/demo; 100m: the random ~100M-parameter Llama of bench/common.py):
- fp32: the checkpoint as it is, run in float32;
- bf16: the same weights saved in bfloat16, run in bfloat16;
- int8, int4: `stratus compress --method int8 | int4` (group 128, head kept in float32);
- int4+head: int4 with `--quantize-head` (the output head in int4 too).
Each variant runs in a fresh process: load time (EngineCore construction), then decode tokens/s
at batch 1 and batch 16 (64 new tokens each, greedy, best of --repeats runs; only decode steps
are timed) and prefill tokens/s (one 512-token prompt), best over --rounds processes run round
robin over the variants. With --interleave all variants load into one process (load time: a
second, warm load) and alternate, round by round, so a busy spell of a shared machine hits
every variant alike: use it for the ratios. Quality (perplexity, top-1 agreement) is what `stratus compress` reports; see
docs/BENCHMARKS.md for both.

The kernel table times one linear layer of each shape of the 100m model at 1, 16 and 64 rows:
float32 and bfloat16 dense matmuls, torch's packed int8/int4 kernels fed float32 or bfloat16
activations, dequantize-then-matmul in float32, and the layers' own dense path (bfloat16 where
the CPU has it), which large batches take. Results print as tables and go to
bench/results/compress-<time>.json.
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
DEMO = REPO / "models" / "demo"
WORK = common.RESULTS_DIR / "compress"
PREFILL_TOKENS = 512  # one prompt, one step at the engine's default token budget


def model_dir(name: str) -> Path:
    if name == "demo":
        if not (DEMO / "config.json").is_file():
            raise SystemExit(f"{DEMO}: no demo model; train it with `make demo-model`")
        return DEMO
    if name == "100m":
        return common.random_llama("llama-100m", common.LLAMA_100M)
    if name == "quick":
        return common.random_llama(
            "llama-quick",
            {
                **common.LLAMA_100M,
                "num_layers": 2,
                "hidden_size": 256,
                "intermediate_size": 512,
                "num_heads": 4,
                "vocab_size": 2048,
            },
        )
    return Path(name)


def make_variants(src: Path, name: str) -> dict[str, tuple[Path, str]]:
    """variant -> (checkpoint, engine dtype); compressed checkpoints are rebuilt every run."""
    sys.path.insert(0, str(REPO / "src"))
    import torch

    from stratus.compress import CompressSpec, compress
    from stratus.compress.checkpoint import read_config, read_weights, write_checkpoint

    out = WORK / name
    out.mkdir(parents=True, exist_ok=True)
    variants = {"fp32": (src, "float32")}
    bf16 = out / "bf16"
    config = read_config(src)
    config["torch_dtype"] = config["dtype"] = "bfloat16"
    tensors = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in read_weights(src).items()}
    write_checkpoint(src, bf16, config, tensors, overwrite=True)
    variants["bf16"] = (bf16, "bfloat16")
    specs = {
        "int8": CompressSpec("int8"),
        "int4": CompressSpec("int4"),
        "int4+head": CompressSpec("int4", quantize_head=True),
    }
    for variant, spec in specs.items():
        start = time.perf_counter()
        compress(src, out / variant, spec, overwrite=True)
        print(f"  {name} {variant}: compressed in {time.perf_counter() - start:.1f} s", flush=True)
        variants[variant] = (out / variant, "float32")
    return variants


def run_worker(path: Path, dtype: str, threads: int, tokens: int, repeats: int) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        str(path),
        "--dtype",
        dtype,
        "--threads",
        str(threads),
        "--tokens",
        str(tokens),
        "--repeats",
        str(repeats),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if out.returncode != 0:
        raise RuntimeError(f"worker failed for {path}:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def worker(path: Path, dtype: str, threads: int, tokens: int, repeats: int) -> dict:
    """Runs in its own process: load, then decode at batch 1 and 16."""
    sys.path.insert(0, str(REPO / "src"))
    import torch

    torch.set_num_threads(threads)
    from stratus.compress.evaluate import decode_speed, file_bytes
    from stratus.engine import EngineConfig, EngineCore

    start = time.perf_counter()
    engine = EngineCore(
        path,
        EngineConfig(
            dtype=dtype,
            num_threads=threads,
            kv_cache_memory_mb=256,
            max_model_len=1024,
            enable_prefix_caching=False,
        ),
    )
    load_s = time.perf_counter() - start
    prompt = engine.tokenizer.encode("It is a truth universally acknowledged, that a single man")
    speed = {}
    for batch in (1, 16):
        speed[str(batch)] = max(decode_speed(engine, batch, tokens, prompt) for _ in range(repeats))
    prefill = max(prefill_speed(engine, prompt) for _ in range(repeats))
    return {
        "bytes": file_bytes(path),
        "load_s": round(load_s, 3),
        "decode_tokens_per_s": {k: round(v, 1) for k, v in speed.items()},
        "prefill_tokens_per_s": round(prefill, 1),
    }


def prefill_speed(engine, prompt: list[int], length: int = PREFILL_TOKENS) -> float:
    """Prompt tokens/s of one `length`-token prompt (one engine step of up to 512 tokens)."""
    from stratus.compress.generation import generate

    ids = (prompt * (length // len(prompt) + 1))[:length]
    generate(engine, [ids[:16]], 1)  # warm-up
    start = time.perf_counter()
    generate(engine, [ids], 1)
    return length / (time.perf_counter() - start)


# -- kernels -------------------------------------------------------------------------------------

KERNEL_SHAPES = [
    (1280, 768, "qkv"),
    (768, 768, "o"),
    (4096, 768, "gate_up"),
    (768, 2048, "down"),
    (16384, 768, "head"),
]


def candidates(x, w, t8, t4, l8, l4) -> dict:
    """The matmuls compared for one layer and one activation batch x."""
    import torch
    import torch.nn.functional as F

    from stratus.engine.quant import dequantize_int4, dequantize_int8

    xb, wb = x.bfloat16(), w.bfloat16()
    sz_f32 = l4._kernel_scale_zeros.float()
    return {
        "fp32 linear": lambda: F.linear(x, w),
        "bf16 linear": lambda: F.linear(xb, wb),
        "int8 packed, fp32 act": lambda: torch._weight_int8pack_mm(x, t8["qweight"], t8["scales"]),
        "int8 packed, bf16 act": lambda: l8._packed_matmul(x),
        "int8 dequant+matmul": lambda: F.linear(x, dequantize_int8(t8["qweight"], t8["scales"], x.dtype)),
        "int8 layer dense path": lambda: l8._dense_matmul(x),
        "int4 packed, fp32 act": lambda: torch._weight_int4pack_mm_for_cpu(x, l4._kernel_weight, 128, sz_f32),
        "int4 packed, bf16 act": lambda: l4._packed_matmul(x),
        "int4 dequant+matmul": lambda: F.linear(
            x, dequantize_int4(t4["qweight"], t4["scales"], t4["zeros"], x.dtype)
        ),
        "int4 layer dense path": lambda: l4._dense_matmul(x),
    }


def kernels(threads: int, rows_list=(1, 16, 64), rounds: int = 7) -> list[dict]:
    """Microseconds per call, best of `rounds`, candidates interleaved so load drifts hit all."""
    sys.path.insert(0, str(REPO / "src"))
    import torch

    from stratus.compress.quantize import quantize_int4, quantize_int8
    from stratus.engine.quant import Int4Linear, Int8Linear

    torch.set_num_threads(threads)
    results = []
    for out_f, in_f, label in KERNEL_SHAPES:
        w = torch.randn(out_f, in_f) * 0.02
        t8, t4 = quantize_int8(w), quantize_int4(w, 128)
        l8, l4 = Int8Linear(in_f, out_f), Int4Linear(in_f, out_f, 128)
        for layer, t in ((l8, t8), (l4, t4)):
            for k, v in t.items():
                getattr(layer, k).copy_(v)
            layer.prepare()
        for rows in rows_list:
            cands = candidates(torch.randn(rows, in_f), w, t8, t4, l8, l4)
            if rows > 1:  # the float32-activation kernels are scalar: seconds per call at 64 rows
                cands = {k: f for k, f in cands.items() if "fp32 act" not in k}
            best = {k: float("inf") for k in cands}
            reps = max(2, 32 // rows)
            for f in cands.values():
                f()
            for _ in range(rounds):
                for k, f in cands.items():
                    start = time.perf_counter()
                    for _ in range(reps):
                        f()
                    best[k] = min(best[k], (time.perf_counter() - start) / reps)
            row = {
                "layer": label,
                "shape": [out_f, in_f],
                "rows": rows,
                "us": {k: round(v * 1e6, 1) for k, v in best.items()},
            }
            results.append(row)
            print(
                f"  {label:8s} {out_f}x{in_f} rows={rows:3d}  "
                + "  ".join(f"{k}={v * 1e6:,.0f}" for k, v in best.items()),
                flush=True,
            )
    return results


def interleaved(variants: dict, threads: int, tokens: int, rounds: int) -> dict:
    """All variants in this process, alternated round by round (a busy spell of the machine
    then hits every variant alike); best tokens/s per variant and batch size."""
    sys.path.insert(0, str(REPO / "src"))
    import torch

    torch.set_num_threads(threads)
    from stratus.compress.evaluate import decode_speed, file_bytes
    from stratus.engine import EngineConfig, EngineCore

    engines, load_s = {}, {}
    for variant, (path, dtype) in variants.items():
        config = EngineConfig(
            dtype=dtype, kv_cache_memory_mb=256, max_model_len=1024, enable_prefix_caching=False
        )
        EngineCore(path, config)  # the first load of a checkpoint also pays for the page cache
        start = time.perf_counter()
        engines[variant] = (path, EngineCore(path, config))
        load_s[variant] = round(time.perf_counter() - start, 3)
    prompt = next(iter(engines.values()))[1].tokenizer.encode("It is a truth universally acknowledged, that")
    rows = {
        v: {
            "bytes": file_bytes(p),
            "load_s": load_s[v],
            "decode_tokens_per_s": {},
            "prefill_tokens_per_s": 0.0,
        }
        for v, (p, _) in engines.items()
    }
    for _ in range(rounds):
        for variant, (_, engine) in engines.items():
            for batch in ("1", "16"):
                speed = decode_speed(engine, int(batch), tokens, prompt)
                best = rows[variant]["decode_tokens_per_s"]
                best[batch] = round(max(best.get(batch, 0.0), speed), 1)
            prefill = round(prefill_speed(engine, prompt), 1)
            rows[variant]["prefill_tokens_per_s"] = max(rows[variant]["prefill_tokens_per_s"], prefill)
    return rows


def best_of(old: dict | None, new: dict) -> dict:
    if old is None:
        return new
    speeds = {k: max(v, old["decode_tokens_per_s"][k]) for k, v in new["decode_tokens_per_s"].items()}
    return {
        "bytes": new["bytes"],
        "load_s": min(old["load_s"], new["load_s"]),
        "decode_tokens_per_s": speeds,
        "prefill_tokens_per_s": max(old["prefill_tokens_per_s"], new["prefill_tokens_per_s"]),
    }


def table(name: str, rows: dict) -> str:
    base = rows["fp32"]["decode_tokens_per_s"]
    lines = [
        f"\n{name}",
        f"{'variant':9s} {'MiB':>8s} {'load s':>7s} {'tok/s b1':>9s} {'x fp32':>7s} {'tok/s b16':>10s} "
        f"{'x fp32':>7s} {'prefill/s':>10s} {'x fp32':>7s}",
    ]
    for variant, r in rows.items():
        d, p = r["decode_tokens_per_s"], r["prefill_tokens_per_s"]
        lines.append(
            f"{variant:9s} {r['bytes'] / 2**20:8.1f} {r['load_s']:7.2f} {d['1']:9.1f} {d['1'] / base['1']:7.2f} "
            f"{d['16']:10.1f} {d['16'] / base['16']:7.2f} {p:10.1f} {p / rows['fp32']['prefill_tokens_per_s']:7.2f}"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="demo,100m")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=2, help="decode runs per batch size in one process")
    p.add_argument("--rounds", type=int, default=2, help="fresh processes per variant, round robin")
    p.add_argument("--skip-kernels", action="store_true")
    p.add_argument(
        "--interleave",
        action="store_true",
        help="run all variants in this process, alternating (fairer on a busy machine; no load times)",
    )
    p.add_argument("--quick", action="store_true", help="a small random model, fewer repeats")
    p.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--dtype", default="float32", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.dtype, args.threads, args.tokens, args.repeats)))
        return
    if args.quick:
        args.models, args.repeats, args.rounds, args.tokens = "quick", 1, 1, 16
    result = {
        "machine": common.machine_info(),
        "threads": args.threads,
        "tokens": args.tokens,
        "interleave": args.interleave,
        "models": {},
    }
    print(f"machine: {result['machine']}", flush=True)
    for name in [m for m in args.models.split(",") if m and m != "none"]:
        src = model_dir(name)
        rows: dict[str, dict] = {}
        variants = make_variants(src, name)
        if args.interleave:
            rows = interleaved(variants, args.threads, args.tokens, args.rounds)
            result["models"][name] = rows
            print(table(name, rows), flush=True)
            continue
        for _ in range(args.rounds):  # round robin, so a slow spell of the machine hits every variant
            for variant, (path, dtype) in variants.items():
                r = run_worker(path, dtype, args.threads, args.tokens, args.repeats)
                print(f"  {name} {variant}: {r}", flush=True)
                rows[variant] = best_of(rows.get(variant), r)
        result["models"][name] = rows
        print(table(name, rows), flush=True)
    if not args.skip_kernels:
        print("\nkernels (microseconds per call):", flush=True)
        result["kernels"] = kernels(
            args.threads, rows_list=(1, 16) if args.quick else (1, 16, 64), rounds=2 if args.quick else 7
        )
    result["load_average_after"] = [round(x, 2) for x in common.load_average()]
    common.RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = common.RESULTS_DIR / f"compress-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
