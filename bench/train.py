#!/usr/bin/env python3
"""Training throughput of `stratus train`: tokens/s at 1 and 2 data-parallel workers, and the
scaling efficiency.

    .venv/bin/python bench/train.py                  # the demo model, full fine-tuning
    .venv/bin/python bench/train.py --lora           # a LoRA adapter (r=16, every projection)
    .venv/bin/python bench/train.py --quick          # a smoke test, not a measurement

Each configuration is one real job (the supervisor, its worker processes, gloo all-reduce)
training the demo model (models/demo) on 256-token windows of Jane Austen's novels
(corpus/austen) with the same global batch (8 windows per step):

- 1 worker, 1 thread     the baseline a worker of the 2-worker job is compared with;
- 1 worker, 2 threads    the whole machine to one process (torch's intra-op threads);
- 2 workers, 1 thread    data parallel over the same two cores.

The peer: transformers' LlamaForCausalLM trained by a plain loop in this process (1 thread,
AdamW, the same windows and global batch, micro-batches of 4, loss from `labels`): what a
hand-written single-process fine-tune of the same model costs.

Tokens/s is the median over the timed steps (the first --warmup steps are not counted) of the
batch's tokens over the step's wall time, as metrics.jsonl records them. Scaling efficiency:
tokens/s at 2 workers / (2 x tokens/s at 1 worker of 1 thread). Results print as a table and go
to bench/results/train-<time>.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, RESULTS_DIR, machine_info, write_report  # noqa: E402

from stratus.train.lora import LoraSpec  # noqa: E402
from stratus.train.spec import TrainSpec  # noqa: E402
from stratus.train.supervisor import Supervisor, read_metrics  # noqa: E402

CONFIGS = [("1 worker, 1 thread", 1, 1), ("1 worker, 2 threads", 1, 2), ("2 workers, 1 thread each", 2, 1)]


def run(args: argparse.Namespace, root: Path, workers: int, threads: int) -> dict:
    spec = TrainSpec(
        model=str(args.model),
        data=[str(p) for p in data_files()],
        out=str(root / f"w{workers}-t{threads}"),
        lora=LoraSpec.parse("r=16,alpha=32") if args.lora else None,
        eval_fraction=0.0,
        workers=workers,
        batch_size=8,
        micro_batch=4,
        seq_len=args.seq_len,
        steps=args.steps,
        lr=1e-4,
        eval_every=10**6,
        checkpoint_every=10**6,
        threads=threads,
    )
    started = time.perf_counter()
    Supervisor(spec).run()
    wall = time.perf_counter() - started
    steps = [m for m in read_metrics(spec.metrics_file) if "loss" in m][args.warmup :]
    return {
        "workers": workers,
        "threads": threads,
        "tokens_per_s": statistics.median(m["tokens_per_s"] for m in steps),
        "step_seconds": statistics.median(m["step_seconds"] for m in steps),
        "tokens_per_step": steps[0]["tokens"],
        "job_seconds": round(wall, 1),
    }


def peer(args: argparse.Namespace, threads: int) -> dict:
    """transformers' model, a plain loop: the same batches a 1-worker job trains on."""
    import torch
    from transformers import AutoModelForCausalLM

    from stratus.engine.tokenizer import Tokenizer
    from stratus.train.data import ExampleReader, Order, collate

    torch.set_num_threads(threads)
    examples = ExampleReader(Tokenizer(args.model), args.seq_len).read(data_files()).examples
    order = Order(len(examples), 8, 0)
    model = AutoModelForCausalLM.from_pretrained(str(args.model), dtype=torch.float32).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    times, tokens = [], 0
    for step in range(args.steps):
        batch = [examples[i] for i in order.batch(step)]
        started = time.perf_counter()
        for first in range(0, 8, 4):
            ids, learn = collate(batch[first : first + 4], pad_id=0)
            labels = ids.masked_fill(~torch.cat([learn[:, :1], learn], dim=1), -100)
            (model(input_ids=ids, labels=labels).loss / 2).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - started)
        tokens = sum(len(e.ids) for e in batch)
    step_seconds = statistics.median(times[args.warmup :])
    return {
        "workers": 1,
        "threads": threads,
        "tokens_per_s": tokens / step_seconds,
        "step_seconds": step_seconds,
    }


def data_files() -> list[Path]:
    return sorted((REPO / "corpus" / "austen").glob("*.txt"))[:1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=REPO / "models" / "demo")
    parser.add_argument("--lora", action="store_true", help="train a LoRA adapter instead of every weight")
    parser.add_argument("--steps", type=int, default=14)
    parser.add_argument("--warmup", type=int, default=4, help="first steps not timed")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.warmup, args.seq_len = 4, 1, 64
    info = machine_info()
    print(f"{info['cpu']}, {info['cores']} cores, load {info['load_average']}, commit {info['git_commit']}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, workers, threads in CONFIGS:
            row = {"config": name, **run(args, Path(tmp), workers, threads)}
            rows.append(row)
            print(f"{name:<26} {row['tokens_per_s']:>9,.0f} tokens/s  ({row['step_seconds']:.3f} s/step)")
    if not args.lora:
        row = {"config": "peer: transformers, plain loop, 1 thread", **peer(args, 1)}
        rows.append(row)
        print(
            f"{row['config']:<26} {row['tokens_per_s']:>9,.0f} tokens/s  ({row['step_seconds']:.3f} s/step)"
        )
    base = rows[0]["tokens_per_s"]
    efficiency = rows[2]["tokens_per_s"] / (2 * base)
    print(f"scaling efficiency (2 workers vs 2 x 1 worker of 1 thread): {efficiency:.0%}")
    print(f"2 workers vs 1 worker of 2 threads: {rows[2]['tokens_per_s'] / rows[1]['tokens_per_s']:.2f}x")
    info["load_average_after"] = [round(x, 2) for x in __import__("os").getloadavg()]
    report = {
        "machine": info,
        "mode": "lora" if args.lora else "full",
        "rows": rows,
        "efficiency": efficiency,
    }
    write_report(report, RESULTS_DIR / f"train-{time.strftime('%Y%m%d-%H%M%S')}.json")


if __name__ == "__main__":
    main()
