"""Property tests of the limiter backends: any sequence of acquire, release and reconcile keeps
every counter within [0, limit] (a reservation is never refused into overspending, a
reconciliation never goes below zero), and the backends agree with a simple model."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stratus.limits.memory import MemoryLimiter
from stratus.limits.rules import Item, LimitRule
from tests.redis_server import RedisServers, delete_prefix, started_redis, unique_prefix

pytestmark = pytest.mark.timeout(180)
RULE = LimitRule("team", "t", rpm=1)
KEYS = ["a", "b", "c"]
LIMITS = {"a": 10, "b": 25, "c": 3}

# an op: ("acquire", {key: amount}) | ("reconcile", index of an outstanding grant, fraction used)
acquire = st.tuples(
    st.just("acquire"), st.dictionaries(st.sampled_from(KEYS), st.integers(0, 12), min_size=1, max_size=3)
)
reconcile = st.tuples(st.just("reconcile"), st.integers(0, 50), st.floats(0, 1))
ops = st.lists(st.one_of(acquire, reconcile), max_size=40)


def items(prefix: str, amounts: dict[str, int]) -> list[Item]:
    return [Item(prefix + k, a, LIMITS[k], 600, "tpm", RULE, 0.0) for k, a in amounts.items()]


async def run(limiter, prefix: str, sequence) -> None:
    model = dict.fromkeys(KEYS, 0)
    grants: list[dict[str, int]] = []
    for op in sequence:
        if op[0] == "acquire":
            amounts = op[1]
            decision = await limiter.acquire(items(prefix, amounts))
            fits = all(model[k] + a <= LIMITS[k] or a == 0 for k, a in amounts.items())
            assert decision.allowed == fits
            if fits:
                for k, a in amounts.items():
                    model[k] += a
                grants.append(amounts)
        elif grants:
            amounts = grants.pop(op[1] % len(grants))
            changes = [(prefix + k, int(a * op[2]) - a) for k, a in amounts.items()]
            await limiter.adjust(changes)
            for k, a in amounts.items():
                model[k] = max(0, model[k] + int(a * op[2]) - a)
        for k in KEYS:
            value = (
                await limiter.peek(prefix + k)
                if asyncio.iscoroutinefunction(limiter.peek)
                else limiter.peek(prefix + k)
            )
            assert 0 <= value <= LIMITS[k]
            assert value == model[k]


@given(ops)
@settings(max_examples=150, deadline=None)
def test_memory_limiter_stays_within_bounds(sequence):
    asyncio.run(run(MemoryLimiter(), "", sequence))


@pytest.fixture(scope="module", params=["redis", "redis-cluster"])
def redis_url(request, tmp_path_factory):
    """A Redis the tests start (one server, or a three-node cluster); without the binary, the
    shared one for the single-server case."""
    workdir = tmp_path_factory.mktemp(request.param)
    if request.param == "redis":
        with started_redis(workdir) as url:
            yield url
    else:
        with RedisServers(workdir, count=3, cluster=True) as servers:
            yield servers.url


@given(ops)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_redis_limiter_stays_within_bounds(redis_url, sequence):
    from stratus.limits.redis import RedisLimiter

    prefix = "{" + unique_prefix() + "}:"  # one hash slot, as the gateway's counters are

    async def go():
        limiter = RedisLimiter(redis_url)
        try:
            await run(limiter, prefix, sequence)
        finally:
            await limiter.close()

    try:
        asyncio.run(go())
    finally:
        delete_prefix(redis_url, prefix)


def test_concurrent_acquires_never_overspend():
    """Many threads racing for one counter: exactly limit/amount succeed."""
    from concurrent.futures import ThreadPoolExecutor

    limiter = MemoryLimiter()
    its = [Item("k", 7, 70, 600, "tpm", RULE, 0.0)]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: limiter.acquire_now(its).allowed, range(200)))
    assert sum(results) == 10 and limiter.peek("k") == 70
