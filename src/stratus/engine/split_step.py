"""Run a CPU step's batch as two halves on two threads instead of one batch on all threads.

On a CPU, one batch over all cores splits every op across OpenMP threads: a large matmul scales,
but a step also holds a thousand small ops (per-row decode attention, norms, rope), each a
fork and a join whose cost grows when a thread has to be woken (OMP_WAIT_POLICY=PASSIVE) and
explodes when another process holds a core (a spinning thread waits for one that is not
running). Two halves, each computed start to finish by its own thread with a single intra-op
thread, need no fork or join at all; the torch ops release the GIL, so both run at once.
Measured on the 100m benchmark model, 2 cores, 64 requests (docs/BENCHMARKS.md): with passive
waiting 122 tok/s as one batch, 161-175 as two halves; with libgomp's default waiting 155-161
as one batch, 203-220 as two halves (with the other changes of that commit); identical outputs.
Opt-in (`split_steps`) since decode attention runs in one C call per layer (kernels/): on a Zen 5
machine one batch then ran 1.14x (100m) and 1.31x (demo) faster; it still pays where OpenMP
regions are slow, as on a machine whose cores are busy with other work.

The halves are balanced by estimated cost: every token pays the linear layers, every key it
attends to pays a read of the KV cache. Each sequence lives entirely in one half, and a
sequence's KV slots belong to it alone, so the halves never write the same memory.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch

from .config import ModelConfig
from .scheduler import ScheduledBatch

# Below this many sequences one batch is cheaper than the hand-off to the second thread.
MIN_SEQUENCES = 4
# Relative rates of the two kinds of work on a CPU core: float32 matmul FLOP/s and KV-cache
# bytes/s read by decode attention (rough figures; only their ratio matters here).
MATMUL_FLOPS = 60e9
KV_BYTES_PER_S = 10e9


class SplitStep:
    def __init__(self, model: ModelConfig, threads: int, dtype: torch.dtype):
        self.threads = threads
        self.half_threads = max(1, threads // 2)
        self.pool = ThreadPoolExecutor(
            1,
            thread_name_prefix="stratus-half-step",
            initializer=torch.set_num_threads,
            initargs=(self.half_threads,),
        )
        # Seconds per new token (all linear layers) and per key read (all layers' K and V).
        self.token_cost = 2 * model.num_parameters() / MATMUL_FLOPS
        key_bytes = 2 * model.num_layers * model.num_kv_heads * model.head_dim * torch.finfo(dtype).bits // 8
        self.key_cost = key_bytes / KV_BYTES_PER_S

    def halves(self, batch: ScheduledBatch) -> tuple[ScheduledBatch, ScheduledBatch] | None:
        """Two batches of about equal cost, or None when the batch is too small to split."""
        if len(batch.items) < MIN_SEQUENCES:
            return None

        def cost(item) -> float:
            seq, n = item
            return n * self.token_cost + n * (seq.num_computed_tokens + n) * self.key_cost

        halves, load = ([], []), [0.0, 0.0]
        for item_cost, item in sorted(((cost(i), i) for i in batch.items), key=lambda c: -c[0]):
            side = 0 if load[0] <= load[1] else 1  # largest first onto the lighter side: a tight balance
            halves[side].append(item)
            load[side] += item_cost
        return ScheduledBatch(halves[0]), ScheduledBatch(halves[1])

    def run(self, run_one, batch: ScheduledBatch):
        """`run_one(batch) -> (finishing, logits)` on the whole batch, computed as two halves when
        it is large enough; results in `batch.items` order, as `run_one` gives them."""
        halves = self.halves(batch)
        if halves is None:
            torch.set_num_threads(self.threads)
            return run_one(batch)
        torch.set_num_threads(self.half_threads)
        other = self.pool.submit(run_one, halves[1])
        try:
            mine = run_one(halves[0])
        finally:
            theirs = other.result()  # never leave the other half running on the shared KV pool
        logits_of = {}
        for finishing, logits in (mine, theirs):
            if finishing:
                logits_of.update(zip((seq.seq_id for seq in finishing), logits))
        finishing = [seq for seq, _ in batch.items if seq.seq_id in logits_of]
        logits = torch.stack([logits_of[seq.seq_id] for seq in finishing]) if finishing else None
        return finishing, logits
