"""Continuous batching: which sequences run in the next step, and how many tokens each.

Every step spends at most `max_num_batched_tokens`: running sequences first (oldest first, one
token each when decoding, a chunk when still prefilling), then waiting ones as budget and KV
blocks allow. A long prompt is prefilled in chunks, so decodes keep flowing beside it. When the
pool runs dry the newest running sequence is preempted: its blocks are freed and it is
recomputed later, so the oldest sequence always makes progress.

A sequence with a LoRA adapter pins the adapter's weights while it runs (lora.py
`AdapterStore`); when every resident adapter is pinned by running sequences and it needs
another, it waits at the head of the queue like one that lacks KV blocks.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from .block_manager import BlockManager
from .lora import AdapterError, AdapterStore
from .sequence import Sequence, Status


@dataclass
class ScheduledBatch:
    items: list[tuple[Sequence, int]]  # (sequence, number of new tokens to compute)

    @property
    def num_tokens(self) -> int:
        return sum(n for _, n in self.items)


class Scheduler:
    def __init__(
        self,
        block_manager: BlockManager,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        adapters: AdapterStore | None = None,
    ):
        self.blocks = block_manager
        self.adapters = adapters
        self.rejected: list[
            tuple[Sequence, str]
        ] = []  # left the queue: their adapter is gone (take_rejected)
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> ScheduledBatch:
        budget = self.max_num_batched_tokens
        items: list[tuple[Sequence, int]] = []
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            n = min(seq.num_tokens - seq.num_computed_tokens, budget)
            while not self.blocks.allocate_slots(seq, n):
                victim = self.running[-1]
                self._preempt(victim)
                if victim is seq:
                    break
            else:
                items.append((seq, n))
                budget -= n
                i += 1
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            if seq.adapter is not None and seq.lora is None:
                try:
                    if not self._pin_adapter(seq):
                        break  # every resident adapter is in use: wait for one to finish
                except AdapterError as exc:
                    self.waiting.popleft()
                    seq.status = Status.FINISHED
                    self.rejected.append((seq, str(exc)))
                    continue
            if not seq.block_table:
                self.blocks.match_prefix(seq)
                if seq.num_output_tokens == 0:
                    seq.num_cached_tokens = seq.num_computed_tokens
            n = min(seq.num_tokens - seq.num_computed_tokens, budget)
            if not self.blocks.allocate_slots(seq, n):
                self.blocks.free(seq)  # give back the prefix blocks it would have shared
                self._unpin_adapter(seq)
                break
            self.waiting.popleft()
            seq.status = Status.RUNNING
            self.running.append(seq)
            items.append((seq, n))
            budget -= n
        return ScheduledBatch(items)

    def _pin_adapter(self, seq: Sequence) -> bool:
        assert self.adapters is not None and seq.adapter is not None
        seq.lora = self.adapters.acquire(seq.adapter)
        return seq.lora is not None

    def _unpin_adapter(self, seq: Sequence) -> None:
        if seq.lora is not None:
            AdapterStore.release(seq.lora)
            seq.lora = None

    def take_rejected(self) -> list[tuple[Sequence, str]]:
        rejected, self.rejected = self.rejected, []
        return rejected

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.blocks.free(seq)
        self._unpin_adapter(seq)
        seq.status = Status.WAITING
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    def finish(self, seq: Sequence) -> None:
        """Drop a finished or aborted sequence from wherever it is and free its blocks at once."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.blocks.free(seq)
        self._unpin_adapter(seq)
        seq.status = Status.FINISHED
