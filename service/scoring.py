"""From a validated RewardRequest to rewards: resolve, check limits, tokenize, batch, sum.

Each (evaluator, item) becomes one ScoringTask carrying all of the item's questions, so
the backend can share the item's prefix across them. Tasks from every concurrent request
meet in the evaluator's batcher.
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass

from rlme.client.wire import (
    Calibration,
    EvaluatorChoice,
    Item,
    ItemResult,
    MetaQuestion,
    QuestionScore,
    RewardRequest,
    RewardResponse,
    Usage,
)
from rlme.service.backends.base import ScoringTask, TaskResult, build_task
from rlme.service.calibration import CalibrationStore, apply
from rlme.service.errors import (
    EvaluatorFailed,
    InvalidRequest,
    PayloadTooLarge,
    ServiceError,
)
from rlme.service.evaluators import Evaluator, EvaluatorPool
from rlme.service.metrics import Metrics
from rlme.service.monitoring.monitor import RunMonitor
from rlme.service.monitoring.scheduler import RunProbes
from rlme.service.result_cache import ResultCache, Tally
from rlme.service.reward_math import log_p_yes, weighted_reward
from rlme.service.serving import INLINE_RENDER_LIMIT, ServingBase
from rlme.service.settings import Settings
from rlme.service.tenancy import Tenants

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Plan:
    questions: list[MetaQuestion]
    evaluators: list[tuple[Evaluator, float]]


class RewardScorer(ServingBase):
    def __init__(
        self,
        settings: Settings,
        pool: EvaluatorPool,
        metrics: Metrics,
        tenants: Tenants,
        monitor: RunMonitor | None = None,
        calibrations: CalibrationStore | None = None,
        cache: ResultCache | None = None,
    ) -> None:
        super().__init__(settings, pool, metrics, tenants, cache)
        self.monitor = monitor
        self.calibrations = calibrations or CalibrationStore(None)
        self.probes: RunProbes | None = None  # a run's probes, scored in the background
        if monitor is not None and monitor.config.enabled:
            self.probes = RunProbes(monitor, metrics, pool, settings.default_evaluator_name)

    def store_statuses(self) -> dict[str, str]:
        """The optional state files: 'ok', or why one is not used (for /health/ready)."""
        statuses = {"calibrations": self.calibrations.store_error or "ok"}
        if self.monitor is not None and self.monitor.config.enabled:
            statuses["runs"] = self.monitor.store_error or "ok"
            shared = self.monitor.shared
            if shared is not None:
                statuses["shared"] = (
                    "ok"
                    if shared.up
                    else f"{shared.url} does not answer: run statistics are this replica's own until it does"
                )
        return statuses

    def plan(self, request: RewardRequest) -> Plan:
        """Check the request against this server's rubrics, evaluators and limits."""
        limits = self.settings.limits
        if len(request.items) > limits.max_items:
            raise PayloadTooLarge(
                f"{len(request.items)} items; at most {limits.max_items} per request "
                "(split the batch; the rlme client does this for you)"
            )
        questions = self._questions(request)
        if len(questions) > limits.max_questions:
            raise PayloadTooLarge(f"{len(questions)} questions; at most {limits.max_questions}")
        evaluators = self._evaluators(request.evaluators)
        if all(w * q.weight == 0 for _, w in evaluators for q in questions):
            raise InvalidRequest("every evaluator or question weight is zero; rewards would all be 0")
        needs_reference = [q.id for q in questions if q.requires_reference]
        for i, item in enumerate(request.items):
            self._check_item(i, item, needs_reference)
        if request.calibrated:
            self.calibrations.refresh()  # what another replica fitted counts at once
            missing = [
                f"{e.name}/{q.id}" for e, _ in evaluators for q in questions if not self._calibration(e, q)
            ]
            if missing:
                raise InvalidRequest(
                    f"`calibrated: true`, but no calibration is fitted for {missing} with the "
                    "evaluator's current weights (a calibration belongs to an evaluator, its model "
                    "and a question's exact text): POST /v1/calibrations with labelled items first, "
                    "or leave `calibrated` out"
                )
        return Plan(questions=questions, evaluators=evaluators)

    def _calibration(self, evaluator: Evaluator, question: MetaQuestion) -> Calibration | None:
        """The calibration fitted for this evaluator and question, unless fitted on other weights."""
        fit = self.calibrations.get(evaluator.name, question.text)
        return fit if fit is not None and fit.model == evaluator.config.model else None

    def _questions(self, request: RewardRequest) -> list[MetaQuestion]:
        if request.questions is not None:
            return request.questions
        rubrics = self.settings.all_rubrics()
        assert request.rubric is not None
        rubric = rubrics.get(request.rubric)
        if rubric is None:
            raise InvalidRequest(
                f"unknown rubric {request.rubric!r}; available: {sorted(rubrics)} (GET /v1/rubrics)"
            )
        return rubric.questions

    def _evaluators(self, choices: list[EvaluatorChoice] | None) -> list[tuple[Evaluator, float]]:
        if choices is None:
            choices = [EvaluatorChoice(name=self.settings.default_evaluator_name)]
        return [(self.evaluator(choice.name), choice.weight) for choice in choices]

    def _check_item(self, index: int, item: Item, needs_reference: list[str]) -> None:
        prompt = item.prompt if isinstance(item.prompt, str) else "".join(m.content for m in item.prompt)
        fields = {"response": item.response, "reference": item.reference, "prompt": prompt}
        self.check_texts({f"items.{index}.{field}": text for field, text in fields.items()})
        if needs_reference and item.reference is None:
            raise InvalidRequest(
                f"items.{index} has no `reference`, which questions {needs_reference} require"
            )

    def tasks_for(
        self, evaluator: Evaluator, items: list[Item], questions: list[MetaQuestion]
    ) -> list[ScoringTask]:
        backend = evaluator.backend
        tasks = []
        for i, item in enumerate(items):
            config = evaluator.config
            task = build_task(
                backend.tokenizer, config.system_prompt, item, questions, config.chat_template_kwargs
            )
            longest = max(len(s) for s in task.sequences)
            if longest > backend.max_model_len:
                raise PayloadTooLarge(
                    f"items.{i} needs {longest} tokens with evaluator {evaluator.name!r}, "
                    f"whose limit is {backend.max_model_len}; shorten the prompt or response"
                )
            tasks.append(task)
        return tasks

    async def score(self, request: RewardRequest, tenant: str = "anonymous") -> RewardResponse:
        plan = self.plan(request)
        evaluations = len(request.items) * len(plan.questions) * len(plan.evaluators)
        async with self.admitted(tenant, evaluations):
            return await self._score(request, plan, tenant)

    def observe_run(
        self, request: RewardRequest, response: RewardResponse, tenant: str = "anonymous"
    ) -> str | None:
        """Give a run's scored request to the run monitor (and its probes); the run's alarm."""
        return None if self.probes is None else self.probes.observe(self, request, response, tenant)

    def questions(self, request: RewardRequest) -> list[MetaQuestion]:
        return self._questions(request)

    async def score_with(
        self, request: RewardRequest, items: list[Item], questions: list[MetaQuestion], tenant: str
    ) -> RewardResponse:
        """`items` scored on `questions` by `request`'s evaluators, without admission (probes)."""
        evaluators = self._evaluators(request.evaluators)
        return await self._score(
            RewardRequest(items=items, questions=questions), Plan(questions, evaluators), tenant
        )

    async def _score(self, request: RewardRequest, plan: Plan, tenant: str) -> RewardResponse:
        deadline = self.deadline()
        texts = len(request.items) * len(plan.questions)
        per_evaluator: list[list[ScoringTask]] = []
        for evaluator, _ in plan.evaluators:
            if texts > INLINE_RENDER_LIMIT:
                tasks = await asyncio.to_thread(self.tasks_for, evaluator, request.items, plan.questions)
            else:
                tasks = self.tasks_for(evaluator, request.items, plan.questions)
            per_evaluator.append(tasks)
        work = [
            (evaluator, task)
            for (evaluator, _), tasks in zip(plan.evaluators, per_evaluator, strict=True)
            for task in tasks
        ]
        tally = Tally()
        outcomes = await self.submit_all(work, deadline, tenant, tally)
        for outcome in outcomes:
            if isinstance(outcome, ServiceError):
                raise outcome
            if isinstance(outcome, BaseException):
                raise EvaluatorFailed(f"the evaluator failed on this request: {outcome}") from outcome
        results: list[TaskResult] = [o for o in outcomes if isinstance(o, TaskResult)]
        response = self._assemble(request, plan, per_evaluator, results)
        response.usage.deduplicated_evaluations = tally.deduplicated
        response.usage.cached_evaluations = tally.cached
        return response

    def _assemble(
        self,
        request: RewardRequest,
        plan: Plan,
        per_evaluator: list[list[ScoringTask]],
        results: list[TaskResult],
    ) -> RewardResponse:
        n = len(request.items)
        floor = self.settings.reward.logp_floor
        scores: list[list[QuestionScore]] = [[] for _ in range(n)]
        terms: list[list[tuple[float, float, float]]] = [[] for _ in range(n)]
        usage = Usage(evaluations=0, prompt_tokens=0, cached_prompt_tokens=0)
        for j, ((evaluator, v), tasks) in enumerate(zip(plan.evaluators, per_evaluator, strict=True)):
            low_masses = 0
            for i, (task, result) in enumerate(zip(tasks, results[j * n : (j + 1) * n], strict=True)):
                usage.evaluations += len(task.sequences)
                usage.prompt_tokens += task.prompt_tokens
                usage.cached_prompt_tokens += result.cached_prompt_tokens
                for question, label in zip(plan.questions, result.scores, strict=True):
                    logp = log_p_yes(label.logp_yes, label.logp_no)
                    terms[i].append((v, question.weight, logp))
                    mass = label.mass
                    low_mass = mass < evaluator.config.min_label_mass
                    low_masses += low_mass
                    fit = self._calibration(evaluator, question) if request.calibrated else None
                    scores[i].append(
                        QuestionScore(
                            evaluator=evaluator.name,
                            question=question.id,
                            p_yes=math.exp(logp),
                            logp_yes=label.logp_yes,
                            logp_no=label.logp_no,
                            weight=question.weight,
                            evaluator_weight=v,
                            label_mass=mass,
                            low_label_mass=low_mass,
                            p_yes_calibrated=None if fit is None else apply(fit.a, fit.b, math.exp(logp)),
                        )
                    )
            self.metrics.evaluations.labels(evaluator.name).inc(sum(len(t.sequences) for t in tasks))
            self.metrics.prompt_tokens.labels(evaluator.name).inc(sum(t.prompt_tokens for t in tasks))
            self.metrics.low_label_mass.labels(evaluator.name).inc(low_masses)
            self.metrics.cached_prompt_tokens.labels(evaluator.name).inc(
                sum(r.cached_prompt_tokens for r in results[j * n : (j + 1) * n])
            )
        item_results = [
            ItemResult(id=item.id, reward=weighted_reward(terms[i], floor), scores=scores[i])
            for i, item in enumerate(request.items)
        ]
        return RewardResponse(rewards=[r.reward for r in item_results], results=item_results, usage=usage)
