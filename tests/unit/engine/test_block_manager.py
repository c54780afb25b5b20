"""Block allocation keeps each sequence's blocks consecutive when the pool allows, and still
serves every request when it does not."""

from stratus.engine.block_manager import BlockManager
from stratus.engine.decode_groups import contiguous_start
from stratus.engine.sequence import Sequence
from stratus.engine.types import SamplingParams


def sequence(prompt_len: int, max_tokens: int) -> Sequence:
    return Sequence(
        request_id="r",
        index=0,
        token_ids=list(range(10, 10 + prompt_len)),
        num_prompt_tokens=prompt_len,
        params=SamplingParams(max_tokens=max_tokens),
        stop_token_ids=frozenset(),
        detokenizer=None,
        generator=None,
    )


def grow(blocks: BlockManager, seq: Sequence, tokens: int) -> bool:
    """Allocate and compute `tokens` more tokens of `seq` (what a step does)."""
    if not blocks.allocate_slots(seq, tokens):
        return False
    seq.num_computed_tokens += tokens
    if seq.num_computed_tokens >= seq.num_tokens:
        seq.token_ids.append(1)  # a generated token
    return True


def test_interleaved_sequences_each_keep_consecutive_blocks():
    blocks = BlockManager(num_blocks=200, block_size=4, enable_prefix_caching=False)
    seqs = [sequence(prompt_len=6 + 3 * i, max_tokens=40) for i in range(5)]
    for seq in seqs:
        assert grow(blocks, seq, seq.num_tokens)
    for _ in range(40):  # decode steps, all sequences growing in turn
        for seq in seqs:
            assert grow(blocks, seq, 1)
    for seq in seqs:
        assert contiguous_start(seq.block_table, len(seq.block_table)) is not None, seq.block_table
    assert blocks.num_used == sum(len(s.block_table) for s in seqs)
    for seq in seqs:
        blocks.free(seq)
    assert blocks.num_free == 200


def test_a_fragmented_pool_still_serves_every_block_it_has():
    blocks = BlockManager(num_blocks=12, block_size=4, enable_prefix_caching=False)
    holders = [sequence(prompt_len=3, max_tokens=1) for _ in range(12)]  # one block each, at most
    for seq in holders:
        assert grow(blocks, seq, 3)
    assert [seq.block_table for seq in holders] == [[i] for i in range(12)]
    for seq in holders[::2]:  # free every other block: no two free blocks are neighbours
        blocks.free(seq)
    big = sequence(prompt_len=24, max_tokens=8)
    assert grow(blocks, big, 24)  # six scattered blocks
    assert sorted(big.block_table) == [0, 2, 4, 6, 8, 10]
    assert contiguous_start(big.block_table, 6) is None
    assert blocks.num_free == 0
    assert not blocks.allocate_slots(sequence(prompt_len=4, max_tokens=1), 4)


def test_a_new_sequence_starts_after_the_room_reserved_for_the_last_one():
    blocks = BlockManager(num_blocks=100, block_size=4, enable_prefix_caching=False)
    first = sequence(prompt_len=4, max_tokens=36)  # may reach 40 tokens: 10 blocks
    assert grow(blocks, first, 4)
    second = sequence(prompt_len=4, max_tokens=4)
    assert grow(blocks, second, 4)
    assert second.block_table[0] >= first.block_table[0] + 10
