#!/usr/bin/env python3
"""The engine on a GPU, checked and measured in one run (started by bench/gpu_check.sh).

    python bench/gpu_check.py --out DIR              # on a GPU machine: cuda, bf16, ~100M model
    python bench/gpu_check.py --dry-run --out DIR    # on a CPU: the same steps, small and fast

Steps, each recorded in DIR/gpu_check.json and summarised in DIR/gpu_check.md:
1. the device: name, memory, and its measured copy bandwidth (bytes read + written per second);
2. parity with `transformers` on the device, on random Llama-3 (GQA) and Qwen2 (bias, tied)
   checkpoints: float32 logits within 1e-3 and greedy tokens identical (TF32 off), bf16 logits
   within a relative error of 2e-2 with top-1 agreement on at least 90% of positions (two bf16
   implementations round differently; float32 is where exactness is checked);
3. throughput: 64 requests of mixed lengths, greedy, stratus `EngineCore` against transformers
   `generate` with a static cache, on the ~100M checkpoint (bench/common.py LLAMA_100M);
4. one stream: decode tokens/s and its fraction of the bandwidth limit (bandwidth divided by the
   bytes of weights one token reads).

A step that fails is recorded with its error and the run goes on; the exit status is non-zero
when any step failed. The real GGUF fixture (98 MB) does not fit the 64 MiB that a device call
carries, so the GPU run measures random checkpoints only (docs/BENCHMARKS.md says so).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (bench/common.py)

if str(common.REPO) not in sys.path:
    sys.path.insert(0, str(common.REPO))

PARITY_ARCHS = {"llama3": {}, "qwen2": {"tie_word_embeddings": True}}
# Ids from 8 up: no special token (0..6; 2 is the pad id, which generate would mask out).
PARITY_PROMPTS = [[8, 15, 9, 42, 100, 17, 13], [8, 200, 17, 14], list(range(8, 70))]
SMALL = dict(
    hidden_size=128, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=256, vocab_size=512
)


def pick_device(dry_run: bool):
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda")
    if not dry_run:
        raise SystemExit(
            "no CUDA device: run on a GPU machine, or pass --dry-run to check the script on a CPU"
        )
    return torch.device("cpu")


def device_info(device) -> dict:
    import torch

    info = {"device": str(device), "torch": torch.__version__, **common.machine_info()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            gpu=props.name,
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            multiprocessors=props.multi_processor_count,
            cuda=torch.version.cuda,
        )
    return info


def device_bandwidth(device, mib: int) -> float:
    """Bytes read + written per second by a large device-to-device copy (best of ten)."""
    import torch

    src = torch.empty(mib * 2**20 // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(12):
        sync(device)
        t = time.perf_counter()
        dst.copy_(src)
        sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * src.numel() * 4 / best


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def engine_config(device, dtype: str, **extra):
    from stratus.engine import EngineConfig

    return EngineConfig(device=device.type, dtype=dtype, **extra)


def check_parity(device, dtype: str, root: Path) -> dict:
    """stratus against transformers, same checkpoint, same device and dtype."""
    import torch

    from stratus.engine import EngineCore, GenerateRequest, SamplingParams
    from tests.checkpoints import build_checkpoint, load_hf_model

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch_dtype = getattr(torch, dtype)
    results = {}
    for arch, extra in PARITY_ARCHS.items():
        path = build_checkpoint(root / arch, arch, hidden_size=128, init_std=0.1, **extra)
        hf = load_hf_model(path, dtype=torch_dtype).to(device)
        engine = EngineCore(path, engine_config(device, dtype, kv_cache_memory_mb=64))
        ours = engine.prompt_logits(PARITY_PROMPTS)
        worst_abs = worst_rel = 0.0
        agree = total = 0
        for ids, logits in zip(PARITY_PROMPTS, ours):
            with torch.no_grad():
                ref = hf(torch.tensor([ids], device=device)).logits[0].float()
            got = logits.float().to(device)
            worst_abs = max(worst_abs, (ref - got).abs().max().item())
            worst_rel = max(worst_rel, ((ref - got).norm() / ref.norm()).item())
            agree += (ref.argmax(-1) == got.argmax(-1)).sum().item()
            total += len(ids)
        greedy_same = None
        if dtype == "float32":
            greedy_same = greedy_matches(engine, hf, device, GenerateRequest, SamplingParams)
        row = {
            "max_abs_diff": worst_abs,
            "max_rel_diff": worst_rel,
            "top1_agreement": agree / total,
            "greedy_identical": greedy_same,
        }
        if dtype == "float32":
            row["ok"] = worst_abs <= 1e-3 and bool(greedy_same)
        else:
            row["ok"] = worst_rel <= 2e-2 and agree / total >= 0.90
        results[arch] = row
        print(f"  parity {arch} {dtype}: {row}", flush=True)
    return results


def greedy_matches(engine, hf, device, GenerateRequest, SamplingParams) -> bool:
    import torch

    for i, ids in enumerate(PARITY_PROMPTS):
        params = SamplingParams(max_tokens=32, temperature=0, ignore_eos=True)
        engine.add_request(GenerateRequest(prompt_token_ids=ids, params=params, request_id=str(i)))
    got: dict[str, list[int]] = {}
    while engine.has_work():
        for delta in engine.step():
            got.setdefault(delta.request_id, []).extend(delta.token_ids)
    for i, ids in enumerate(PARITY_PROMPTS):
        with torch.no_grad():
            ref = hf.generate(
                torch.tensor([ids], device=device),
                max_new_tokens=32,
                do_sample=False,
                eos_token_id=None,
                pad_token_id=2,
            )
        if got[str(i)] != ref[0, len(ids) :].tolist():
            return False
    return True


def measure_throughput(device, dtype: str, path: Path, work, vocab: int) -> dict:
    """Offline output tokens/s for the workload: stratus, then transformers generate (static cache)."""
    import torch

    from stratus.engine import EngineCore, GenerateRequest, SamplingParams

    engine = EngineCore(path, engine_config(device, dtype, max_num_seqs=64, kv_cache_memory_mb=4096))

    def run(tag: str, prompts: list[list[int]]) -> tuple[float, int]:
        for i, (ids, m) in enumerate(zip(prompts, work.max_tokens)):
            params = SamplingParams(max_tokens=m, temperature=0.0, ignore_eos=True)
            engine.add_request(GenerateRequest(prompt_token_ids=ids, params=params, request_id=f"{tag}{i}"))
        sync(device)
        t = time.perf_counter()
        tokens = 0
        while engine.has_work():
            tokens += sum(len(d.token_ids) for d in engine.step())
        sync(device)
        return time.perf_counter() - t, tokens

    run("warm", [[(t + 7919) % vocab for t in p] for p in work.prompts])  # other ids: no prefix hits
    seconds, tokens = run("timed", work.prompts)
    ours = tokens / seconds
    print(f"  stratus: {ours:,.0f} output tok/s ({seconds:.2f} s)", flush=True)

    from tests.checkpoints import load_hf_model

    hf = load_hf_model(path, dtype=getattr(torch, dtype)).to(device)
    width = max(len(p) for p in work.prompts)
    pad = 0
    ids = torch.full((len(work.prompts), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, p in enumerate(work.prompts):  # left padding, as a user batches for generate
        ids[row, width - len(p) :] = torch.tensor(p)
        mask[row, width - len(p) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    longest = max(work.max_tokens)

    def hf_run() -> float:
        sync(device)
        t = time.perf_counter()
        with torch.no_grad():
            hf.generate(
                ids,
                attention_mask=mask,
                max_new_tokens=longest,
                min_new_tokens=longest,
                do_sample=False,
                pad_token_id=pad,
                cache_implementation="static",
            )
        sync(device)
        return time.perf_counter() - t

    hf_run()  # warm-up: the static cache and kernels
    hf_seconds = hf_run()
    theirs = sum(work.max_tokens) / hf_seconds  # only the tokens each request asked for count
    print(
        f"  transformers generate (static cache): {theirs:,.0f} output tok/s ({hf_seconds:.2f} s)", flush=True
    )
    return {"stratus_tok_s": ours, "transformers_tok_s": theirs, "ratio": ours / theirs}


def measure_single_stream(device, dtype: str, path: Path, bandwidth: float, tokens: int) -> dict:
    import torch

    from stratus.engine import EngineCore, GenerateRequest, SamplingParams

    engine = EngineCore(path, engine_config(device, dtype, kv_cache_memory_mb=1024))
    result = {}
    for tag in ("warm", "timed"):
        params = SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True)
        engine.add_request(
            GenerateRequest(prompt_token_ids=[1, 2, 3, 4, 5, 6, 7, 8], params=params, request_id=tag)
        )
        first = None
        count = 0
        while engine.has_work():
            got = sum(len(d.token_ids) for d in engine.step())
            sync(device)
            if got and first is None:
                first = time.perf_counter()
            count += got
        result = {"decode_tok_s": (count - 1) / (time.perf_counter() - first)}
    per_token = common.parameter_counts(common.read_config(path))["bytes_read_per_token_fp32"]
    per_token = per_token * torch.tensor([], dtype=getattr(torch, dtype)).element_size() // 4
    limit = bandwidth / per_token
    result.update(bandwidth_limit_tok_s=limit, fraction_of_limit=result["decode_tok_s"] / limit)
    print(f"  one stream: {result}", flush=True)
    return result


def run_step(report: dict, name: str, fn, *args):
    print(f"== {name}", flush=True)
    t = time.perf_counter()
    try:
        report[name] = {"result": fn(*args), "seconds": round(time.perf_counter() - t, 1)}
    except Exception as exc:  # a failed step is recorded; the others still run
        traceback.print_exc()
        report[name] = {"error": f"{type(exc).__name__}: {exc}", "seconds": round(time.perf_counter() - t, 1)}


def summary(report: dict) -> str:
    lines = ["# GPU check", "", "```", json.dumps(report["machine"], indent=1), "```", ""]
    for name, step in report.items():
        if name == "machine":
            continue
        lines.append(f"## {name} ({step.get('seconds')} s)")
        lines.append("")
        lines.append("```")
        lines.append(json.dumps(step.get("result", step.get("error")), indent=1, default=str))
        lines.append("```")
        lines.append("")
    return "\n".join(lines)


def failed(report: dict) -> list[str]:
    bad = [name for name, step in report.items() if isinstance(step, dict) and "error" in step]
    for name in ("parity float32", "parity bf16"):
        rows = report.get(name, {}).get("result") or {}
        bad += [f"{name} {arch}" for arch, row in rows.items() if not row["ok"]]
    return bad


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--dry-run", action="store_true", help="a CPU is fine: small model, few requests")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    device = pick_device(args.dry_run)
    half = "bfloat16"
    report: dict = {"machine": device_info(device)}
    root = Path(tempfile.mkdtemp(prefix="stratus-gpu-check-"))

    bandwidth = device_bandwidth(device, 64 if args.dry_run else 2048)
    report["machine"]["copy_bandwidth_gb_s"] = round(bandwidth / 1e9, 1)
    print(f"device {device}: copy bandwidth {bandwidth / 1e9:,.1f} GB/s", flush=True)

    run_step(report, "parity float32", check_parity, device, "float32", root / "f32")
    run_step(report, "parity bf16", check_parity, device, half, root / "bf16")

    spec = SMALL if args.dry_run else common.LLAMA_100M
    path = common.random_llama("gpu-check-small" if args.dry_run else "llama-100m", spec, root)
    vocab = spec["vocab_size"]
    n, out_lo, out_hi = (8, 4, 16) if args.dry_run else (64, 32, 256)
    work = common.make_workload(n, vocab, (8, 128), (out_lo, out_hi), max_model_len=2048)
    dtype = "float32" if args.dry_run else half
    run_step(report, f"throughput {dtype}", measure_throughput, device, dtype, path, work, vocab)
    stream_tokens = 16 if args.dry_run else 256
    run_step(
        report, f"one stream {dtype}", measure_single_stream, device, dtype, path, bandwidth, stream_tokens
    )

    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))
    (args.out / "gpu_check.md").write_text(summary(report))
    bad = failed(report)
    print("FAILED: " + ", ".join(bad) if bad else "all steps passed", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
