"""When a monitored run's probes are scored: after its request is answered, in the
background, never so many at once and never into a filling queue.

`RunProbes.observe` hands a scored request of a run to the monitor and, when it may,
starts a task that scores the request's probes (probes.py: anchors without their reference,
canaries) through the reward path's `ProbeScorer` — the same evaluators, questions and
batchers, the tenant's fair share but not its quota — and gives the results to the monitor.
A probe that fails is counted (`rlme_run_probes_total{outcome}`); the run's rewards stand.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from rlme.client.wire import EvaluatorChoice, Item, MetaQuestion, RewardRequest, RewardResponse
from rlme.service.evaluators import EvaluatorPool
from rlme.service.metrics import Metrics
from rlme.service.monitoring.monitor import RunMonitor
from rlme.service.monitoring.probes import anchor_pairs, canary_scores, choose_probes, unanchored_items

log = logging.getLogger(__name__)


class ProbeScorer(Protocol):
    """What the reward path lends the probes."""

    def questions(self, request: RewardRequest) -> list[MetaQuestion]:
        """The request's meta-questions (inline or its rubric's)."""
        ...

    async def score_with(
        self, request: RewardRequest, items: list[Item], questions: list[MetaQuestion], tenant: str
    ) -> RewardResponse:
        """`items` scored on `questions` by the request's evaluators, without admission."""
        ...


class RunProbes:
    def __init__(
        self, monitor: RunMonitor, metrics: Metrics, pool: EvaluatorPool, default_evaluator: str
    ) -> None:
        self.monitor = monitor
        self.metrics = metrics
        self.pool = pool
        self.default_evaluator = default_evaluator
        self._probing: set[asyncio.Task[None]] = set()

    def observe(
        self, scorer: ProbeScorer, request: RewardRequest, response: RewardResponse, tenant: str
    ) -> str | None:
        """Give a run's scored request to the monitor and start its probes; the run's alarm
        (None: not a run's request, or the monitor failed on it)."""
        if request.run is None:
            return None
        try:
            observed = self.monitor.observe(request, response.results, tenant)
        except Exception:  # the rewards are scored and right: monitoring must not fail them
            log.exception("run monitor failed on run %r; the request is answered without it", request.run)
            return None
        if observed is None:
            return None
        alarm, step = observed
        if self._may_probe(request):
            work = self._probe(scorer, request, response, tenant, step)
            task = asyncio.create_task(work, name="run-probes")
            self._probing.add(task)
            task.add_done_callback(self._probing.discard)
        else:
            self.metrics.run_probes.labels("skipped").inc()
        return alarm

    def _may_probe(self, request: RewardRequest) -> bool:
        """Probes are extra work: never so many at once, never into a filling queue."""
        config = self.monitor.config
        if len(self._probing) >= config.max_probing_requests:
            return False
        for choice in request.evaluators or [EvaluatorChoice(name=self.default_evaluator)]:
            evaluator = self.pool.get(choice.name)
            if evaluator is not None:
                batcher = evaluator.batcher
                if (
                    batcher.queued_evaluations
                    > config.probe_queue_share * batcher.config.max_queue_evaluations
                ):
                    return False
        return True

    async def _probe(
        self, scorer: ProbeScorer, request: RewardRequest, response: RewardResponse, tenant: str, step: int
    ) -> None:
        assert request.run is not None
        try:
            questions = scorer.questions(request)
            probes = choose_probes(request, questions, self.monitor.config)
            anchors, canaries = [], []
            if probes.anchors:
                free = [q for q in questions if not q.requires_reference]
                items = unanchored_items(request, probes)
                scored = await scorer.score_with(request, items, free, tenant)
                anchors = anchor_pairs(probes, response.results, scored.results, {q.id for q in free})
            if probes.canaries:
                items = [item for _, _, item in probes.canaries]
                scored = await scorer.score_with(request, items, questions, tenant)
                canaries = canary_scores(probes, response.results, scored.results)
            self.monitor.observe_probes(request.run, step, anchors, canaries, tenant)
            self.metrics.run_probes.labels("ok").inc(len(anchors) + len(canaries))
        except asyncio.CancelledError:  # the service is stopping
            self.metrics.run_probes.labels("failed").inc()
            raise
        except Exception as exc:  # overloaded, failed: the run's rewards stand
            self.metrics.run_probes.labels("failed").inc()
            log.warning("run %r: probes of step %d not scored: %s", request.run, step, exc)

    async def drain(self) -> None:
        """Wait for the probes in flight (tests; shutdown cancels them instead)."""
        while self._probing:
            await asyncio.gather(*self._probing, return_exceptions=True)

    def cancel(self) -> None:
        for task in self._probing:
            task.cancel()
