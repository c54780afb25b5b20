"""TTLSet: a local change made while a reload's query runs is not lost when the reload lands."""

import threading

import pytest

from stratus.audit.ttl_set import TTLSet

pytestmark = pytest.mark.timeout(30)


def test_a_change_during_a_reload_survives_it():
    in_query, release = threading.Event(), threading.Event()
    stored = {"a"}

    def load():
        snapshot = set(stored)  # read before the change below is committed
        in_query.set()
        release.wait(10)
        return snapshot

    s = TTLSet(load, ttl=60)
    reload = threading.Thread(target=s.refresh)
    reload.start()
    in_query.wait(10)
    stored.add("b")  # committed, then applied locally, while the query is in flight
    s.add("b")
    s.discard("a")
    stored.discard("a")
    release.set()
    reload.join(10)
    assert "b" in s and "a" not in s and not s.stale()


def test_one_reload_at_a_time():
    calls = []
    gate, started = threading.Event(), threading.Event()

    def load():
        calls.append(1)
        started.set()
        gate.wait(10)
        return {"x"}

    s = TTLSet(load, ttl=0)
    first = threading.Thread(target=s.refresh)
    first.start()
    started.wait(10)
    s.refresh()  # returns at once: the first reload is running
    gate.set()
    first.join(10)
    assert len(calls) == 1 and "x" in s


def test_a_stale_set_needs_a_refresh_only_while_none_runs():
    gate, started = threading.Event(), threading.Event()

    def load():
        started.set()
        gate.wait(10)
        return {"x"}

    s = TTLSet(load, ttl=60)
    assert s.stale() and s.needs_refresh()  # never loaded
    reload = threading.Thread(target=s.refresh)
    reload.start()
    started.wait(10)
    assert s.stale() and not s.needs_refresh()  # one is under way: the others use the current set
    gate.set()
    reload.join(10)
    assert not s.stale() and not s.needs_refresh() and "x" in s
