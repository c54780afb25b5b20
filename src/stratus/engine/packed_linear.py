"""float32 linear layers with their weight pre-packed for oneDNN, once, at load (CPU only).

`F.linear` hands MKL a row-major weight on every call; oneDNN's matmul can instead read a weight
reordered once into its blocked layout. Measured here (Xeon, AVX-512, busy shared machine) by
two engines in one process stepping the same 32 requests alternately, 2 threads: batched decode
steps 1.25x and 1.65x faster (median per step, two runs) with packed weights, single-stream
steps 0.92x. Per-call, single-thread CPU time is mixed (bench/engine_kernels.py prints it).
The packed copy replaces the plain weight, so memory does not grow; `weight` still answers,
unpacked on demand, for the rare reader (tests, calibration).

oneDNN builds (JIT-compiles) a primitive per problem shape, so a packed linear gets a new one for
every new number of rows in a step, and two caches keep them: ideep's (`LRU_CACHE_CAPACITY`) and
oneDNN's own (`ONEDNN_PRIMITIVE_CACHE_CAPACITY`), 1024 entries each by default, each entry
holding 0.3-1.5 MiB. Left at that, an engine's RSS rose by hundreds of MiB as a mixed load brought
new batch shapes; `bound_primitive_caches` caps both (docs/ENGINE.md has the figures).
"""

from __future__ import annotations

import os

import torch
from torch import nn

# oneDNN picks the blocked layout for this batch size. Packed for 32 rows (as vLLM's CPU build
# packs), small batches ran much faster than packed for one row (AMD EPYC, AVX2, single thread,
# GFLOP/s at 8 / 17 / 32 rows: 61 / 58 / 70 against 36 / 52 / 60; two threads 113 / 125 / 103
# against 69 / 88 / 93), and one row, which is bound by memory bandwidth, about as fast.
PACK_FOR_ROWS = 32

# Entries in each of the two caches: about 12 recent row counts of a model's 5 linear shapes. On
# the demo model's mixed load (1,463 requests, 477 distinct linear shapes) 64 cost 1,191
# primitive builds instead of 477 (~1 ms each, in steps of ~10 ms) and cut the RSS growth from
# +291 to +66 MiB; docs/ENGINE.md has the figures.
PRIMITIVE_CACHE_CAPACITY = 64
CACHE_VARIABLES = ("LRU_CACHE_CAPACITY", "ONEDNN_PRIMITIVE_CACHE_CAPACITY", "DNNL_PRIMITIVE_CACHE_CAPACITY")


def bound_primitive_caches(capacity: int = PRIMITIVE_CACHE_CAPACITY) -> None:
    """Cap ideep's and oneDNN's primitive caches for this process, unless the environment already
    sets one of their variables. Both read their variable once, at their first use in the process, so this must
    run before the first oneDNN op (PackedLinear calls it before packing). Not 0: ideep crashes
    with LRU_CACHE_CAPACITY=0 (torch 2.13)."""
    if not any(var in os.environ for var in CACHE_VARIABLES):
        os.environ["LRU_CACHE_CAPACITY"] = str(capacity)
        os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] = str(capacity)


def packing_available(device: torch.device, dtype: torch.dtype) -> bool:
    return (
        device.type == "cpu"
        and dtype == torch.float32
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
    )


class PackedLinear(nn.Module):
    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        bound_primitive_caches()  # before the first oneDNN op of the process, the reorder below
        # A plain attribute, not a buffer: an opaque oneDNN tensor has no storage to save or move.
        self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), PACK_FOR_ROWS)
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        y = torch.ops.mkldnn._linear_pointwise(
            x.reshape(-1, shape[-1]), self.packed, self.bias, "none", [], ""
        )
        return y.view(*shape[:-1], self.out_features)

    @property
    def weight(self) -> torch.Tensor:
        """The [out, in] weight, unpacked (a copy)."""
        return self.packed.to_dense()

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, packed=onednn"


def pack_linears(model: nn.Module) -> int:
    """Swap every float32 nn.Linear of `model` for a PackedLinear, except one whose weight is
    shared with another module (a tied lm_head: packing it would keep a second copy)."""
    shared = {
        id(p)
        for name, m in model.named_modules()
        if not isinstance(m, nn.Linear)
        for p in m.parameters(False)
    }
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear and id(child.weight) not in shared:
                setattr(parent, name, PackedLinear(child))
                swapped += 1
    return swapped
