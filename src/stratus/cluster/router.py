"""The router: which replica of a model takes the next request.

Policies (per model):
- ``capacity`` (default): replica i has a capacity C_i (output tokens/s, learned online) and
  outstanding work W_i (expected tokens of the requests it holds, less what they produced);
  work w goes to the replica with the least expected completion time (W_i + w) / C_i. On
  replicas of different power this keeps every replica's queue equally long *in seconds*,
  which is what minimises the makespan of a batch and the latency tail of a stream.
- ``p2c``: two replicas at random, the one with fewer outstanding requests.
- ``round_robin``: each in turn.

Prefix affinity on top of any policy: an ``affinity_key`` (a hash of the prompt's first
blocks, or the user/session) remembers the replica that last served it (bounded LRU); that
replica is preferred unless its expected completion time exceeds the policy's choice by more
than ``affinity_slack`` seconds, so a hot prefix never piles onto one busy replica.

The per-replica numbers live in numpy arrays so that ``pick`` is one vectorised pass over
the replicas: a few microseconds for a handful, tens for ten thousand. Not thread-safe: call
it from one event loop (the ReplicaSet's).
"""

from __future__ import annotations

import random
import time
from collections import OrderedDict
from collections.abc import Callable, Collection

import numpy as np

POLICIES = ("capacity", "p2c", "round_robin")
DEFAULT_CAPACITY = 100.0  # tokens/s for the first replica added without a prior
# A prompt token costs a batched engine far less than an output token (prefill runs many in
# one pass); work is counted in output-token equivalents.
PROMPT_TOKEN_WEIGHT = 0.1


def request_work(prompt_tokens: int, max_tokens: int) -> float:
    """Expected work of a request, in output tokens."""
    return max_tokens + PROMPT_TOKEN_WEIGHT * prompt_tokens


class NoReplicaAvailable(Exception):
    """Every replica is excluded (failed, draining, open breaker) or none was added."""


