#!/usr/bin/env python3
"""The engine's kernel choices, each beside its alternative in the same run (ratios printed).

    .venv/bin/python bench/engine_kernels.py            # ~1 min

(a) linear layers of the ~100M model (hidden 768, SwiGLU 2048, vocab 16384): `F.linear` (MKL)
    against a weight pre-packed for oneDNN (engine/packed_linear.py), at 1-256 rows;
(b) decode attention over 48 ragged contexts (16-1000 tokens) against the paged pool: one group
    padded to the longest context against the groups `plan_groups` picks (engine/decode_groups.py),
    and against the C kernel (engine/kernels/decode_attention.c) on the same scattered blocks;
    then the same contexts in consecutive blocks: per-row SDPA in place against the C kernel.

(c) a packed linear of the ~100M model on two threads over M rows against one thread over M / 2
    rows: a step as one batch on both cores against two halves on a thread each (the engine's
    former split steps, removed once one batch with the C decode kernel measured faster).

Times in (a) and (b) are CPU time of the calling thread (one torch thread), best of many alternated repeats:
on a shared machine that is steadier than wall time (other processes do not count).
"""

from __future__ import annotations

import argparse
import random
import time

import torch
import torch.nn.functional as F

from stratus.engine import native
from stratus.engine.config import ModelConfig
from stratus.engine.decode_groups import contiguous_start, make_decode_groups, overhead_tokens
from stratus.engine.model import Attention, DecodeSlice
from stratus.engine.packed_linear import PackedLinear


