"""Per-tenant quotas: a token bucket of evaluations per second, and a cap on queued work.

Checked when a request is admitted, before any of its work is queued, so a rejected
request costs the evaluator nothing. Over a limit → 429 with the time until the bucket
holds enough for this request.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from rlme.service.errors import InvalidRequest, Overloaded
from rlme.service.settings import Settings, TenantConfig


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


class Tenants:
    def __init__(self, settings: Settings) -> None:
        self._configs = settings.tenants
        self._default = settings.default_tenant
        self._buckets: dict[str, TokenBucket] = {}
        self.queued: dict[str, int] = {}

    def config(self, tenant: str) -> TenantConfig:
        return self._configs.get(tenant, self._default)

    def weight(self, tenant: str) -> float:
        return self.config(tenant).weight

    def admit(self, tenant: str, evaluations: int) -> None:
        """Raise Overloaded (429) if `evaluations` more would break the tenant's limits."""
        config = self.config(tenant)
        limit = config.max_queued_evaluations
        if limit is not None:
            if evaluations > limit:
                raise InvalidRequest(
                    f"this request needs {evaluations} evaluations; tenant {tenant!r} may queue "
                    f"at most {limit} at once: send fewer items per request"
                )
            if self.queued.get(tenant, 0) + evaluations > limit:
                raise Overloaded(
                    f"tenant {tenant!r} has {self.queued.get(tenant, 0)} evaluations queued (limit {limit})",
                    retry_after_s=1.0,
                )
        if config.max_evaluations_per_s is not None:
            bucket = self._bucket(tenant, config)
            if evaluations > bucket.capacity:
                raise InvalidRequest(
                    f"this request needs {evaluations} evaluations; tenant {tenant!r} may burst "
                    f"at most {int(bucket.capacity)}: send fewer items per request"
                )
            wait = bucket.take(evaluations, time.monotonic())
            if wait > 0:
                raise Overloaded(
                    f"tenant {tenant!r} is over its {config.max_evaluations_per_s:g} evaluations/s",
                    retry_after_s=wait,
                )

    def _bucket(self, tenant: str, config: TenantConfig) -> TokenBucket:
        bucket = self._buckets.get(tenant)
        if bucket is None:
            rate = config.max_evaluations_per_s
            assert rate is not None
            capacity = float(config.burst_evaluations or max(1.0, 10 * rate))
            bucket = self._buckets[tenant] = TokenBucket(rate=rate, capacity=capacity)
        return bucket

    def enqueued(self, tenant: str, evaluations: int) -> None:
        self.queued[tenant] = self.queued.get(tenant, 0) + evaluations

    def dequeued(self, tenant: str, evaluations: int) -> None:
        self.queued[tenant] = self.queued.get(tenant, 0) - evaluations
