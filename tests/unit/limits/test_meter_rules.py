"""The limit rules are re-read once per TTL however many requests find them stale, and a read
begun before an invalidation (an admin changed a limit) is not kept."""

from __future__ import annotations

import asyncio
import threading

import pytest

from stratus.limits.memory import MemoryLimiter
from stratus.limits.meter import Meter
from stratus.limits.rules import LimitRule

pytestmark = pytest.mark.timeout(30)


class CountingMeter(Meter):
    def __init__(self):
        super().__init__(None, MemoryLimiter(), rules_ttl=60.0)
        self.reads = 0
        self.version = 1
        self.gate = threading.Event()
        self.gate.set()

    def _load_rules(self):
        self.reads += 1
        version = self.version  # what the database holds when the read starts
        self.gate.wait(10)
        return [LimitRule("team", "ml", rpm=version)]


def test_requests_that_find_the_rules_stale_share_one_read():
    meter = CountingMeter()

    async def run():
        meter.gate.clear()
        waiting = [asyncio.create_task(meter.rules()) for _ in range(32)]
        await asyncio.sleep(0.05)
        meter.gate.set()
        return await asyncio.gather(*waiting)

    got = asyncio.run(run())
    assert meter.reads == 1
    assert all(rules[0].rpm == 1 for rules in got)


def test_a_read_begun_before_an_invalidation_is_not_kept():
    meter = CountingMeter()

    async def run():
        meter.gate.clear()
        early = asyncio.create_task(meter.rules())  # reads version 1...
        await asyncio.sleep(0.05)
        meter.version = 2  # ...while an admin changes the limit
        meter.invalidate()
        meter.gate.set()
        await early
        return await meter.rules()

    rules = asyncio.run(run())
    assert rules[0].rpm == 2
    assert meter.reads == 2
