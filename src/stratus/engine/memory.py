"""How much memory one replica's KV pool gets, and whether a model fits at all.

Unless the pool is set explicitly (`--num-kv-blocks`, `--kv-cache-memory-mb`), it is sized from
the memory available once the weights are loaded, as vLLM's memory utilisation setting does:

- CPU: `--kv-cache-memory-fraction` (default 0.25) of MemAvailable (/proc/meminfo): the machine
  is shared with the OS, the gateway and other processes, and the pool is touched when made;
- CUDA: the fraction (default 0.8) of the device memory free (`torch.cuda.mem_get_info`): the
  rest is left for activations and other processes on the device;

capped at what `max_num_seqs` sequences of the full context need, since more would never be
used. On a CPU the pool is an anonymous mapping (`zeroed`): its pages are zero and come from
the OS as blocks are first written, so start-up does not wait to clear gigabytes and an engine
holds only what it has used so far (the budget is measured at start; memory taken by others
later is not reserved against). A pool too small for the model's context window serves the context that fits (core.py
says so); a pool that cannot hold even `MIN_CONTEXT` tokens, or weights larger than the memory
available, fail with `InsufficientMemory`, naming the numbers and the flags that would help.
"""

from __future__ import annotations

import math
import mmap
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import EngineConfig, ModelConfig

DEFAULT_FRACTION = {"cpu": 0.25, "cuda": 0.8}
MIN_CONTEXT = 256  # tokens: a pool sized automatically must hold this (or the whole window, if smaller)
FALLBACK_KV_MB = 256  # when the memory available cannot be read (neither /proc/meminfo nor sysconf)
MiB = 2**20

# What would help, in the words of `stratus serve`'s flags (tensor parallelism once it exists).
SMALLER_WEIGHTS = (
    "--dtype bfloat16 (half the float32 memory), a quantized copy (`stratus compress SRC DST "
    "--method int8|int4`), or a machine or device with more memory"
)
SMALLER_POOL = "a lower --max-model-len, " + SMALLER_WEIGHTS


class InsufficientMemory(ValueError):
    """The model cannot be served in the memory there is; the message has the numbers and flags."""


@dataclass(frozen=True, slots=True)
class PoolPlan:
    num_blocks: int
    how: str  # for the start-up log line: "0.25 of 9,812 MiB available" or "--kv-cache-memory-mb"


def available_bytes(device: torch.device) -> int | None:
    """Memory this process could still take: free device memory on CUDA, MemAvailable on a
    CPU (what the kernel could hand out without swapping); None when it cannot be read."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def kv_bytes_per_token(model: ModelConfig, dtype: torch.dtype) -> int:
    """K and V of every layer for one token."""
    return 2 * model.num_layers * model.num_kv_heads * model.head_dim * torch.finfo(dtype).bits // 8


def weight_bytes_estimate(path: Path, model: ModelConfig, dtype: torch.dtype) -> int:
    """The least the weights will take once loaded, so that only a model that surely cannot fit
    is refused: a quantized checkpoint or a GGUF file as stored (a GGUF tensor type may be kept
    packed, or dequantized to more), any other as its parameters in the serving dtype."""
    if path.is_file():  # GGUF
        return path.stat().st_size
    if model.quantization:
        return sum(f.stat().st_size for f in path.glob("*.safetensors"))
    return model.num_parameters() * torch.finfo(dtype).bits // 8


def check_weights_fit(name: str, needed: int, available: int | None, dtype: torch.dtype) -> None:
    if available is not None and needed > available:
        raise InsufficientMemory(
            f"{name}: the weights need about {_mib(needed)} in {_dtype_name(dtype)}, but only "
            f"{_mib(available)} of memory is available; try {SMALLER_WEIGHTS}"
        )


def plan_pool(
    name: str,
    model: ModelConfig,
    config: EngineConfig,
    dtype: torch.dtype,
    device: torch.device,
    max_model_len: int,
    available: int | None,
) -> PoolPlan:
    """The pool's size in blocks: as set, else from `available` (measured after the weights)."""
    per_block = kv_bytes_per_token(model, dtype) * config.block_size
    if config.num_kv_blocks:
        return PoolPlan(config.num_kv_blocks, "--num-kv-blocks")
    if config.kv_cache_memory_mb is not None:
        return PoolPlan(max(1, config.kv_cache_memory_mb * MiB // per_block), "--kv-cache-memory-mb")
    if available is None:
        return PoolPlan(max(1, FALLBACK_KV_MB * MiB // per_block), "the memory available is unknown")
    fraction = config.kv_cache_memory_fraction or DEFAULT_FRACTION.get(device.type, DEFAULT_FRACTION["cpu"])
    budget = int(available * fraction) // per_block
    wanted = config.max_num_seqs * -(-max_model_len // config.block_size)  # never more than can be used
    blocks = min(budget, wanted)
    least = min(MIN_CONTEXT, max_model_len)
    if blocks * config.block_size < least:
        need = -(-least // config.block_size) * per_block
        raise InsufficientMemory(
            f"{name}: the KV cache for a context of {least} tokens needs {_mib(need)}, but "
            f"{fraction:g} of the {_mib(available)} available is {_mib(available * fraction)}; raise "
            f"--kv-cache-memory-fraction, set --kv-cache-memory-mb, or try {SMALLER_POOL}"
        )
    how = f"{fraction:g} of {_mib(available)} available"
    if blocks == wanted:
        how += f", capped at --max-num-seqs {config.max_num_seqs} full-length sequences"
    return PoolPlan(blocks, how)


def zeroed(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A zero tensor for the KV pool; on a CPU backed by an anonymous mapping (zero pages, taken
    from the OS when first written), elsewhere allocated and cleared at once."""
    if device.type != "cpu":
        return torch.zeros(shape, dtype=dtype, device=device)
    size = math.prod(shape) * torch.finfo(dtype).bits // 8
    if size == 0:
        return torch.zeros(shape, dtype=dtype)
    # The tensor keeps the mapping alive (frombuffer holds a reference to it).
    return torch.frombuffer(mmap.mmap(-1, size), dtype=dtype).view(shape)


def _mib(n: float) -> str:
    return f"{n / MiB:,.1f} MiB" if n < 10 * MiB else f"{n / MiB:,.0f} MiB"


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
