"""The guard on its own: lockouts with exponential backoff, and per-key baselines that alert."""

from __future__ import annotations

from stratus.audit.anomaly import AlertPolicy, Guard, LockoutPolicy, Observation, failure_sources


class Clock:
    def __init__(self):
        self.now = 1_000_000.0

    def __call__(self):
        return self.now


def test_failure_burst_locks_the_address_with_exponential_backoff():
    clock = Clock()
    guard = Guard(LockoutPolicy(failures=5, window=60, base=10), clock=clock)
    fail = lambda: guard.observe(Observation(key=None, address="10.0.0.9", status=401, at=clock.now))  # noqa: E731
    events = [e for _ in range(5) for e in fail()]
    assert [e.kind for e in events] == ["lockout"]
    assert events[0].source == "addr:10.0.0.9" and events[0].detail["seconds"] == 10
    assert guard.locked(["addr:10.0.0.9"]) == 10
    assert guard.locked(["addr:10.0.0.10"]) == 0
    clock.now += 11
    assert guard.locked(["addr:10.0.0.9"]) == 0
    second = [e for _ in range(5) for e in fail()]
    assert second[0].detail["seconds"] == 20  # doubled
    assert guard.lockouts()[0]["source"] == "addr:10.0.0.9"


def test_failures_against_a_key_prefix_never_lock_the_key_for_other_addresses():
    """A key's prefix is public: wrong secrets sent with a victim's prefix from many addresses must
    not lock the victim out; the failing addresses are throttled instead."""
    guard = Guard(LockoutPolicy(failures=3, window=60, base=10))
    victim = "sk-stratus-aaaaaaaaaaaa"
    for i in range(30):
        guard.observe(Observation(key=victim, address=f"10.0.1.{i % 10}", status=401))
    assert guard.locked(failure_sources(victim, "10.0.9.9")) == 0  # the owner, elsewhere
    assert guard.locked(failure_sources(victim, "10.0.1.0")) > 0  # an attacking address
    assert guard.locked(["addr:10.0.1.0"]) > 0


def test_spread_out_failures_do_not_lock():
    clock = Clock()
    guard = Guard(LockoutPolicy(failures=3, window=60, base=10), clock=clock)
    for _ in range(10):
        guard.observe(Observation(key=None, address="10.0.0.1", status=401, at=clock.now))
        clock.now += 31
    assert guard.locked(["addr:10.0.0.1"]) == 0


def test_a_spike_on_one_key_alerts_and_steady_keys_do_not():
    guard = Guard(alerts=AlertPolicy(z=4.0, interval=60, warmup=5, min_count=10))
    t = 0.0
    keys = ["sk-stratus-aaaaaaaaaaaa", "sk-stratus-bbbbbbbbbbbb", "sk-stratus-cccccccccccc"]
    events = []
    for minute in range(20):  # steady: 8-12 requests a minute on every key
        for k, key in enumerate(keys):
            for i in range(8 + (minute + k) % 5):
                events += guard.observe(Observation(key, "10.0.0.1", 200, tokens=20, model="m", at=t + i))
        t += 60
    assert events == []
    for i in range(200):  # one key, one minute: 200 requests
        events += guard.observe(Observation(keys[0], "10.0.0.1", 200, tokens=20, model="m", at=t + i * 0.1))
    for key in keys[1:]:
        for i in range(10):
            events += guard.observe(Observation(key, "10.0.0.1", 200, tokens=20, model="m", at=t + i))
    kinds = {(e.kind, e.source) for e in events}
    assert ("rate_spike", f"key:{keys[0]}") in kinds
    assert all(source == f"key:{keys[0]}" for _, source in kinds)
    assert len([e for e in events if e.kind == "rate_spike"]) == 1  # once per interval


def test_new_model_and_many_addresses_alert():
    guard = Guard(alerts=AlertPolicy(max_addresses=3))
    key = "sk-stratus-dddddddddddd"
    assert guard.observe(Observation(key, "10.0.0.1", 200, model="a", at=0)) == []
    (event,) = guard.observe(Observation(key, "10.0.0.1", 200, model="b", at=1))
    assert event.kind == "new_model" and event.detail == {"model": "b"}
    events = []
    for i in range(2, 8):
        events += guard.observe(Observation(key, f"10.0.0.{i}", 200, model="a", at=2 + i))
    assert [e.kind for e in events] == ["many_addresses"]


def test_the_lockout_tracker_forgets_quiet_sources():
    """Addresses and key prefixes are the client's to invent: the tracker stays bounded, and a
    locked source is never forgotten to make room."""
    now = [1000.0]
    guard = Guard(LockoutPolicy(failures=3, window=60, max_sources=50), clock=lambda: now[0])
    for _ in range(3):
        guard.observe(Observation(key=None, address="10.0.0.1", status=401, at=now[0]))
    assert guard.locked(["addr:10.0.0.1"]) > 0
    for i in range(500):
        now[0] += 0.01
        guard.observe(Observation(key=None, address=f"10.1.{i // 250}.{i % 250}", status=401, at=now[0]))
    assert len(guard._sources) <= 50
    assert guard.locked(["addr:10.0.0.1"]) > 0  # still locked out


def test_an_alert_is_acknowledged_once_and_forgotten_with_it():
    clock = Clock()
    guard = Guard(LockoutPolicy(failures=2, window=60, base=10), AlertPolicy(keep=2), clock=clock)

    def lock(address: str):
        for _ in range(2):
            guard.observe(Observation(key=None, address=address, status=401, at=clock.now))
        return guard.events[-1]

    first = lock("10.0.0.1")
    assert guard.recent()[0]["acknowledged"] is None
    assert guard.acknowledge("lockout", first.source, first.at + 1, "ann") is None  # not that one
    clock.now += 5
    ack = guard.acknowledge(first.kind, first.source, first.at, "ann")
    assert ack == {"by": "ann", "at": clock.now}
    assert guard.acknowledge(first.kind, first.source, first.at, "bob") == ack  # the first stands
    assert guard.recent()[0] == {
        "kind": "lockout",
        "source": "addr:10.0.0.1",
        "at": first.at,
        "detail": first.detail,
        "acknowledged": ack,
    }
    lock("10.0.0.2")
    lock("10.0.0.3")  # only 2 kept: the acknowledged one is gone, and so is its acknowledgement
    assert [a["source"] for a in guard.recent()] == ["addr:10.0.0.3", "addr:10.0.0.2"]
    assert guard.acknowledge(first.kind, first.source, first.at, "ann") is None
    assert guard._acks == {}
