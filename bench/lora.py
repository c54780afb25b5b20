#!/usr/bin/env python3
"""Serving throughput with LoRA adapters: 0, 1 and 8 distinct adapters in one batch, stratus's
`EngineCore` beside transformers + PEFT (mixed-adapter batches, `adapter_names`), one run.

    .venv/bin/python bench/lora.py                      # demo and 100m (~10 min on 2 busy cores)
    .venv/bin/python bench/lora.py --models demo --requests 16 --max-tokens 32    # quick

Per model: 8 adapters of rank 16 on every projection (q k v o gate up down, as `stratus train
--lora` makes them by default), built by PEFT with random non-zero weights and kept under
bench/results/checkpoints/. The workload: `--requests` requests of random token ids, prompts
uniform in 16-64 tokens, `--max-tokens` greedy output tokens each (ignore_eos), all submitted at
once; output tokens per second of wall time and per second of the process's CPU time (the
second is what to compare on a busy machine: other processes' load slows the wall clock far more
than it inflates this process's CPU time), excluding load, after a warm-up run of the same shape. Three cases: every
row on the base model; every row on one adapter; rows spread round-robin over 8 adapters.

- stratus: `EngineCore` (`--threads`, 2 by default), the adapters loaded with `load_adapter`, every request
  added and then `step()` until idle; best of `--repeats` runs (new token ids each run, so the
  prefix cache never hits).
- transformers + PEFT: the base model with the 8 adapters loaded into one `PeftModel`, one
  `generate` call over the whole batch (left padding) with `adapter_names` per row
  ("__base__" for the base model), `--threads`, `max_new_tokens` = `--max-tokens`.

Results print as a table and go to bench/results/lora-<time>.json.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (bench/common.py)

ADAPTERS = 8
CASES = {"0 adapters": 0, "1 adapter": 1, "8 adapters": 8}


def checkpoint(name: str) -> Path:
    if name == "demo":
        return common.REPO / "models" / "demo"
    if name == "100m":
        return common.random_llama("llama-100m", common.LLAMA_100M)
    return Path(name)


def adapters_of(base: Path, name: str) -> list[Path]:
    """ADAPTERS PEFT adapters of `base` (rank 16, alpha 32, every projection), built once."""
    if str(common.REPO) not in sys.path:
        sys.path.insert(0, str(common.REPO))
    from tests.checkpoints import build_lora_adapter

    out = []
    for i in range(ADAPTERS):
        path = common.CHECKPOINT_DIR / f"{Path(name).name}-lora-{i}"
        if not (path / "adapter_model.safetensors").is_file():
            build_lora_adapter(base, path, r=16, alpha=32, seed=100 + i, std=0.02)
        out.append(path)
    return out


def workload(vocab: int, n: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(10, vocab) for _ in range(rng.randint(16, 64))] for _ in range(n)]


def row_adapters(case: int, n: int) -> list[str | None]:
    if case == 0:
        return [None] * n
    return [f"a{i % case}" for i in range(n)]


def run_stratus(base: Path, adapters: list[Path], args) -> dict[str, list[float]]:
    from stratus.engine import EngineConfig, EngineCore, GenerateRequest, SamplingParams

    core = EngineCore(base, EngineConfig(num_threads=args.threads, max_loras=ADAPTERS))
    for i, path in enumerate(adapters):
        core.load_adapter(f"a{i}", path)
    vocab = core.model_config.vocab_size
    params = SamplingParams(max_tokens=args.max_tokens, temperature=0, ignore_eos=True)

    def once(case: int, seed: int) -> tuple[float, float]:
        prompts = workload(vocab, args.requests, seed)
        names = row_adapters(case, len(prompts))
        started, cpu = time.perf_counter(), time.process_time()
        for i, (ids, adapter) in enumerate(zip(prompts, names)):
            core.add_request(
                GenerateRequest(
                    prompt_token_ids=ids, params=params, request_id=f"{seed}-{i}", adapter=adapter
                )
            )
        produced = 0
        while core.has_work():
            produced += sum(len(d.token_ids) for d in core.step())
        assert produced == args.requests * args.max_tokens
        return produced / (time.perf_counter() - started), produced / (time.process_time() - cpu)

    once(8, 1)  # warm-up: every adapter resident, the kernels and allocator warm
    return _cases("stratus", once, args.repeats)


def _cases(engine: str, once, repeats: int) -> dict[str, list[tuple[float, float]]]:
    """Each case `repeats` times, the cases interleaved (0, 1, 8, 0, 1, 8, ...) so that a change
    in the machine's load falls on all of them alike."""
    results: dict[str, list[tuple[float, float]]] = {label: [] for label in CASES}
    seed = 10
    for _ in range(repeats):
        for label, case in CASES.items():
            seed += 1
            wall, cpu = once(case, seed)
            results[label].append((wall, cpu))
            print(f"  {engine} {label}: {wall:,.0f} tok/s wall, {cpu:,.0f} tok per CPU-s", flush=True)
    return results


