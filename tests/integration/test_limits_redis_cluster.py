"""The Redis limiter on a real Redis Cluster (three `redis-server --cluster-enabled` nodes that
the test starts): a URL naming any node works, one request's counters of several rules are
checked and charged by one script on one shard, and two limiters ("gateways") pointed at
different nodes share one limit exactly. Skipped without the redis-server/redis-cli binaries."""

from __future__ import annotations

import asyncio

import pytest
from redis.crc import key_slot

from stratus.limits.redis import RedisLimiter
from stratus.limits.rules import COUNTER_PREFIX, LimiterUnavailable, LimitRule, plan_request
from stratus.security.identity import Principal
from tests.redis_server import RedisServers

pytestmark = pytest.mark.timeout(120)
N = 7  # requests the daily budget admits


def principal(team: str) -> Principal:
    return Principal(user="alice", team=team, key_id="key_c1", models=None)


def rules(team: str) -> list[LimitRule]:
    """Counters are named after rules: each test uses a team (and model) of its own."""
    return [
        LimitRule("key", "key_c1", rpm=10**6, tpm=10**9),
        LimitRule("team", team, tokens_per_day=N * 30, budget_usd_per_month=100.0),
        LimitRule("model", team, concurrent=10**6),
    ]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with RedisServers(tmp_path_factory.mktemp("redis-cluster"), count=3, cluster=True) as servers:
        yield servers


def test_a_request_is_admitted_and_settled_on_a_cluster(cluster):
    plan = plan_request(rules("t1"), principal("t1"), "t1", 10, 20, {"t1": (1.0, 1.0)})
    untagged = {key_slot(item.key.removeprefix(COUNTER_PREFIX).encode()) for item in plan.items}
    assert len(untagged) > 1  # untagged, these counters would be on different slots

    async def go():
        limiter = RedisLimiter(cluster.url)  # asks the node, and becomes a cluster client
        try:
            decision = await limiter.acquire(plan.items)
            assert limiter.cluster is True and decision.allowed
            await limiter.adjust(plan.reconcile(12, 12))  # delivered 12 of the 30 reserved
            return {item.kind: await limiter.peek(item.key) for item in plan.items}
        finally:
            await limiter.close()

    values = asyncio.run(go())
    assert values == {
        "rpm": 1,
        "tpm": 12,
        "tokens_per_day": 12,
        "budget_usd_per_month": 12,
        "concurrent": 0,
    }


def test_untagged_counters_are_refused_by_the_cluster(cluster):
    """The check above is what makes the limiter work: keys on several slots fail (closed)."""
    plan = plan_request(rules("t2"), principal("t2"), "t2", 1, 1, {}, prefix="untagged:")

    async def go():
        limiter = RedisLimiter(cluster.url)
        try:
            await limiter.acquire(plan.items)
        finally:
            await limiter.close()

    with pytest.raises(LimiterUnavailable):
        asyncio.run(go())


def test_two_limiters_on_different_nodes_share_one_budget(cluster):
    team = "t3"

    async def go():
        limiters = [RedisLimiter(f"redis://127.0.0.1:{port}/0") for port in cluster.ports[:2]]
        try:

            async def one(i: int) -> bool:
                plan = plan_request(rules(team), principal(team), team, 10, 20, {})  # 30 tokens each
                decision = await limiters[i % 2].acquire(plan.items)
                if decision.allowed:
                    await limiters[i % 2].adjust(plan.reconcile(30, 0))  # delivered all: only the slot frees
                return decision.allowed

            admitted = await asyncio.gather(*(one(i) for i in range(200)))
            counters = plan_request(rules(team), principal(team), team, 0, 0, {}).items
            used = {it.kind: await limiters[0].peek(it.key) for it in counters}
            return sum(admitted), used
        finally:
            for limiter in limiters:
                await limiter.close()

    admitted, used = asyncio.run(go())
    assert admitted == N
    assert used["tokens_per_day"] == N * 30 and used["concurrent"] == 0


def test_a_server_that_refuses_info_is_taken_for_a_plain_server(tmp_path):
    """The cluster question is INFO; an ACL user without it still gets a working limiter."""
    import redis

    with RedisServers(tmp_path) as server:
        admin = redis.Redis.from_url(server.url)
        admin.acl_setuser("limited", enabled=True, passwords=["+pw"], keys=["*"], commands=["+@all", "-info"])
        admin.close()
        url = server.url.replace("redis://", "redis://limited:pw@")
        plan = plan_request(rules("t4"), principal("t4"), "t4", 10, 20, {})

        async def go():
            limiter = RedisLimiter(url)
            try:
                decision = await limiter.acquire(plan.items)
                return limiter.cluster, decision.allowed
            finally:
                await limiter.close()

        assert asyncio.run(go()) == (False, True)
