"""Group a step's decodes by context length, so that a short context is not padded to the longest.

Decode attention reads each row's keys padded to the longest context of its group (one batched
matmul per group). One group for the whole batch wastes the padding: with ragged lengths that was
~1.7x the keys actually needed. One group per row wastes the fixed cost of each group (a gather and
an attention call: tens of microseconds per layer). `plan_groups` picks the split with the
least total cost, counting that fixed cost as `overhead_tokens` keys.
"""

from __future__ import annotations

import torch

from .model import DecodeGroup

# The fixed cost of one more group, in bytes of keys and values it could have read instead
# (a rough figure: tens of microseconds per group and layer, against ~10 GB/s through the
# gather, matmuls and softmax; bench/engine_kernels.py measures both on a machine).
GROUP_OVERHEAD_BYTES = 128 * 1024


def overhead_tokens(num_kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
    """GROUP_OVERHEAD_BYTES in tokens of this model's K and V (per layer)."""
    per_token = 2 * num_kv_heads * head_dim * torch.finfo(dtype).bits // 8
    return max(1, GROUP_OVERHEAD_BYTES // per_token)


def block_table_tensor(
    tables: list[list[int]], length: int, block_size: int, device: torch.device, dtype=torch.long
) -> torch.Tensor:
    """[len(tables), W] the blocks holding positions 0..length-1 of each table (padded with 0)."""
    width = -(-length // block_size)
    rows = [t[:width] + [0] * (width - min(width, len(t))) for t in tables]
    return torch.tensor(rows, dtype=dtype, device=device)


def contiguous_start(table: list[int], num_blocks: int) -> int | None:
    """The first block of `table[:num_blocks]` if those blocks are consecutive ids (then the
    context is one slice of the pool, read in place), else None."""
    first = table[0]
    if table[num_blocks - 1] - first != num_blocks - 1:
        return None
    if num_blocks > 2 and table[:num_blocks] != list(range(first, first + num_blocks)):
        return None
    return first


def plan_groups(lengths: list[int], overhead: int) -> list[tuple[int, int]]:
    """[start, stop) ranges over `lengths` (sorted longest first) that minimise the sum over
    groups of `overhead + rows * longest length` (exact, by dynamic programming; n <= a few
    hundred rows, so the O(n^2) loop costs well under a millisecond at 64)."""
    n = len(lengths)
    best = [0] + [0] * n
    cut = [0] * (n + 1)
    for stop in range(1, n + 1):
        # The group [start, stop) costs overhead + (stop - start) * lengths[start].
        cost, start = min((best[i] + (stop - i) * lengths[i], i) for i in range(stop))
        best[stop], cut[stop] = cost + overhead, start
    ranges = []
    stop = n
    while stop:
        ranges.append((cut[stop], stop))
        stop = cut[stop]
    return ranges[::-1]


def make_decode_groups(
    lengths: list[int],
    block_tables: list[list[int]],
    block_size: int,
    sliding_window: int | None,
    overhead: int,
    dtype: torch.dtype,
    device: torch.device,
    first_row: int = 0,
) -> list[DecodeGroup]:
    """Groups for decode rows first_row.., whose context lengths are `lengths` (sorted longest
    first) and whose blocks are `block_tables`; masks are built here, once per step for all layers."""
    groups = []
    for start, stop in plan_groups(lengths, overhead):
        longest = lengths[start]
        blocks = block_table_tensor(block_tables[start:stop], longest, block_size, device)
        mask = None
        ragged = lengths[stop - 1] != longest
        if ragged or (sliding_window is not None and longest > sliding_window):
            ctx = torch.tensor(lengths[start:stop], device=device).unsqueeze(1)
            key_pos = torch.arange(longest, device=device).unsqueeze(0)
            valid = key_pos < ctx
            if sliding_window is not None:
                valid &= (ctx - 1) - key_pos < sliding_window
            mask = torch.zeros(valid.shape, dtype=dtype, device=device).masked_fill_(~valid, float("-inf"))
            mask = mask[:, None, None, :]  # [rows, 1, 1, keys]: the same for every head and query
        groups.append(DecodeGroup(first_row + start, stop - start, longest, blocks, mask))
    return groups
