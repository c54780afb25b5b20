"""Properties of replica choice (cluster/router.py, through ReplicaSet's pick as the gateway
uses it): never a replica that is draining, unreachable, breaker-open, removed or already tried
while another can take the request; a clear refusal only when none can; a half-open breaker's
trial is spent only by the request sent there; the capacity policy
spreads work so that no replica holds more than its share by more than one request; the same
seed and the same calls give the same choices.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from stratus.cluster.breaker import CircuitBreaker
from stratus.cluster.replica_set import ReplicaError, ReplicaSet
from stratus.cluster.router import POLICIES, NoReplicaAvailable, Router

pytestmark = pytest.mark.timeout(60)

IDS = [f"r{i}" for i in range(6)]
KEYS = [None, "alice", "bob"]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeReplica:
    kind = "fake"

    def __init__(self, replica_id: str):
        self.id = replica_id


class ReplicaChoiceMachine(RuleBasedStateMachine):
    """One model's replicas coming and going, failing and recovering, draining, while requests
    are picked, begun and ended."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.set: ReplicaSet
        self.outstanding: list[tuple[str, float]] = []

    @initialize(
        policy=st.sampled_from(POLICIES),
        caps=st.lists(st.sampled_from([1.0, 2.0, 5.0, 50.0]), min_size=2, max_size=5),
    )
    def start(self, policy, caps):
        self.set = ReplicaSet(
            "m",
            policy,
            breaker=lambda: CircuitBreaker(failure_threshold=2, open_seconds=5.0, clock=self.clock),
        )
        self.set.router = Router(policy, seed=7, learn=False, clock=self.clock)
        for rid, cap in zip(IDS, caps, strict=False):
            self.set.add(FakeReplica(rid), cap)

    def entry(self, pick: int):
        ids = sorted(self.set.entries)
        return self.set.entries[ids[pick % len(ids)]] if ids else None

    @rule(rid=st.sampled_from(IDS), capacity=st.sampled_from([None, 1.0, 2.0, 5.0, 50.0]))
    def add(self, rid, capacity):
        if rid not in self.set.entries:
            self.set.add(FakeReplica(rid), capacity)

    @precondition(lambda self: self.set.entries)
    @rule(pick=st.integers(0, 99))
    def remove(self, pick):
        self.set.remove(self.entry(pick).replica.id)

    @precondition(lambda self: self.set.entries)
    @rule(pick=st.integers(0, 99))
    def drain(self, pick):
        self.entry(pick).draining = True  # what ReplicaSet.drain sets before it waits

    @precondition(lambda self: self.set.entries)
    @rule(pick=st.integers(0, 99), unreachable=st.booleans())
    def probe(self, pick, unreachable):
        self.entry(pick).unreachable = unreachable

    @precondition(lambda self: self.set.entries)
    @rule(pick=st.integers(0, 99), ok=st.booleans())
    def outcome(self, pick, ok):
        breaker = self.entry(pick).breaker
        breaker.record_success() if ok else breaker.record_failure()

    @rule(seconds=st.sampled_from([0.5, 3.0, 6.0, 20.0]))
    def wait(self, seconds):
        self.clock.now += seconds

    @rule(
        work=st.floats(1, 500),
        key=st.sampled_from(KEYS),
        tried=st.sets(st.sampled_from(IDS), max_size=3),
    )
    def pick(self, work, key, tried):
        entries = self.set.entries
        can = set()
        for rid, e in entries.items():
            b = e.breaker
            trial_pending = b._trial_at is not None and self.clock() - b._trial_at < b.cooldown
            open_now = b.state == "open" or (b.state == "half_open" and trial_pending)
            if not (e.draining or e.unreachable or open_now or rid in tried):
                can.add(rid)
        router = self.set.router
        etas = {rid: s["outstanding_work"] for rid, s in router.snapshot().items()}
        caps = {rid: router.capacity(rid) for rid in entries}
        if not can:
            with pytest.raises(ReplicaError, match="no replica of the model m is available"):
                self.set._pick(work, key, set(tried), midstream=False)
            return
        trials = {rid: e.breaker._trial_at for rid, e in entries.items()}
        chosen = self.set._pick(work, key, set(tried), midstream=False)
        assert chosen in can, (chosen, can)
        # a half-open breaker's one trial goes to the request sent there, not to a pick that
        # went elsewhere (that would keep the replica out for another cooldown)
        for rid, e in entries.items():
            if rid != chosen:
                assert e.breaker._trial_at == trials[rid], rid
        if router.policy == "capacity":
            eta = {rid: (etas[rid] + work) / caps[rid] for rid in can}
            slack = router.affinity_slack if key is not None else 0.0
            assert eta[chosen] <= min(eta.values()) + slack + 1e-3 * (1 + max(eta.values()))
        router.begin(chosen, work)
        self.outstanding.append((chosen, work))

    @precondition(lambda self: self.outstanding)
    @rule(pick=st.integers(0, 99), ok=st.booleans())
    def end(self, pick, ok):
        rid, work = self.outstanding.pop(pick % len(self.outstanding))
        self.set.router.end(rid, work, int(work), 1.0, ok)

    @invariant()
    def the_router_knows_exactly_the_members(self):
        assert sorted(self.set.router.snapshot()) == sorted(self.set.entries)

    def teardown(self):
        for rid, work in self.outstanding:
            self.set.router.end(rid, work, 0, 1.0, True)
        for rid, state in self.set.router.snapshot().items():
            assert state["outstanding_requests"] == 0 and state["outstanding_work"] == 0, (rid, state)


