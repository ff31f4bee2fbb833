"""Where the tenants' evaluations/s token buckets live.

`memory` (the default): in this process — right for one service replica, but N replicas
behind a load balancer would give each tenant N times its rate. `redis`: one bucket per
tenant in Redis, shared by every replica; the refill and take run as one Lua script on
the Redis server, on the server's clock, so replicas' clocks and races do not matter.

If Redis cannot be reached the request is admitted (fail open: a quota store outage must
not stop every team's training) and the error is logged and counted in
`rlme_quota_store_errors_total`; alert on it. The queued-evaluations cap stays per
replica: it protects that replica's own queue.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from rlme.service.settings import RateStoreConfig

log = logging.getLogger(__name__)


@dataclass
class TokenBucket:
    rate: float  # evaluations per second
    capacity: float
    level: float = field(init=False)
    updated: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.level = self.capacity

    def take(self, amount: float, now: float) -> float:
        """Take `amount` and return 0, or take nothing and return seconds until possible."""
        self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
        self.updated = now
        if amount <= self.level:
            self.level -= amount
            return 0.0
        return (amount - self.level) / self.rate


class RateStore(Protocol):
    errors: int

    async def take(self, tenant: str, rate: float, capacity: float, amount: float) -> float:
        """0 after taking `amount` from the tenant's bucket, else seconds until it holds it."""
        ...

    async def aclose(self) -> None: ...


class MemoryRates:
    def __init__(self) -> None:
        self._buckets: dict[str, TokenBucket] = {}
        self.errors = 0

    async def take(self, tenant: str, rate: float, capacity: float, amount: float) -> float:
        bucket = self._buckets.get(tenant)
        if bucket is None or (bucket.rate, bucket.capacity) != (rate, capacity):
            bucket = self._buckets[tenant] = TokenBucket(rate=rate, capacity=capacity)
        return bucket.take(amount, time.monotonic())

    async def aclose(self) -> None:
        return None


# KEYS[1]: the tenant's bucket (a hash: level, updated). ARGV: rate, capacity, amount.
# Returns the wait in seconds as a string (Redis truncates Lua numbers to integers).
_TAKE = """
local rate, capacity, amount = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local state = redis.call('HMGET', KEYS[1], 'level', 'updated')
local level = tonumber(state[1]) or capacity
local updated = tonumber(state[2]) or now
level = math.min(capacity, level + math.max(0, now - updated) * rate)
local wait = 0
if amount <= level then level = level - amount else wait = (amount - level) / rate end
redis.call('HSET', KEYS[1], 'level', tostring(level), 'updated', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(capacity / rate * 1000) + 60000)
return tostring(wait)
"""


class RedisRates:
    def __init__(self, url: str, key_prefix: str, on_error: Callable[[], None] | None = None) -> None:
        import redis.asyncio as redis

        self._redis: Any = redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
        self._take = self._redis.register_script(_TAKE)
        self._prefix = key_prefix
        self._url = url
        self._on_error = on_error
        self.errors = 0

    async def take(self, tenant: str, rate: float, capacity: float, amount: float) -> float:
        from redis.exceptions import RedisError

        try:
            wait = await self._take(keys=[self._prefix + tenant], args=[rate, capacity, amount])
        except (RedisError, OSError) as exc:
            self.errors += 1
            if self._on_error is not None:
                self._on_error()
            log.error("quota store %s failed (%r); admitting tenant %r unchecked", self._url, exc, tenant)
            return 0.0
        return float(wait)

    async def aclose(self) -> None:
        await self._redis.aclose()


def rate_store(config: RateStoreConfig, on_error: Callable[[], None] | None = None) -> RateStore:
    if config.backend == "redis":
        return RedisRates(config.redis_url, config.key_prefix, on_error)
    return MemoryRates()
