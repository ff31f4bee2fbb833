"""The serving base of every family of routes (rewards, judges): evaluator lookup, text
limits, admission with the tenant's queue gauge and counters, and submission of work to
the evaluators' batchers. A family adds only what is its own (vLLM's `OpenAIServing`:
check, validate, preprocess, submit, collect, build).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterable, Mapping

from rlme.service.backends.base import ScoringTask, TaskResult, Work
from rlme.service.batcher import Outcome
from rlme.service.errors import InvalidRequest, PayloadTooLarge
from rlme.service.evaluators import Evaluator, EvaluatorPool
from rlme.service.metrics import Metrics
from rlme.service.result_cache import ResultCache, Tally, task_key
from rlme.service.settings import Settings
from rlme.service.tenancy import Tenants

# Rendering many texts blocks the event loop; above this many, the family uses a thread.
INLINE_RENDER_LIMIT = 64


class ServingBase:
    def __init__(
        self,
        settings: Settings,
        pool: EvaluatorPool,
        metrics: Metrics,
        tenants: Tenants,
        cache: ResultCache | None = None,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.metrics = metrics
        self.tenants = tenants
        self.cache = cache or ResultCache(settings.cache, metrics)  # the app gives every family one

    def evaluator(self, name: str | None) -> Evaluator:
        """The named evaluator (None: the default), loaded; else a 422 naming the choices or a 503."""
        name = name or self.settings.default_evaluator_name
        evaluator = self.pool.get(name)
        if evaluator is None:
            raise InvalidRequest(
                f"unknown evaluator {name!r}; available: {sorted(self.pool.evaluators)} (GET /v1/evaluators)"
            )
        if not evaluator.loaded:
            raise evaluator.unavailable()
        return evaluator

    def check_texts(self, texts: Mapping[str, str | None]) -> None:
        """A 413 naming the first caller text (field -> text) over `limits.max_text_chars`."""
        limit = self.settings.limits.max_text_chars
        for field, text in texts.items():
            if text is not None and len(text) > limit:
                raise PayloadTooLarge(f"{field} has {len(text)} characters; at most {limit}")

    def deadline(self) -> float:
        """When a request starting now is answered 504 (`limits.request_timeout_s`), monotonic."""
        return time.monotonic() + self.settings.limits.request_timeout_s

    @contextlib.asynccontextmanager
    async def admitted(self, tenant: str, evaluations: int) -> AsyncIterator[None]:
        """Reserve `evaluations` in the tenant's queue (its quota: 429 beyond), show them in
        rlme_tenant_queued_evaluations while they run, and count them once answered."""
        await self.tenants.admit(tenant, evaluations)
        queued = self.metrics.tenant_queued.labels(tenant)
        queued.inc(evaluations)
        try:
            yield
        finally:
            self.tenants.dequeued(tenant, evaluations)
            queued.dec(evaluations)
        self.metrics.tenant_evaluations.labels(tenant).inc(evaluations)

    async def submit_all(
        self,
        work: Iterable[tuple[Evaluator, Work]],
        deadline: float,
        tenant: str,
        tally: Tally | None = None,
    ) -> list[Outcome | BaseException]:
        """Every task to its evaluator's batcher at once, with the tenant's fair-share weight;
        each outcome or the exception that task got, in order. A scoring task identical to
        one in flight shares its computation, and one computed before is served from the
        cache (result_cache.py); `tally` counts both."""
        weight = self.tenants.weight(tenant)
        counts = tally if tally is not None else Tally()

        async def one(evaluator: Evaluator, task: Work) -> Outcome:
            if not isinstance(task, ScoringTask):
                return await evaluator.batcher.submit(task, deadline, tenant, weight)
            if not self.cache.config.deduplicate and not self.cache.config.enabled:
                return await evaluator.batcher.submit(task, deadline, tenant, weight)
            apart = "" if self.cache.config.share_across_tenants else tenant
            key = task_key(evaluator.identity, task, evaluator.backend.labels, apart)
            shared = self.cache.inflight(key) if self.cache.config.deduplicate else None
            if shared is not None:
                try:
                    result = await asyncio.shield(shared)
                except asyncio.CancelledError:
                    raise
                except Exception:  # the request computing it failed: compute it for this one
                    pass
                else:
                    counts.deduplicated += task.evaluations
                    self.metrics.deduplicated.inc(task.evaluations)
                    return TaskResult(scores=result.scores, cached_prompt_tokens=task.prompt_tokens)
            owned = self.cache.start(key) if shared is None and self.cache.config.deduplicate else None
            outcome: object = RuntimeError("not computed")
            try:
                hit = await self.cache.lookup(key, task, evaluator.backend.labels)
                if hit is not None:
                    counts.cached += task.evaluations
                    outcome = hit
                    return hit
                outcome = await evaluator.batcher.submit(task, deadline, tenant, weight)
                if isinstance(outcome, TaskResult):
                    await self.cache.put(key, outcome)
                return outcome
            except BaseException as exc:
                outcome = exc
                raise
            finally:
                if owned is not None:
                    self.cache.finish(key, outcome)

        return list(await asyncio.gather(*(one(e, t) for e, t in work), return_exceptions=True))