def run_peft(base: Path, adapters: list[Path], args) -> dict[str, list[float]]:
    import torch
    import transformers
    from peft import PeftModel

    torch.set_num_threads(args.threads)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32).eval()
    model = PeftModel.from_pretrained(model, str(adapters[0]), adapter_name="a0")
    for i, path in enumerate(adapters[1:], start=1):
        model.load_adapter(str(path), adapter_name=f"a{i}")
    model.eval()
    vocab = model.config.vocab_size
    pad = 0

    def once(case: int, seed: int) -> tuple[float, float]:
        prompts = workload(vocab, args.requests, seed)
        names = [name or "__base__" for name in row_adapters(case, len(prompts))]
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        started, cpu = time.perf_counter(), time.process_time()
        with torch.no_grad():
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=args.max_tokens,
                min_new_tokens=args.max_tokens,
                do_sample=False,
                pad_token_id=pad,
                eos_token_id=None,
                adapter_names=names,
            )
        elapsed, cpu_s = time.perf_counter() - started, time.process_time() - cpu
        produced = (out.shape[1] - width) * len(prompts)
        assert produced == args.requests * args.max_tokens
        return produced / elapsed, produced / cpu_s

    once(8, 1)
    return _cases("transformers+PEFT", once, args.repeats)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="demo,100m", help="comma-separated: demo, 100m, or checkpoint dirs")
    p.add_argument("--requests", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--skip-peft", action="store_true")
    args = p.parse_args()
    report: dict = {"machine": common.machine_info(), "settings": vars(args), "models": {}}
    print(report["machine"])
    for name in args.models.split(","):
        base = checkpoint(name)
        if not (base / "config.json").is_file():
            print(f"== {name}: no checkpoint at {base}; skipped")
            continue
        adapters = adapters_of(base, name)
        print(f"== {name}: {base}")
        entry = {"stratus": run_stratus(base, adapters, args)}
        if not args.skip_peft:
            entry["transformers_peft"] = run_peft(base, adapters, args)
        report["models"][name] = entry
    report["machine"]["load_average_end"] = [round(x, 2) for x in common.load_average()]
    print("\nbest of the repeats; tok/s wall | tok per CPU-second")
    print(f"{'model':<8} {'engine':<20} " + " ".join(f"{c:>18}" for c in CASES) + "   1 vs 0, 8 vs 0 (CPU)")
    for name, entry in report["models"].items():
        for engine, results in entry.items():
            wall = {c: max(w for w, _ in v) for c, v in results.items()}
            cpu = {c: max(u for _, u in v) for c, v in results.items()}
            row = " ".join(f"{wall[c]:>8,.0f} | {cpu[c]:>7,.0f}" for c in CASES)
            ratios = (
                f"{cpu['1 adapter'] / cpu['0 adapters']:.2f}x, {cpu['8 adapters'] / cpu['0 adapters']:.2f}x"
            )
            print(f"{name:<8} {engine:<20} {row}   {ratios}")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    common.write_report(report, common.RESULTS_DIR / f"lora-{stamp}.json")


if __name__ == "__main__":
    main()
