"""The collective group of one parallel replica: gloo process groups over loopback TCP, every
operation bounded by a timeout, every failure raised as `ParallelFailure`.

Groups are built directly (`ProcessGroupGloo` on a `TCPStore`), not through
`torch.distributed.init_process_group`, so one process may hold several replicas' groups (tests
run TP=1 and TP=2 engines side by side) and nothing global is left behind when a replica stops.
Rank 0 hosts the store on a port the OS picks, so two replicas never race for a port.
"""

from __future__ import annotations

import pickle
import re
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from ..types import FatalEngineError

# A rank waiting for the next step plan waits as long as the engine stays idle; a dead rank 0
# still ends the wait at once (gloo sees the connection close).
IDLE_WAIT = timedelta(days=365)


class ParallelFailure(FatalEngineError):
    """A collective failed or timed out: a rank died or hung. The replica cannot go on."""


class Group:
    """One process's view of its replica: the world group (step plans, stage to stage
    activations) and the tensor-parallel group of its own pipeline stage (all-reduces)."""

    def __init__(self, rank: int, world_size: int, tp_size: int, store: dist.TCPStore, timeout_s: float):
        """Join the replica's groups; every rank must be constructing its own at the same time
        (rank 0 waits for each rank's "started" key before it does)."""
        self.rank, self.world_size, self.tp_size = rank, world_size, tp_size
        self.stage, self.tp_rank = divmod(rank, tp_size)
        self.timeout = timedelta(seconds=timeout_s)
        self.comm_seconds = 0.0  # time spent in collectives (bench/parallel.py reads it)
        self.failed: str | None = None  # why the group broke; then every operation fails at once
        self.store = store
        # typed Any: torch's stubs omit the collectives a ProcessGroupGloo has
        self.world: Any
        self.tp: Any
        try:
            self.world = dist.ProcessGroupGloo(
                dist.PrefixStore("world", self.store), rank, world_size, self.timeout
            )
            self.tp = None
            if tp_size > 1:
                self.tp = dist.ProcessGroupGloo(
                    dist.PrefixStore(f"tp{self.stage}", self.store), self.tp_rank, tp_size, self.timeout
                )
        except (RuntimeError, dist.DistStoreError) as exc:
            raise ParallelFailure(f"rank {rank} could not join its replica's group: {exc}") from exc

    @staticmethod
    def host(world_size: int, timeout_s: float) -> dist.TCPStore:
        """Rank 0's store, on a loopback port the OS picks (`.port` tells the other ranks)."""
        return dist.TCPStore(
            "127.0.0.1",
            0,
            world_size,
            is_master=True,
            timeout=timedelta(seconds=timeout_s),
            wait_for_workers=False,
        )

    @staticmethod
    def connect(port: int, world_size: int, timeout_s: float) -> dist.TCPStore:
        """Another rank's connection to rank 0's store."""
        try:
            return dist.TCPStore(
                "127.0.0.1", port, world_size, is_master=False, timeout=timedelta(seconds=timeout_s)
            )
        except (RuntimeError, dist.DistStoreError) as exc:
            raise ParallelFailure(f"could not reach rank 0's store on port {port}: {exc}") from exc

    def _wait(self, start: Callable[[], Any], what: str, timeout: timedelta | None = None) -> None:
        """Start a collective and wait for it. Any failure, whether gloo raises when the
        operation starts (a peer's connection already closed) or while it runs, is a
        ParallelFailure, and so is every later operation: a group that failed once is broken."""
        if self.failed is not None:
            raise ParallelFailure(f"rank {self.rank}: the group is broken ({self.failed})")
        started = time.perf_counter()
        try:
            work = start()
            if timeout is None:
                work.wait()
            else:
                work.wait(timeout)
        except RuntimeError as exc:
            self.failed = f"{what} failed: {_first_line(exc)}"
            raise ParallelFailure(f"rank {self.rank}: {self.failed}") from exc
        finally:
            self.comm_seconds += time.perf_counter() - started

    # -- tensor parallel -----------------------------------------------------------------------

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum `tensor` over this stage's tensor-parallel ranks, in place."""
        if self.tp is not None:
            self._wait(lambda: self.tp.allreduce([tensor]), "all-reduce")
        return tensor

    def all_gather_last_dim(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate every tensor-parallel rank's `tensor` along its last dimension."""
        if self.tp is None:
            return tensor
        parts = [torch.empty_like(tensor) for _ in range(self.tp_size)]
        self._wait(lambda: self.tp.allgather([parts], [tensor.contiguous()]), "all-gather")
        return torch.cat(parts, dim=-1)

    # -- the step plan -------------------------------------------------------------------------

    def broadcast_object(self, obj: object = None, *, idle: bool = False) -> object:
        """Rank 0 sends `obj` to every rank; the others return it. `idle`: wait without a
        deadline (a follower waiting for the next step)."""
        opts = dist.BroadcastOptions()
        opts.rootRank = 0
        opts.timeout = IDLE_WAIT if idle else self.timeout
        if self.rank == 0:
            payload = torch.frombuffer(bytearray(pickle.dumps(obj, protocol=5)), dtype=torch.uint8)
            size = torch.tensor([payload.numel()], dtype=torch.int64)
        else:
            size = torch.zeros(1, dtype=torch.int64)
        self._wait(lambda: self.world.broadcast([size], opts), "step plan broadcast")
        if self.rank != 0:
            payload = torch.empty(int(size.item()), dtype=torch.uint8)
        opts.timeout = self.timeout
        self._wait(lambda: self.world.broadcast([payload], opts), "step plan broadcast")
        if self.rank == 0:
            return obj
        return pickle.loads(payload.numpy().tobytes())  # noqa: S301 (from rank 0 of this replica)

    def all_min(self, value: int) -> int:
        """The smallest `value` over all ranks (the KV pool size every rank can hold)."""
        tensor = torch.tensor([value], dtype=torch.int64)
        opts: Any = dist.AllreduceOptions()
        opts.reduceOp = dist.ReduceOp.MIN
        self._wait(lambda: self.world.allreduce([tensor], opts), "all-reduce")
        return int(tensor.item())

    def gather_objects(self, obj: object) -> list[object] | None:
        """Every rank's `obj` at rank 0 (a list by rank); None on the other ranks."""
        data = pickle.dumps(obj)
        size = torch.tensor([len(data)], dtype=torch.int64)
        sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(self.world_size)]
        self._wait(lambda: self.world.allgather([sizes], [size]), "all-gather")
        longest = max(int(s.item()) for s in sizes)
        buf = torch.zeros(longest, dtype=torch.uint8)
        buf[: len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        bufs = [torch.empty(longest, dtype=torch.uint8) for _ in range(self.world_size)]
        self._wait(lambda: self.world.allgather([bufs], [buf]), "all-gather")
        if self.rank != 0:
            return None
        return [
            pickle.loads(b[: int(s.item())].numpy().tobytes())  # noqa: S301 (ranks of this replica)
            for b, s in zip(bufs, sizes, strict=True)
        ]

    # -- pipeline stage to stage ---------------------------------------------------------------

    def send(self, tensor: torch.Tensor, dst: int, tag: int = 0) -> None:
        self._wait(
            lambda: self.world.send([tensor.contiguous()], dst, tag), f"send to rank {dst}", self.timeout
        )

    def recv(self, shape: tuple[int, ...], dtype: torch.dtype, src: int, tag: int = 0) -> torch.Tensor:
        tensor = torch.empty(shape, dtype=dtype)
        self._wait(lambda: self.world.recv([tensor], src, tag), f"receive from rank {src}", self.timeout)
        return tensor


def _first_line(exc: BaseException) -> str:
    """gloo's message without its source path and its boilerplate advice."""
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else type(exc).__name__
    text = re.sub(r"^\[[^\]]*gloo[^\]]*\]\s*", "", text)
    return text.split(" This is typically")[0]
