"""The shared limiter: counters in Redis, checked and charged by one Lua script.

    limiter = RedisLimiter("redis://127.0.0.1:6379/0")
    decision = await limiter.acquire(plan.items)    # LimiterUnavailable if Redis is down

Redis runs a script atomically, so several gateway processes sharing one Redis never admit more
than a limit between them: the script reads every counter, and adds to all of them only if none
would pass its limit. Reconciling adds a (possibly negative) delta, never below zero, and only to
counters that still exist (a window that ended is left alone).

Redis Cluster: the URL may name any node of a cluster; the first call asks the node
(`INFO cluster`) and switches to a cluster client, which sends each script to the node owning
its keys. A script may only touch keys of one hash slot, so every counter name starts with the
same hash tag (limits.COUNTER_PREFIX, "{stratus:lim}:"): all counters live on one shard, the
price of checking counters of several rules (key, team, model) in one atomic step.
"""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisClusterException, RedisError, ResponseError

from stratus.limits.rules import Decision, Item, LimiterUnavailable

# KEYS: counters. ARGV: amount, limit, ttl for each. Returns {allowed, refused index, values...}.
ACQUIRE = """
local n = #KEYS
local values = {}
for i = 1, n do
  values[i] = tonumber(redis.call('GET', KEYS[i]) or '0')
end
for i = 1, n do
  local amount = tonumber(ARGV[3 * i - 2])
  if amount > 0 and values[i] + amount > tonumber(ARGV[3 * i - 1]) then
    return {0, i, unpack(values)}
  end
end
for i = 1, n do
  values[i] = redis.call('INCRBY', KEYS[i], ARGV[3 * i - 2])
  redis.call('EXPIRE', KEYS[i], ARGV[3 * i])
end
return {1, 0, unpack(values)}
"""

# KEYS: counters. ARGV: delta for each.
ADJUST = """
for i = 1, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    local v = redis.call('INCRBY', KEYS[i], ARGV[i])
    if v < 0 then redis.call('SET', KEYS[i], 0, 'KEEPTTL') end
  end
end
return 1
"""

_FAILURES = (RedisError, RedisClusterException, OSError)


class RedisLimiter:
    def __init__(self, url: str, timeout: float = 2.0, cluster: bool | None = None):
        """`cluster`: None asks the server on first use; True/False skips the question."""
        self.url = url
        self.timeout = timeout
        self.cluster = cluster
        self.client: aioredis.Redis | RedisCluster = self._standalone()
        self._ready = cluster is False
        self._lock = asyncio.Lock()
        if cluster is False:
            self._register()

    def _standalone(self) -> aioredis.Redis:
        return aioredis.Redis.from_url(
            self.url, socket_timeout=self.timeout, socket_connect_timeout=self.timeout, decode_responses=False
        )

    def _register(self) -> None:
        self._acquire = self.client.register_script(ACQUIRE)
        self._adjust = self.client.register_script(ADJUST)

    async def _connect(self) -> None:
        """On first use: a cluster client if the server is a cluster node. Retried after a failure."""
        async with self._lock:
            if self._ready:
                return
            if self.cluster is None:
                try:
                    info = await self.client.info("cluster")
                    self.cluster = bool(info.get("cluster_enabled"))
                except ResponseError:  # INFO refused (an ACL without it): a plain server
                    self.cluster = False
            if self.cluster:
                await self.client.aclose()
                self.client = RedisCluster.from_url(
                    self.url,
                    socket_timeout=self.timeout,
                    socket_connect_timeout=self.timeout,
                    decode_responses=False,
                )
                await self.client.initialize()
            self._register()
            self._ready = True

    async def _call(self, script: str, keys: list[str], args: list[int]):
        try:
            if not self._ready:
                await self._connect()
            run = self._acquire if script == "acquire" else self._adjust
            return await run(keys=keys, args=args)
        except _FAILURES as exc:
            raise LimiterUnavailable(f"Redis unreachable: {type(exc).__name__}") from exc

    async def acquire(self, items: list[Item]) -> Decision:
        if not items:
            return Decision(True, [])
        args: list[int] = []
        for it in items:
            args += [it.amount, it.limit, it.ttl]
        reply = await self._call("acquire", [it.key for it in items], args)
        allowed, index, *values = (int(v) for v in reply)
        if allowed:
            return Decision(True, values)
        return Decision(False, values, refused=index - 1, current=values[index - 1])

    async def adjust(self, changes: list[tuple[str, int]]) -> None:
        if changes:
            await self._call("adjust", [k for k, _ in changes], [d for _, d in changes])

    async def peek(self, key: str) -> int:
        if not self._ready:
            await self._connect()
        return int(await self.client.get(key) or 0)

    async def close(self) -> None:
        await self.client.aclose()
