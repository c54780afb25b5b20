"""Circuit breaker transitions on a fake clock."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stratus.cluster.breaker import CircuitBreaker

pytestmark = pytest.mark.timeout(60)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_consecutive_failures_only():
    clock = FakeClock()
    b = CircuitBreaker(failure_threshold=3, open_seconds=5, clock=clock)
    b.record_failure()
    b.record_failure()
    b.record_success()  # breaks the run
    b.record_failure()
    b.record_failure()
    assert b.state == "closed" and b.allow()
    b.record_failure()
    assert b.state == "open"
    assert not b.allow()


def test_half_open_allows_one_trial_and_success_closes():
    clock = FakeClock()
    b = CircuitBreaker(failure_threshold=1, open_seconds=5, clock=clock)
    b.record_failure()
    clock.now += 4.9
    assert b.state == "open" and not b.allow()
    clock.now += 0.1
    assert b.state == "half_open"
    assert b.allow()  # the trial
    assert not b.allow()  # only one at a time
    b.record_success()
    assert b.state == "closed" and b.allow() and b.allow()


def test_failed_trial_reopens_with_a_growing_cooldown():
    clock = FakeClock()
    b = CircuitBreaker(failure_threshold=2, open_seconds=5, clock=clock, backoff=2, max_open_seconds=12)
    b.record_failure()
    b.record_failure()
    for expected in (10, 12, 12):
        clock.now += b.cooldown
        assert b.allow()
        b.record_failure()
        assert b.state == "open" and b.cooldown == expected
        clock.now += expected - 0.01
        assert not b.allow()
        clock.now += 0.01
    assert b.allow()
    b.record_success()
    assert b.state == "closed" and b.cooldown == 5  # a recovered replica starts afresh
    b.record_failure()
    assert b.state == "closed"  # the threshold counts again from zero


def test_a_trial_that_never_reports_expires():
    clock = FakeClock()
    b = CircuitBreaker(failure_threshold=1, open_seconds=5, clock=clock)
    b.record_failure()
    clock.now += 5
    assert b.allow()
    clock.now += 4
    assert not b.allow()
    clock.now += 1
    assert b.allow()  # the first trial was lost; grant another


def test_late_reports_while_open_change_nothing():
    clock = FakeClock()
    b = CircuitBreaker(failure_threshold=1, open_seconds=5, clock=clock)
    b.record_failure()
    clock.now += 3
    b.record_success()  # a request begun before the breaker opened
    assert b.state == "open"
    b.record_failure()  # does not extend the cooldown either
    clock.now += 2
    assert b.state == "half_open"


def test_a_passing_probe_closes_it_after_the_cooldown():
    clock = FakeClock()
    b = CircuitBreaker(failure_threshold=1, open_seconds=5, clock=clock)
    b.record_failure()
    clock.now += 5
    b.record_success()  # an active probe, not a granted trial
    assert b.state == "closed"


def test_bad_settings():
    with pytest.raises(ValueError):
        CircuitBreaker(failure_threshold=0)
    with pytest.raises(ValueError):
        CircuitBreaker(open_seconds=0)
    with pytest.raises(ValueError):
        CircuitBreaker(open_seconds=5, max_open_seconds=1)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(st.just("ok"), st.just("fail"), st.just("allow"), st.floats(0, 20)),
        max_size=60,
    )
)
def test_never_allows_while_open_and_opens_exactly_at_the_threshold(ops):
    clock = FakeClock()
    b = CircuitBreaker(failure_threshold=3, open_seconds=5, clock=clock, max_open_seconds=40)
    run = 0  # consecutive failures while closed, counted independently
    for op in ops:
        before = b.state
        if op == "ok":
            b.record_success()
            run = 0
            assert b.state == ("open" if before == "open" else "closed")
        elif op == "fail":
            b.record_failure()
            run = run + 1 if before == "closed" else 0
            assert b.state == ("closed" if before == "closed" and run < 3 else "open")
            run = 0 if run == 3 else run
        elif op == "allow":
            allowed = b.allow()
            if before == "closed":
                assert allowed
            if before == "open":
                assert not allowed
        else:
            clock.now += op
        if b.state != "closed":
            run = 0
