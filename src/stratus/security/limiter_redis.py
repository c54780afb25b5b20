"""The shared limiter: counters in Redis, checked and charged by one Lua script.

    limiter = RedisLimiter("redis://127.0.0.1:6379/0")
    decision = await limiter.acquire(plan.items)    # LimiterUnavailable if Redis is down

Redis runs a script atomically, so several gateway processes sharing one Redis never admit more
than a limit between them: the script reads every counter, and adds to all of them only if none
would pass its limit. Reconciling adds a (possibly negative) delta, never below zero, and only to
counters that still exist (a window that ended is left alone).
"""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from stratus.security.limits import Decision, Item, LimiterUnavailable

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


class RedisLimiter:
    def __init__(self, url: str, timeout: float = 2.0):
        self.client = aioredis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, decode_responses=False
        )
        self._acquire = self.client.register_script(ACQUIRE)
        self._adjust = self.client.register_script(ADJUST)

    async def acquire(self, items: list[Item]) -> Decision:
        if not items:
            return Decision(True, [])
        args: list[int] = []
        for it in items:
            args += [it.amount, it.limit, it.ttl]
        try:
            reply = await self._acquire(keys=[it.key for it in items], args=args)
        except (RedisError, OSError) as exc:
            raise LimiterUnavailable(f"Redis unreachable: {type(exc).__name__}") from exc
        allowed, index, *values = (int(v) for v in reply)
        if allowed:
            return Decision(True, values)
        return Decision(False, values, refused=index - 1, current=values[index - 1])

    async def adjust(self, changes: list[tuple[str, int]]) -> None:
        if not changes:
            return
        try:
            await self._adjust(keys=[k for k, _ in changes], args=[d for _, d in changes])
        except (RedisError, OSError) as exc:
            raise LimiterUnavailable(f"Redis unreachable: {type(exc).__name__}") from exc

    async def peek(self, key: str) -> int:
        return int(await self.client.get(key) or 0)

    async def close(self) -> None:
        await self.client.aclose()
