"""The paged KV cache's bookkeeping: a pool of fixed-size blocks, shared through a prefix cache.

A full block is named by a hash chained over every token before it, starting from the
sequence's LoRA adapter (its `cache_salt`), so equal names mean equal prefixes under equal weights.
Blocks nobody references stay cached and are reused LRU-last, evicted LRU-first.

Free blocks are handed out so that a sequence's blocks are consecutive whenever the pool allows:
a sequence grows into the block right after its last one, and a new sequence starts in a free
run long enough for the tokens it may reach (prompt + max_tokens). A consecutive context is one
slice of the KV pool, which decode attention reads in place instead of gathering it first
(model.py). Under pressure any free block will do; contiguity is a speed-up, never a condition.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict

from .sequence import Sequence


def block_hash(parent: bytes, tokens: list[int]) -> bytes:
    # A cryptographic hash: a tenant must not be able to craft a prompt whose blocks collide
    # with another tenant's cached prefix.
    return hashlib.blake2b(parent + array("q", tokens).tobytes(), digest_size=16).digest()


# A new sequence looks for a free run of at most this many blocks (longer ones grow block by block).
MAX_RUN_BLOCKS = 512


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.ref_counts = [0] * num_blocks
        self.hashes: list[bytes | None] = [None] * num_blocks
        # 1 where a block is unreferenced and uncached: bytes.find locates a free run in C.
        self.free_map = bytearray(b"\x01") * num_blocks
        self.num_free_uncached = num_blocks
        self.cursor = 0  # where the next new run is looked for (next fit)
        self.evictable: OrderedDict[int, None] = OrderedDict()  # unreferenced but cached, LRU first
        self.cached: dict[bytes, int] = {}  # hash -> block id
        self.seq_hashes: dict[int, list[bytes]] = {}  # seq_id -> hashes of its full blocks
        self.prefix_queries = 0
        self.prefix_hits = 0

    @property
    def num_free(self) -> int:
        return self.num_free_uncached + len(self.evictable)

    @property
    def num_used(self) -> int:
        return self.num_blocks - self.num_free

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def match_prefix(self, seq: Sequence) -> int:
        """Attach the cached blocks that hold a prefix of `seq`; returns the tokens they cover."""
        assert not seq.block_table and seq.num_computed_tokens == 0
        if not self.enable_prefix_caching:
            return 0
        # The last token is always computed: its logits are needed to sample.
        full_blocks = (seq.num_tokens - 1) // self.block_size
        parent, hashes = seq.cache_salt, []
        for b in range(full_blocks):
            parent = block_hash(parent, seq.token_ids[b * self.block_size : (b + 1) * self.block_size])
            block_id = self.cached.get(parent)
            if block_id is None:
                break
            hashes.append(parent)
            self._take(block_id)
            seq.block_table.append(block_id)
        self.seq_hashes[seq.seq_id] = hashes
        matched = len(seq.block_table) * self.block_size
        if seq.num_output_tokens == 0:  # count prompt lookups only, not recomputation
            self.prefix_queries += seq.num_tokens
            self.prefix_hits += matched
        seq.num_computed_tokens = matched
        return matched

    def allocate_slots(self, seq: Sequence, num_new_tokens: int) -> bool:
        """Make room for `num_new_tokens` more tokens of `seq`; False (and no change) if the pool is short."""
        needed = self.blocks_needed(seq.num_computed_tokens + num_new_tokens) - len(seq.block_table)
        if needed > self.num_free:
            return False
        # Room for every token the sequence may reach, so the next sequence starts after it.
        final_tokens = seq.num_prompt_tokens + seq.params.max_tokens
        expected = min(MAX_RUN_BLOCKS, max(needed, self.blocks_needed(final_tokens) - len(seq.block_table)))
        for _ in range(needed):
            last = seq.block_table[-1] if seq.block_table else None
            seq.block_table.append(self._pop_free(last, expected))
            expected = max(1, expected - 1)
        return True

    def commit_full_blocks(self, seq: Sequence) -> None:
        """Publish the blocks `seq` has completely filled so later requests can share them."""
        if not self.enable_prefix_caching:
            return
        hashes = self.seq_hashes.setdefault(seq.seq_id, [])
        full = seq.num_computed_tokens // self.block_size
        parent = hashes[-1] if hashes else seq.cache_salt
        for b in range(len(hashes), full):
            parent = block_hash(parent, seq.token_ids[b * self.block_size : (b + 1) * self.block_size])
            hashes.append(parent)
            block_id = seq.block_table[b]
            if parent not in self.cached and self.hashes[block_id] is None:
                self.cached[parent] = block_id
                self.hashes[block_id] = parent

    def free(self, seq: Sequence) -> None:
        # Release tail blocks first so they are evicted before the shared head of the prefix.
        for block_id in reversed(seq.block_table):
            self.ref_counts[block_id] -= 1
            if self.ref_counts[block_id] == 0:
                if self.hashes[block_id] is not None:
                    self.evictable[block_id] = None
                else:
                    self._release(block_id)
        seq.block_table = []
        seq.num_computed_tokens = 0
        self.seq_hashes.pop(seq.seq_id, None)

    def _take(self, block_id: int) -> None:
        if self.ref_counts[block_id] == 0:
            self.evictable.pop(block_id, None)
        self.ref_counts[block_id] += 1

    def _release(self, block_id: int) -> None:
        self.free_map[block_id] = 1
        self.num_free_uncached += 1

    def _pop_free(self, last: int | None, run: int) -> int:
        """A free block: the one after `last` if free, else the start of a free run of `run`
        blocks, else any free block, else the least recently used cached one (evicted)."""
        block_id = -1
        if last is not None and last + 1 < self.num_blocks and self.free_map[last + 1]:
            block_id = last + 1
        elif self.num_free_uncached:
            pattern = b"\x01" * run
            block_id = self.free_map.find(pattern, self.cursor)
            if block_id < 0:
                block_id = self.free_map.find(pattern)
            if block_id < 0:
                block_id = self.free_map.find(b"\x01")
            else:
                self.cursor = block_id + run
        if block_id >= 0:
            self.free_map[block_id] = 0
            self.num_free_uncached -= 1
        else:
            block_id, _ = self.evictable.popitem(last=False)
            del self.cached[self.hashes[block_id]]
            self.hashes[block_id] = None
        self.ref_counts[block_id] = 1
        return block_id

    @property
    def hit_rate(self) -> float:
        return self.prefix_hits / self.prefix_queries if self.prefix_queries else 0.0
