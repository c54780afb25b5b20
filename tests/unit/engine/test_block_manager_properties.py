"""The paged KV cache's bookkeeping holds under any sequence of admissions, growth, forks,
preemptions and frees (hypothesis state machine over engine/block_manager.py).

A step of the engine is modelled as the scheduler drives the manager: admit = match_prefix, then
allocate_slots for the rest of the prompt (or free, if the pool is short); grow = allocate_slots
for one more token; a computed block is published with commit_full_blocks. A fork is a new
sequence with the same tokens (another of a request's n choices, or a retry), which must reuse
the published blocks. Prompts come from a two-token alphabet over a few shared stems, so prefix
hits, evictions and a full pool are all common.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from stratus.engine.block_manager import BlockManager
from stratus.engine.sequence import Sequence
from stratus.engine.types import SamplingParams

pytestmark = pytest.mark.timeout(60)

NUM_BLOCKS = 12
BLOCK_SIZE = 3
STEMS = [(), (1, 0, 1), (1, 0, 1, 1, 1, 0), (0, 0, 0, 0, 0, 0, 0)]


def new_sequence(tokens: list[int], max_tokens: int) -> Sequence:
    return Sequence(
        request_id="r",
        index=0,
        token_ids=list(tokens),
        num_prompt_tokens=len(tokens),
        params=SamplingParams(max_tokens=max_tokens),
        stop_token_ids=frozenset(),
        detokenizer=None,  # type: ignore[arg-type]  # not used by the block manager
        generator=None,
    )


class BlockManagerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = BlockManager(NUM_BLOCKS, BLOCK_SIZE, enable_prefix_caching=True)
        self.live: list[Sequence] = []
        self.content: dict[int, tuple[int, ...]] = {}  # block -> the tokens a sequence computed into it

    # -- helpers ---------------------------------------------------------------------------------

    def snapshot(self) -> tuple:
        b = self.blocks
        return (
            list(b.ref_counts),
            list(b.hashes),
            bytes(b.free_map),
            b.num_free_uncached,
            list(b.evictable),
            dict(b.cached),
        )

    def compute(self, seq: Sequence, n: int) -> None:
        """What a step does after allocate_slots succeeded: the tokens' K/V land in the blocks."""
        start = seq.num_computed_tokens
        seq.num_computed_tokens += n
        for b in range(start // BLOCK_SIZE, seq.num_computed_tokens // BLOCK_SIZE):
            self.content[seq.block_table[b]] = tuple(seq.token_ids[b * BLOCK_SIZE : (b + 1) * BLOCK_SIZE])
        self.blocks.commit_full_blocks(seq)
        if seq.num_computed_tokens == seq.num_tokens:
            seq.token_ids.append(seq.num_tokens % 2)  # the sampled token

    def admit(self, seq: Sequence) -> int | None:
        """The tokens the prefix cache supplied, or None if the pool was short."""
        before = self.snapshot()
        free_before = self.blocks.num_free
        matched = self.blocks.match_prefix(seq)
        assert matched % BLOCK_SIZE == 0 and matched < seq.num_tokens  # the last token is always computed
        for i, block in enumerate(seq.block_table):  # a hit holds exactly this sequence's tokens
            assert self.content.get(block) == tuple(seq.token_ids[i * BLOCK_SIZE : (i + 1) * BLOCK_SIZE])
        n = seq.num_tokens - seq.num_computed_tokens
        needed = self.blocks.blocks_needed(seq.num_tokens) - len(seq.block_table)
        if not self.blocks.allocate_slots(seq, n):
            assert needed > self.blocks.num_free  # refused only when short
            self.blocks.free(seq)  # as the scheduler gives back the shared prefix
            assert self.blocks.num_free == free_before
            assert sorted(before[4]) == sorted(self.blocks.evictable)  # the same blocks stay cached
            assert before[5] == self.blocks.cached
            return None
        self.compute(seq, n)
        self.live.append(seq)
        return matched

    # -- rules -----------------------------------------------------------------------------------

    @rule(
        stem=st.sampled_from(STEMS),
        tail=st.lists(st.integers(0, 1), max_size=7),
        max_tokens=st.integers(1, 8),
    )
    def add(self, stem, tail, max_tokens):
        tokens = [*stem, *tail]
        if tokens:
            self.admit(new_sequence(tokens, max_tokens))

    @precondition(lambda self: self.live)
    @rule(pick=st.integers(0, 99))
    def grow(self, pick):
        seq = self.live[pick % len(self.live)]
        before = self.snapshot()
        short = (
            self.blocks.blocks_needed(seq.num_computed_tokens + 1) - len(seq.block_table)
            > self.blocks.num_free
        )
        if self.blocks.allocate_slots(seq, 1):
            assert not short
            self.compute(seq, 1)
        else:
            assert short
            assert self.snapshot() == before  # a refusal changes nothing

    @precondition(lambda self: self.live)
    @rule(pick=st.integers(0, 99))
    def fork(self, pick):
        parent = self.live[pick % len(self.live)]
        child = new_sequence(parent.token_ids, parent.params.max_tokens)
        # the parent's published blocks before the child's last token, while they stay cached
        expected = 0
        for h in self.blocks.seq_hashes[parent.seq_id][: (child.num_tokens - 1) // BLOCK_SIZE]:
            if h not in self.blocks.cached:
                break
            expected += 1
        matched = self.admit(child)
        if matched is not None:
            assert matched == expected * BLOCK_SIZE
            assert child.block_table[:expected] == [
                self.blocks.cached[h] for h in self.blocks.seq_hashes[parent.seq_id][:expected]
            ]

    @precondition(lambda self: self.live)
    @rule(pick=st.integers(0, 99))
    def free(self, pick):
        seq = self.live.pop(pick % len(self.live))
        self.blocks.free(seq)
        assert seq.block_table == [] and seq.num_computed_tokens == 0

    @precondition(lambda self: self.live)
    @rule(pick=st.integers(0, 99))
    def preempt(self, pick):
        """The scheduler's preemption: free, then admit again later for recomputation."""
        seq = self.live.pop(pick % len(self.live))
        self.blocks.free(seq)
        self.admit(seq)

    # -- invariants ------------------------------------------------------------------------------

    @invariant()
    def each_block_is_counted_once_per_holder(self):
        b = self.blocks
        holders = [0] * NUM_BLOCKS
        for seq in self.live:
            assert len(set(seq.block_table)) == len(seq.block_table)
            assert len(seq.block_table) >= b.blocks_needed(seq.num_computed_tokens)
            for block in seq.block_table:
                holders[block] += 1
        assert b.ref_counts == holders
        for block, n in enumerate(holders):
            if n > 1:  # two live sequences hold it: only a published prefix block is shared
                assert b.hashes[block] is not None and b.cached[b.hashes[block]] == block

    @invariant()
    def free_and_used_add_up(self):
        b = self.blocks
        unreferenced = [i for i in range(NUM_BLOCKS) if b.ref_counts[i] == 0]
        assert sum(b.free_map) == b.num_free_uncached
        assert sorted([i for i in range(NUM_BLOCKS) if b.free_map[i]] + list(b.evictable)) == unreferenced
        assert all(b.hashes[i] is not None for i in b.evictable)
        assert all(b.hashes[i] is None for i in range(NUM_BLOCKS) if b.free_map[i])
        assert b.num_free + b.num_used == NUM_BLOCKS
        assert b.num_used == NUM_BLOCKS - len(unreferenced) <= NUM_BLOCKS

    @invariant()
    def the_cache_index_agrees_with_the_blocks(self):
        b = self.blocks
        assert {h: i for i, h in enumerate(b.hashes) if h is not None} == b.cached

    def teardown(self):
        for seq in self.live:
            self.blocks.free(seq)
        assert self.blocks.num_free == NUM_BLOCKS
        assert self.blocks.ref_counts == [0] * NUM_BLOCKS
        # and the whole pool can be handed out again, to one sequence
        whole = new_sequence([7] * (NUM_BLOCKS * BLOCK_SIZE), 1)
        assert self.blocks.allocate_slots(whole, whole.num_tokens)
        assert sorted(whole.block_table) == list(range(NUM_BLOCKS)) and self.blocks.num_free == 0
        assert not self.blocks.allocate_slots(new_sequence([7], 1), 1)  # never beyond capacity


BlockManagerMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_block_manager_state_machine = BlockManagerMachine.TestCase