ReplicaChoiceMachine.TestCase.settings = settings(
    max_examples=120,
    stateful_step_count=40,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_replica_choice_state_machine = ReplicaChoiceMachine.TestCase


@settings(max_examples=200, derandomize=True, deadline=None, database=None)
@given(
    caps=st.lists(st.sampled_from([1.0, 2.0, 3.0, 10.0, 40.0]), min_size=1, max_size=8),
    work=st.floats(1, 100),
    jobs=st.integers(1, 200),
)
def test_no_replica_holds_more_than_its_share_by_more_than_one_request(caps, work, jobs):
    """Equal requests, none finished yet: each replica's queue, in seconds, is within one request
    of every other's (the greedy choice keeps W_i / C_i <= (W_j + w) / C_j for all i, j)."""
    router = Router("capacity", seed=1, learn=False)
    for i, c in enumerate(caps):
        router.add(f"r{i}", c)
    for _ in range(jobs):
        router.begin(router.pick(work), work)
    state = router.snapshot()
    for a in state.values():
        for b in state.values():
            assert (
                a["outstanding_work"] / a["capacity"] <= (b["outstanding_work"] + work) / b["capacity"] + 1e-2
            )


OPS = st.lists(
    st.tuples(st.sampled_from(["add", "remove", "pick", "end"]), st.integers(0, 5), st.floats(1, 200)),
    max_size=60,
)


@settings(max_examples=150, derandomize=True, deadline=None, database=None)
@given(policy=st.sampled_from(POLICIES), ops=OPS, seed=st.integers(0, 3))
def test_the_same_seed_and_calls_give_the_same_choices(policy, ops, seed):
    def run() -> list[str]:
        router = Router(policy, seed=seed, learn=False)
        picks, held = [], []
        for op, k, work in ops:
            rid = f"r{k}"
            if op == "add" and rid not in router:
                router.add(rid, 1.0 + k)
            elif op == "remove":
                router.remove(rid)
            elif op == "pick":
                try:
                    chosen = router.pick(work, affinity_key=f"user{k % 2}", exclude={f"r{(k + 1) % 6}"})
                except NoReplicaAvailable as exc:
                    picks.append(f"refused: {exc}")
                    continue
                router.begin(chosen, work)
                held.append((chosen, work))
                picks.append(chosen)
            elif op == "end" and held:
                chosen, w = held.pop(k % len(held))
                router.end(chosen, w, int(w), 1.0, True)
        return picks

    assert run() == run()


def test_a_half_open_replica_passed_over_keeps_its_trial():
    clock = FakeClock()
    replicas = ReplicaSet(
        "m", breaker=lambda: CircuitBreaker(failure_threshold=1, open_seconds=5.0, clock=clock)
    )
    for rid in ("a", "b"):
        replicas.add(FakeReplica(rid))
    breaker = replicas.entries["a"].breaker
    breaker.record_failure()
    clock.now += 6  # a is half-open: its next request is the trial
    assert replicas._pick(1.0, "k1", {"a"}, midstream=False) == "b"  # a was tried already
    replicas.router.begin("b", 1000.0)  # b is busy: a is the better choice from here on
    assert replicas._pick(1.0, "k2", set(), midstream=False) == "a"  # the trial is still a's
    assert replicas._pick(1.0, "k3", set(), midstream=False) == "b"  # and now it is out