class Router:
    def __init__(
        self,
        policy: str = "capacity",
        *,
        affinity_slack: float = 1.0,
        seed: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        learn: bool = True,
        ewma_alpha: float = 0.3,
        window_seconds: float = 1.0,
        saturation_requests: float = 2.0,
        affinity_size: int = 65536,
    ):
        """`learn`: update capacities from observed throughput. A sample is the replica's output
        tokens over a window of >= `window_seconds` during which it had work; it enters an EWMA
        (`ewma_alpha`). A window in which the replica held fewer than `saturation_requests`
        requests on average only ever raises the estimate: a lightly loaded replica is not
        showing its capacity, and lowering it for that would starve it of the load that would."""
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {', '.join(POLICIES)}, got {policy!r}")
        if affinity_slack < 0:
            raise ValueError(f"affinity_slack must be >= 0 seconds, got {affinity_slack!r}")
        self.policy = policy
        self.affinity_slack = float(affinity_slack)
        self._clock = clock
        self._rng = random.Random(seed)
        self._learn = learn
        self._alpha = ewma_alpha
        self._window = window_seconds
        self._saturation = saturation_requests
        self._affinity: OrderedDict[str, str] = OrderedDict()
        self._affinity_size = affinity_size
        self._rr = 0
        self._added: list[str] = []  # add order: round robin's turn order
        # Index i <-> replica id; arrays hold the numbers pick() reads, lists the rest.
        self._ids: list[str] = []
        self._index: dict[str, int] = {}
        size = 8
        self._work = np.zeros(size)  # W_i, expected tokens outstanding
        self._cap = np.ones(size)  # C_i, tokens/s
        self._inv = np.ones(size)  # 1 / C_i: pick() multiplies
        self._reqs = np.zeros(size)  # outstanding requests
        self._scratch = np.zeros(size)  # pick()'s expected times, without allocating
        self._meter: list[_Meter] = []

    # -- membership ----------------------------------------------------------------------------

    def add(self, replica_id: str, capacity: float | None = None) -> None:
        """Add a replica; `capacity` is the prior in output tokens/s (default: the mean of the
        others, or DEFAULT_CAPACITY for the first)."""
        if replica_id in self._index:
            raise ValueError(f"replica {replica_id!r} is already in the router")
        if capacity is not None and not (capacity > 0 and np.isfinite(capacity)):
            raise ValueError(f"capacity must be a positive number of tokens/s, got {capacity!r}")
        n = len(self._ids)
        if capacity is None:
            capacity = float(self._cap[:n].mean()) if n else DEFAULT_CAPACITY
        if n == len(self._work):
            self._grow()
        self._ids.append(replica_id)
        self._index[replica_id] = n
        self._work[n] = 0.0
        self._set_capacity(n, capacity)
        self._reqs[n] = 0.0
        self._meter.append(_Meter(self._clock()))
        self._added.append(replica_id)
        # Slots are a seeded random order: argmin takes the first of equal expected times, so
        # ties go by the seed, at no cost per pick.
        self._swap(n, self._rng.randrange(n + 1))

    def remove(self, replica_id: str) -> None:
        """Forget a replica (its late progress/end calls are ignored); unknown ids are ignored."""
        i = self._index.get(replica_id)
        if i is None:
            return
        self._swap(i, len(self._ids) - 1)  # into the last slot, so the arrays stay dense
        del self._index[replica_id]
        self._added.remove(replica_id)
        self._ids.pop()
        self._meter.pop()

    def _swap(self, i: int, j: int) -> None:
        if i == j:
            return
        ids = self._ids
        ids[i], ids[j] = ids[j], ids[i]
        self._index[ids[i]], self._index[ids[j]] = i, j
        for arr in (self._work, self._cap, self._inv, self._reqs):
            arr[i], arr[j] = arr[j], arr[i]
        self._meter[i], self._meter[j] = self._meter[j], self._meter[i]

    def _set_capacity(self, i: int, capacity: float) -> None:
        self._cap[i] = capacity
        self._inv[i] = 1.0 / capacity

    def __contains__(self, replica_id: object) -> bool:
        return replica_id in self._index

    def __len__(self) -> int:
        return len(self._ids)

    # -- the decision --------------------------------------------------------------------------

    def pick(self, work: float, affinity_key: str | None = None, exclude: Collection[str] = ()) -> str:
        """The replica for a request of `work` expected tokens; raises NoReplicaAvailable."""
        n = len(self._ids)
        if n == 0:
            raise NoReplicaAvailable("no replica has been added")
        excluded = {self._index[r] for r in exclude if r in self._index} if exclude else set()
        if len(excluded) == n:
            raise NoReplicaAvailable(f"all {n} replicas are excluded (unhealthy or draining)")
        if self.policy == "capacity":
            chosen = self._least_completion_time(n, work, excluded)
        elif self.policy == "p2c":
            chosen = self._two_choices(n, excluded)
        else:
            chosen = self._round_robin(n, excluded)
        if affinity_key is not None:
            chosen = self._apply_affinity(affinity_key, chosen, work, excluded)
        return self._ids[chosen]

    def _eta(self, i: int, work: float) -> float:
        """Expected seconds until replica i would finish `work` on top of what it holds."""
        return float((self._work[i] + work) / self._cap[i])

    def _least_completion_time(self, n: int, work: float, excluded: set[int]) -> int:
        eta = self._scratch[:n]
        np.add(self._work[:n], work, out=eta)
        np.multiply(eta, self._inv[:n], out=eta)
        if excluded:
            eta[list(excluded)] = np.inf
        return int(eta.argmin())

    def _two_choices(self, n: int, excluded: set[int]) -> int:
        if n - len(excluded) == 1:
            return next(i for i in range(n) if i not in excluded)
        a = self._rng.randrange(n)
        b = self._rng.randrange(n - 1)
        b += b >= a
        if a in excluded or b in excluded:  # rare: sample among the allowed ones instead
            a, b = self._rng.sample([i for i in range(n) if i not in excluded], 2)
        return a if self._reqs[a] <= self._reqs[b] else b

    def _round_robin(self, n: int, excluded: set[int]) -> int:
        for _ in range(n):
            turn = self._rr % n
            self._rr = turn + 1
            i = self._index[self._added[turn]]
            if i not in excluded:
                return i
        raise NoReplicaAvailable("all replicas are excluded")  # unreachable: pick() checked

    def _apply_affinity(self, key: str, chosen: int, work: float, excluded: set[int]) -> int:
        held = self._affinity.get(key)
        i = self._index.get(held) if held is not None else None
        if (
            i is not None
            and i != chosen
            and i not in excluded
            and self._eta(i, work) - self._eta(chosen, work) <= self.affinity_slack
        ):
            chosen = i
        self._affinity[key] = self._ids[chosen]
        self._affinity.move_to_end(key)
        if len(self._affinity) > self._affinity_size:
            self._affinity.popitem(last=False)
        return chosen

    # -- accounting ----------------------------------------------------------------------------

    def begin(self, replica_id: str, work: float) -> None:
        """A request of `work` expected tokens was sent to the replica."""
        i = self._index.get(replica_id)
        if i is None:
            raise KeyError(f"replica {replica_id!r} is not in the router")
        self._meter[i].advance(self._clock(), self._reqs[i])
        self._work[i] += work
        self._reqs[i] += 1

    def progress(self, replica_id: str, tokens: int) -> None:
        """The replica produced `tokens` more output tokens for one of its requests."""
        i = self._index.get(replica_id)
        if i is None or tokens <= 0:
            return
        meter = self._meter[i]
        now = self._clock()
        meter.advance(now, self._reqs[i])
        meter.tokens += tokens
        meter.progressed += tokens
        self._work[i] = max(self._work[i] - tokens, 0.0)
        self._maybe_learn(i, meter)

    def end(self, replica_id: str, work: float, tokens: int, seconds: float, ok: bool) -> None:
        """The request begun with `work` finished (ok) or failed after producing `tokens` in all
        (including those already reported through progress) in `seconds`."""
        i = self._index.get(replica_id)
        if i is None:
            return
        meter = self._meter[i]
        meter.advance(self._clock(), self._reqs[i])
        # Tokens this request already reported: the router does not track requests one by
        # one, so take them from the replica's pool of reported-but-unfinished progress.
        reported = min(tokens, meter.progressed)
        meter.progressed -= reported
        meter.tokens += tokens - reported
        self._reqs[i] = max(self._reqs[i] - 1, 0.0)
        self._work[i] = max(self._work[i] - (work - reported), 0.0)
        if self._reqs[i] == 0:  # nothing outstanding: clear float drift
            self._work[i] = 0.0
            meter.progressed = 0
        if ok:
            self._maybe_learn(i, meter)
        else:  # a failing replica's time says nothing about its speed
            meter.reset()

    def _maybe_learn(self, i: int, meter: _Meter) -> None:
        if not self._learn or meter.busy < self._window or meter.tokens <= 0:
            return
        sample = meter.tokens / meter.busy
        saturated = meter.load / meter.busy >= self._saturation
        if saturated or sample > self._cap[i]:
            self._set_capacity(i, self._cap[i] + self._alpha * (sample - self._cap[i]))
        meter.reset()

    # -- reading -------------------------------------------------------------------------------

    def capacity(self, replica_id: str) -> float:
        return float(self._cap[self._index[replica_id]])

    def snapshot(self) -> dict[str, dict]:
        """Per replica: capacity (tokens/s), outstanding work and requests, expected seconds to
        drain what it holds."""
        out = {}
        for rid, i in self._index.items():
            out[rid] = {
                "capacity": round(float(self._cap[i]), 3),
                "outstanding_work": round(float(self._work[i]), 3),
                "outstanding_requests": int(self._reqs[i]),
                "expected_seconds": round(float(self._work[i] / self._cap[i]), 3),
            }
        return out

    def _grow(self) -> None:
        size = 2 * len(self._work)
        for name in ("_work", "_cap", "_inv", "_reqs", "_scratch"):
            old = getattr(self, name)
            new = np.ones(size) if name in ("_cap", "_inv") else np.zeros(size)
            new[: len(old)] = old
            setattr(self, name, new)


class _Meter:
    """One replica's throughput window: output tokens over the time it had work."""

    __slots__ = ("last", "busy", "load", "tokens", "progressed")

    def __init__(self, now: float):
        self.last = now
        self.busy = 0.0  # seconds with at least one outstanding request
        self.load = 0.0  # integral of outstanding requests over time
        self.tokens = 0  # output tokens counted in this window
        self.progressed = 0  # tokens reported by progress() for requests not yet ended

    def advance(self, now: float, outstanding: float) -> None:
        if outstanding > 0:
            dt = now - self.last
            self.busy += dt
            self.load += outstanding * dt
        self.last = now

    def reset(self) -> None:
        self.busy = self.load = 0.0
        self.tokens = 0
