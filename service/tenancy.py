"""Per-tenant quotas: a token bucket of evaluations per second (in this process or in
Redis, shared by all replicas: service/rate_store.py), and a cap on queued work (per
replica).

Checked when a request is admitted, before any of its work is queued, so a rejected
request costs the evaluator nothing. Over a limit → 429 with the time until the bucket
holds enough for this request.
"""

from __future__ import annotations

from collections.abc import Callable

from rlme.service.errors import InvalidRequest, Overloaded
from rlme.service.rate_store import rate_store
from rlme.service.settings import Settings, TenantConfig


class Tenants:
    def __init__(self, settings: Settings, on_store_error: Callable[[], None] | None = None) -> None:
        self._configs = settings.tenants
        self._default = settings.default_tenant
        self.rates = rate_store(settings.rate_store, on_store_error)
        self.queued: dict[str, int] = {}

    def config(self, tenant: str) -> TenantConfig:
        return self._configs.get(tenant, self._default)

    def weight(self, tenant: str) -> float:
        return self.config(tenant).weight

    async def admit(self, tenant: str, evaluations: int) -> None:
        """Reserve `evaluations` in the tenant's queue, or raise Overloaded (429) if they
        would break its limits. The caller must `dequeued()` them when done."""
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
        # Reserved before the rate check awaits (Redis): concurrent requests see it.
        self.enqueued(tenant, evaluations)
        try:
            await self._take_rate(tenant, config, evaluations)
        except BaseException:
            self.dequeued(tenant, evaluations)
            raise

    async def _take_rate(self, tenant: str, config: TenantConfig, evaluations: int) -> None:
        rate = config.max_evaluations_per_s
        if rate is not None:
            capacity = float(config.burst_evaluations or max(1.0, 10 * rate))
            if evaluations > capacity:
                raise InvalidRequest(
                    f"this request needs {evaluations} evaluations; tenant {tenant!r} may burst "
                    f"at most {int(capacity)}: send fewer items per request"
                )
            wait = await self.rates.take(tenant, rate, capacity, evaluations)
            if wait > 0:
                raise Overloaded(f"tenant {tenant!r} is over its {rate:g} evaluations/s", retry_after_s=wait)

    def enqueued(self, tenant: str, evaluations: int) -> None:
        self.queued[tenant] = self.queued.get(tenant, 0) + evaluations

    def dequeued(self, tenant: str, evaluations: int) -> None:
        self.queued[tenant] = self.queued.get(tenant, 0) - evaluations
