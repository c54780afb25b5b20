"""Decode grouping: the cheapest split, masks that hide exactly the padding, and the same
attention output as one padded group."""

import itertools

import pytest
import torch

from stratus.engine.decode_groups import contiguous_start, make_decode_groups, plan_groups
from stratus.engine.model import Attention, DecodeSlice
from stratus.engine.model_runner import ModelRunner

pytestmark = pytest.mark.timeout(120)


def cost(lengths: list[int], ranges: list[tuple[int, int]], overhead: int) -> int:
    return sum(overhead + (stop - start) * lengths[start] for start, stop in ranges)


def all_splits(n: int):
    for cuts in itertools.product([False, True], repeat=n - 1):
        bounds = [0] + [i + 1 for i, c in enumerate(cuts) if c] + [n]
        yield list(zip(bounds, bounds[1:]))


@pytest.mark.parametrize("overhead", [0, 40, 300, 10_000])
def test_plan_is_the_cheapest_contiguous_split(overhead):
    rng = torch.Generator().manual_seed(overhead)
    for n in range(1, 9):
        lengths = sorted(torch.randint(1, 600, (n,), generator=rng).tolist(), reverse=True)
        ranges = plan_groups(lengths, overhead)
        assert ranges[0][0] == 0 and ranges[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
        best = min(cost(lengths, split, overhead) for split in all_splits(n))
        assert cost(lengths, ranges, overhead) == best


def test_extremes_one_group_or_one_per_length():
    lengths = [500, 400, 300, 20]
    assert plan_groups(lengths, 10**9) == [(0, 4)]
    assert plan_groups(lengths, 0) == [(0, 1), (1, 2), (2, 3), (3, 4)]
    assert plan_groups([], 5) == []


def test_masks_hide_padding_and_the_window():
    lengths = [40, 37, 20]
    tables = [[3, 4, 5], [6, 7, 8], [9, 10]]
    groups = make_decode_groups(lengths, tables, 16, None, 10**6, torch.float32, torch.device("cpu"))
    assert len(groups) == 1
    g = groups[0]
    assert g.length == 40 and g.blocks.tolist() == [[3, 4, 5], [6, 7, 8], [9, 10, 0]]
    visible = (g.mask[:, 0, 0] == 0).sum(-1).tolist()
    assert visible == [40, 37, 20]
    assert torch.isinf(g.mask[2, 0, 0, 20:]).all()

    windowed = make_decode_groups([40], [[3, 4, 5]], 16, 8, 0, torch.float32, torch.device("cpu"))[0]
    assert (windowed.mask[0, 0, 0] == 0).nonzero().flatten().tolist() == list(range(32, 40))

    # Equal lengths and no window: nothing to hide, no mask at all.
    same = make_decode_groups(
        [33, 33], [[1, 2, 3], [4, 5, 6]], 16, None, 10**6, torch.float32, torch.device("cpu")
    )
    assert same[0].mask is None


def test_grouped_attention_matches_one_padded_group(llama_dir):
    from stratus.engine.config import EngineConfig, ModelConfig

    config = ModelConfig.from_dir(llama_dir)
    runner = ModelRunner(llama_dir, config, EngineConfig(num_kv_blocks=64), max_model_len=256)
    attn: Attention = runner.model.layers[0].self_attn
    torch.manual_seed(0)
    cache = torch.randn_like(runner.kv_caches[0])
    lengths = [150, 149, 90, 31, 17, 2]
    tables, next_block = [], 1
    for n in lengths:
        width = -(-n // runner.block_size)
        tables.append(list(range(next_block, next_block + width)))
        next_block += width
    q = torch.randn(len(lengths), attn.num_heads, attn.head_dim)

    def attend(overhead: int) -> torch.Tensor:
        groups = make_decode_groups(
            lengths, tables, runner.block_size, None, overhead, torch.float32, cache.device
        )
        out = torch.empty_like(q)
        for g in groups:
            attn._decode(q, cache, g, runner.block_size, out)
        return out, len(groups)

    one, n_one = attend(10**9)
    split, n_split = attend(0)
    assert n_one == 1 and n_split == len(lengths)
    assert (one - split).abs().max() < 1e-5
    # And against attention written out by hand for one row.
    row = 3
    slots = torch.tensor([b * runner.block_size + i for b in tables[row] for i in range(runner.block_size)])[
        : lengths[row]
    ]
    k = cache[: attn.num_kv_heads, slots].repeat_interleave(attn.group, 0)  # [H, L, D]
    v = cache[attn.num_kv_heads :, slots].repeat_interleave(attn.group, 0)
    probs = torch.softmax((k @ q[row].unsqueeze(-1)).squeeze(-1) * attn.scale, dim=-1)
    assert (one[row] - (probs.unsqueeze(-1) * v).sum(1)).abs().max() < 1e-5


def test_contiguous_start_accepts_only_consecutive_blocks():
    assert contiguous_start([7], 1) == 7
    assert contiguous_start([5, 6, 7, 8], 4) == 5
    assert contiguous_start([5, 6, 9], 2) == 5  # only the blocks the context covers count
    assert contiguous_start([5, 6, 9], 3) is None
    assert contiguous_start([5, 7, 6, 8], 4) is None  # same ends, wrong order
    assert contiguous_start([6, 5], 2) is None


@pytest.mark.parametrize("window", [None, 40])
def test_in_place_attention_matches_gathered_groups(llama_dir, window):
    """A row whose blocks are consecutive is read in place (a slice of the pool): the same
    output as gathering its blocks, with and without a sliding window."""
    from stratus.engine.config import EngineConfig, ModelConfig

    config = ModelConfig.from_dir(llama_dir)
    runner = ModelRunner(llama_dir, config, EngineConfig(num_kv_blocks=64), max_model_len=256)
    attn: Attention = runner.model.layers[0].self_attn
    attn.sliding_window = window
    torch.manual_seed(1)
    cache = torch.randn_like(runner.kv_caches[0])
    lengths = [150, 90, 33, 16, 1]
    tables, next_block = [], 2
    for n in lengths:
        width = -(-n // runner.block_size)
        tables.append(list(range(next_block, next_block + width)))
        next_block += width + 1
    q = torch.randn(len(lengths), attn.num_heads, attn.head_dim)
    gathered = torch.empty_like(q)
    for g in make_decode_groups(lengths, tables, runner.block_size, window, 0, torch.float32, cache.device):
        attn._decode(q, cache, g, runner.block_size, gathered)
    in_place = torch.empty_like(q)
    for row, (n, table) in enumerate(zip(lengths, tables)):
        first = contiguous_start(table, len(table))
        attn._decode_in_place(q, cache, DecodeSlice(row, first * runner.block_size, n), in_place)
    assert (gathered - in_place).abs().max() < 1e-5
