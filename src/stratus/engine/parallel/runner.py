"""A model runner split over tensor x pipeline parallel ranks.

Rank 0 is the `ModelRunner` the engine core drives: it owns the scheduler's view (block
tables, the batch), starts the other ranks as processes of its own (worker.py), and each step
broadcasts the step's plan (token ids, positions, the attention plan, which rows to return) to
every rank. Every rank then runs its share: its pipeline stage's layers, cut to its
tensor-parallel shard, one all-reduce after attention and one after the MLP; a stage hands its
hidden states to the next; the last stage's output head gathers the vocabulary and sends the
logits back to rank 0. Every KV pool has the same blocks, so one block table serves all ranks.

A rank that dies or hangs makes a collective fail within `parallel_timeout_s`; that raises
`ParallelFailure`, the step loop stops, the engine process exits and engine.py restarts it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pickle
import socket
import subprocess
import sys
import time
import weakref
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch

from .. import memory
from ..config import EngineConfig, ModelConfig
from ..lora import LoraBatch
from ..model import AttentionBatch
from ..model_runner import ModelRunner
from .group import Group, ParallelFailure
from .layout import Layout, RankReport, peak_rss_bytes, plan, rank_parameters
from .slices import TensorSource
from .stage import StageModel

log = logging.getLogger("stratus.engine")

LOAD_POLL_S = 0.2


@dataclass(frozen=True, slots=True)
class StepPlan:
    """What every rank needs to run one forward pass, as rank 0 decided it."""

    input_ids: torch.Tensor
    positions: torch.Tensor
    attn: AttentionBatch
    want: str  # "logits" | "hidden"
    rows: list[int] | None  # logits of these rows (None: all)


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """Everything a rank process needs to start (pickled to its stdin)."""

    rank: int
    port: int
    path: str
    config: EngineConfig
    max_model_len: int
    parent_pid: int


class ParallelRunner(ModelRunner):
    def __init__(
        self,
        path: Path,
        model_config: ModelConfig,
        config: EngineConfig,
        max_model_len: int,
        rank: int = 0,
        port: int | None = None,
    ):
        self.rank = rank
        self.layout: Layout = plan(model_config, config.tensor_parallel_size, config.pipeline_parallel_size)
        self.stage, self.tp_rank = self.layout.coords(rank)
        self._workers: list[subprocess.Popen] = []
        self._port = port
        self.ranks: list[RankReport] = []
        self.broken = False
        threads = config.num_threads or max(1, (os.cpu_count() or 1) // self.layout.world_size)
        torch.set_num_threads(threads)
        super().__init__(path, model_config, config, max_model_len)
        report = RankReport(
            rank,
            self.stage,
            self.tp_rank,
            self.stage_model.layer_range,
            socket.gethostname(),
            os.getpid(),
            self.weight_bytes,
            sum(c.numel() * c.element_size() for c in self.kv_caches),
            peak_rss_bytes(),
        )
        reports = self.group.gather_objects(report)
        self.ranks = list(reports) if reports is not None else []  # type: ignore[arg-type]
        if rank == 0:
            log.info(
                "%s split %s over %d processes: %s",
                path.name,
                self.layout.describe(),
                self.layout.world_size,
                ", ".join(f"rank {r.rank} {r.weight_bytes / 2**20:.1f} MiB" for r in self.ranks),
            )

    # -- loading -------------------------------------------------------------------------------

    def _load_model(  # type: ignore[override]  # a StageModel answers what the runner calls
        self, path: Path, model_config: ModelConfig, config: EngineConfig, max_model_len: int
    ) -> StageModel:
        world, tp, timeout = self.layout.world_size, self.layout.tp, config.parallel_timeout_s
        if self.rank == 0:
            # the ranks are processes of this machine: together they need the whole model
            # (plus what each keeps whole), from the same memory
            per_rank = [rank_parameters(model_config, self.layout, r) for r in range(world)]
            needed = sum(per_rank) * torch.finfo(self.dtype).bits // 8
            memory.check_weights_fit(path.name, needed, memory.available_bytes(self.device), self.dtype)
            store = Group.host(world, timeout)
            self.store = store
            self._start_workers(path, config, max_model_len, store.port)
            self._stopper = weakref.finalize(self, _stop_workers, self._workers, None)
            self._wait_keys("started", "starting")  # each has imported torch and reached the store
        else:
            assert self._port is not None
            store = Group.connect(self._port, world, timeout)
            store.set(f"started/{self.rank}", "")
        self.group = Group(self.rank, world, tp, store, timeout)
        model = StageModel(
            model_config, self.layout, self.rank, self.group, max_model_len, self.device, self.dtype
        )
        error = None
        try:
            with TensorSource(path, model_config) as source:
                model.load(source)
        except Exception as exc:  # every rank says how its load went before anyone goes on
            error = f"{type(exc).__name__}: {exc}"
        store.set(f"loaded/{self.rank}", error or "")
        if self.rank == 0:
            self._wait_loaded(error)
        elif error:
            raise RuntimeError(error)
        else:  # the first collective (the KV pool size) comes once every rank has loaded
            keys = [f"loaded/{r}" for r in range(self.layout.world_size)]
            store.wait(keys, timedelta(days=1))  # rank 0 ends the wait if a rank fails
        self.weight_bytes = model.weight_bytes()
        self.stage_model = model
        return model

    def _start_workers(self, path: Path, config: EngineConfig, max_model_len: int, port: int) -> None:
        for rank in range(1, self.layout.world_size):
            spec = WorkerSpec(rank, port, str(path), config, max_model_len, os.getpid())
            proc = subprocess.Popen(
                [sys.executable, "-m", "stratus.engine.parallel.worker"],
                stdin=subprocess.PIPE,
                close_fds=True,
            )
            assert proc.stdin is not None
            proc.stdin.write(pickle.dumps(spec))
            proc.stdin.close()
            self._workers.append(proc)

    def _wait_loaded(self, own_error: str | None) -> None:
        """Every rank's load outcome; a failed rank fails the start with its reason."""
        keys = self._wait_keys("loaded", "loading its weights")
        errors = [(r, self.store.get(k).decode()) for r, k in enumerate(keys, start=1)]
        errors = [(r, e) for r, e in errors if e]
        if own_error or errors:
            self._fail_start("a rank could not load its weights")
            rank, why = (0, own_error) if own_error else errors[0]
            raise RuntimeError(f"rank {rank} of {self.layout.describe()} could not load its weights: {why}")

    def _wait_keys(self, prefix: str, doing: str) -> list[str]:
        """Wait for `prefix/<rank>` from every rank but 0 (returned in rank order). Ranks start
        and load at their own pace (importing torch, reading weights), so the wait ends only
        when they all have, or one of them has exited, which fails the start with its code."""
        keys = [f"{prefix}/{r}" for r in range(1, self.layout.world_size)]
        while not self.store.check(keys):
            dead = [(i + 1, p.returncode) for i, p in enumerate(self._workers) if p.poll() is not None]
            if dead:
                rank, code = dead[0]
                self._fail_start(f"rank {rank} exited with code {code} while {doing}")
                raise ParallelFailure(f"rank {rank} exited with code {code} while {doing}")
            time.sleep(LOAD_POLL_S)
        return keys

    def _fail_start(self, why: str) -> None:
        log.error("parallel replica failed to start: %s", why)
        _stop_workers(self._workers, None)

    def _plan_pool(
        self, path: Path, local: ModelConfig, config: EngineConfig, max_model_len: int
    ) -> memory.PoolPlan:
        """The same number of blocks on every rank: the fewest any rank's memory allows. The
        ranks share this machine's memory, so a pool sized from a fraction of it gives each
        rank its share of that fraction."""
        if config.num_kv_blocks is None and config.kv_cache_memory_mb is None:
            fraction = config.kv_cache_memory_fraction or memory.DEFAULT_FRACTION.get(
                self.device.type, memory.DEFAULT_FRACTION["cpu"]
            )
            config = dataclasses.replace(config, kv_cache_memory_fraction=fraction / self.layout.world_size)
        own = super()._plan_pool(path, local, config, max_model_len)
        blocks = self.group.all_min(own.num_blocks)
        if blocks == own.num_blocks:
            return own
        return memory.PoolPlan(blocks, f"{own.how}; the fewest of any rank")

    # -- stepping ------------------------------------------------------------------------------

    def _compute(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        attn: AttentionBatch,
        lora: LoraBatch | None,
        want: str,
        rows: list[int] | None = None,
    ) -> torch.Tensor | None:
        if lora is not None:  # refused when the adapter is loaded (core.py); this is a backstop
            raise ValueError("LoRA adapters are not served by a tensor/pipeline-parallel replica yet")
        step = StepPlan(input_ids, positions, attn, want, rows)
        try:
            self.group.broadcast_object(step)
            return self._execute(step)
        except Exception as exc:
            # Any failure mid-pass leaves the other ranks somewhere in the same pass, waiting
            # on a collective: the ranks are out of step, and only a fresh replica is safe.
            self.broken = True  # close() then kills the other ranks without asking them
            if isinstance(exc, ParallelFailure):
                raise
            raise ParallelFailure(f"rank 0 failed mid-step: {type(exc).__name__}: {exc}") from exc

    def _execute(self, step: StepPlan) -> torch.Tensor | None:
        """This rank's share of one forward pass; rank 0 gets the result."""
        layout, group = self.layout, self.group
        tokens = step.input_ids.numel()
        hidden_shape = (tokens, self.stage_model.full.hidden_size)
        previous = None
        if self.stage > 0:
            previous = group.recv(hidden_shape, self.dtype, layout.rank(self.stage - 1, self.tp_rank))
        hidden = self.stage_model(step.input_ids, step.positions, self.kv_caches, step.attn, previous)
        last = layout.pp - 1
        if self.stage < last:
            group.send(hidden, layout.rank(self.stage + 1, self.tp_rank))
            out = None
        elif step.want == "hidden":
            out = hidden
        elif step.rows is None:
            out = self.stage_model.logits(hidden)
        elif step.rows:
            out = self.stage_model.logits(hidden[torch.tensor(step.rows)])
        else:
            out = None
        expected = step.want == "hidden" or step.rows is None or bool(step.rows)
        if layout.pp == 1 or not expected:
            return out if self.rank == 0 else None
        # the last stage's first rank hands the result to rank 0
        source = layout.rank(last, 0)
        if self.rank == source:
            assert out is not None
            group.send(out, 0, tag=1)
            return None
        if self.rank == 0:
            if step.want == "hidden":
                return group.recv(hidden_shape, self.dtype, source, tag=1)
            count = tokens if step.rows is None else len(step.rows)
            return group.recv((count, self.stage_model.full.vocab_size), torch.float32, source, tag=1)
        return None

    def follow(self) -> None:
        """A rank other than 0: run every step rank 0 broadcasts, until it says stop (None)."""
        with torch.inference_mode():
            while True:
                step = self.group.broadcast_object(idle=True)
                if step is None:
                    return
                assert isinstance(step, StepPlan)
                self._execute(step)

    # -- lifecycle -----------------------------------------------------------------------------

    def close(self) -> None:
        """Tell the other ranks to stop, and make sure they do."""
        if self.rank != 0 or not self._workers:
            return
        grace = 0.0
        if not self.broken:
            try:
                self.group.broadcast_object(None)
                grace = 10.0
            except ParallelFailure:
                pass  # a rank is already gone: the ones left are killed below
        _stop_workers(self._workers, grace)
        self._stopper.detach()

    def worker_pids(self) -> list[int]:
        return [p.pid for p in self._workers]


def _stop_workers(workers: list[subprocess.Popen], grace_s: float | None) -> None:
    """Wait `grace_s` for each rank to exit by itself, then kill it; none is left behind."""
    deadline = time.monotonic() + (grace_s or 0)
    for proc in workers:
        if proc.poll() is None and grace_s:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