def best_of(fns: dict, repeats: int) -> dict[str, float]:
    best = {k: float("inf") for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.thread_time()
            fn()
            fn()
            best[name] = min(best[name], (time.thread_time() - t) / 2)
    return best


def linears(repeats: int) -> None:
    print("(a) linear layers: ms per call, F.linear / packed")
    shapes = {
        "qkv": (1280, 768),
        "o": (768, 768),
        "gate_up": (4096, 768),
        "down": (768, 2048),
        "lm_head": (16384, 768),
    }
    for name, (out, inp) in shapes.items():
        linear = torch.nn.Linear(inp, out, bias=False)
        packed = PackedLinear(linear)
        cells = []
        for rows in (1, 4, 32, 64, 256):
            x = torch.randn(rows, inp)
            weight = linear.weight
            fns = {"mkl": lambda x=x, w=weight: F.linear(x, w), "packed": lambda x=x, p=packed: p(x)}
            t = best_of(fns, repeats)
            cells.append(
                f"{rows:>3} rows {1e3 * t['mkl']:.3f}/{1e3 * t['packed']:.3f} = {t['mkl'] / t['packed']:.2f}x"
            )
        print(f"  {name:8s} " + " | ".join(cells))


def decode_attention(repeats: int) -> None:
    config = ModelConfig.from_dict(
        {
            "architectures": ["LlamaForCausalLM"],
            "hidden_size": 768,
            "num_attention_heads": 12,
            "num_key_value_heads": 4,
            "intermediate_size": 2048,
            "num_hidden_layers": 1,
            "vocab_size": 16384,
        }
    )
    attn = Attention(config)
    block_size = 16
    rng = random.Random(0)
    lengths = sorted((rng.randint(16, 1000) for _ in range(48)), reverse=True)
    blocks = list(range(1, 1 + sum(-(-n // block_size) for n in lengths)))
    rng.shuffle(blocks)
    tables, at = [], 0
    for n in lengths:
        width = -(-n // block_size)
        tables.append(blocks[at : at + width])
        at += width
    cache = torch.randn(2 * config.num_kv_heads, (len(blocks) + 1) * block_size, config.head_dim)
    q = torch.randn(len(lengths), config.num_heads, config.head_dim)
    out = torch.empty_like(q)
    cpu = torch.device("cpu")
    overhead = overhead_tokens(config.num_kv_heads, config.head_dim, torch.float32)
    one = make_decode_groups(lengths, tables, block_size, None, 10**12, torch.float32, cpu)
    planned = make_decode_groups(lengths, tables, block_size, None, overhead, torch.float32, cpu)
    singles = make_decode_groups(lengths, tables, block_size, None, 0, torch.float32, cpu)

    def attend(groups):
        return lambda: [attn._decode(q, cache, g, block_size, out) for g in groups]

    def kernel(tables):
        table_t = torch.tensor([t + [0] * (len(tables[0]) - len(t)) for t in tables], dtype=torch.int32)
        lengths_t = torch.tensor(lengths, dtype=torch.int32)
        return lambda: native.decode_attention(
            q, cache, out, table_t, lengths_t, block_size, config.num_kv_heads, attn.scale, None
        )

    fns = {"one": attend(one), "planned": attend(planned), "singles": attend(singles)}
    have_kernel = native.decode_attention_kernel() is not None
    if have_kernel:
        fns["kernel"] = kernel(tables)
    with torch.inference_mode():
        t = best_of(fns, repeats)
    padded = len(lengths) * lengths[0] / sum(lengths)
    print(f"(b) decode attention, 48 rows, padded/real keys with one group {padded:.2f}x; ms per layer:")
    print(
        f"  one padded group {1e3 * t['one']:.2f} | planned ({len(planned)} groups, overhead {overhead} tokens) "
        f"{1e3 * t['planned']:.2f} | one group per row {1e3 * t['singles']:.2f}; one / planned = {t['one'] / t['planned']:.2f}x"
    )
    if not have_kernel:
        print("  C kernel: not built here (no C compiler?)")
        return
    print(f"  C kernel {1e3 * t['kernel']:.2f}; planned / kernel = {t['planned'] / t['kernel']:.2f}x")
    # The same contexts in consecutive blocks, as the allocator lays them out when it can.
    consecutive, at = [], 1
    for n in lengths:
        width = -(-n // block_size)
        consecutive.append(list(range(at, at + width)))
        at += width
    slices = [
        DecodeSlice(row, contiguous_start(tb, len(tb)) * block_size, n)
        for row, (tb, n) in enumerate(zip(consecutive, lengths))
    ]
    fns = {
        "in_place": lambda: [attn._decode_in_place(q, cache, s, out) for s in slices],
        "kernel": kernel(consecutive),
    }
    with torch.inference_mode():
        t = best_of(fns, repeats)
    keys_gb = sum(lengths) * 2 * config.num_kv_heads * config.head_dim * 4 / 1e9
    print(
        f"  consecutive blocks: SDPA in place {1e3 * t['in_place']:.2f} ({keys_gb / t['in_place']:.1f} GB/s) | "
        f"C kernel {1e3 * t['kernel']:.2f} ({keys_gb / t['kernel']:.1f} GB/s); in place / kernel = "
        f"{t['in_place'] / t['kernel']:.2f}x"
    )


def one_batch_or_halves(repeats: int) -> None:
    """Wall time, since two threads are the point; 12 copies of each weight, cycled, so the
    weights come from memory as in a model, not from the L3."""
    print("(c) packed linear, ms per call: 2 threads on M rows | 1 thread on M/2 rows")

    def wall(fn) -> float:
        best = float("inf")
        for _ in range(max(3, repeats // 10)):
            t = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t)
        return best

    for out, inp, name in ((4096, 768, "gate_up"), (768, 2048, "down"), (1280, 768, "qkv")):
        layers = [PackedLinear(torch.nn.Linear(inp, out, bias=False)) for _ in range(12)]
        cells = []
        for rows in (8, 16, 32, 64, 128):
            whole, half = torch.randn(rows, inp), torch.randn(rows // 2, inp)
            torch.set_num_threads(2)
            two = wall(lambda x=whole, ls=layers: [layer(x) for layer in ls]) / len(layers)
            torch.set_num_threads(1)
            one = wall(lambda x=half, ls=layers: [layer(x) for layer in ls]) / len(layers)
            cells.append(f"{rows:>3} {1e3 * two:.3f}|{1e3 * one:.3f} = {one / two:.2f}x")
        print(f"  {name:8s} " + " | ".join(cells))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=30)
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    linears(args.repeats)
    decode_attention(args.repeats)
    one_batch_or_halves(args.repeats)


if __name__ == "__main__":
    main()
