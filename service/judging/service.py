"""Generative judges served like rewards: fill the template, generate, read the verdict.

A judge prompt is tokenised like every evaluation (caller text as text), then goes
through the evaluator's batcher twice, as two kinds of work:
1. a GenerationTask: the judge writes N rationales (batched with every concurrent
   request's work; continuous batching in vLLM and remote servers);
2. a ScoringTask: prompt + what the judge wrote up to its last verdict cue + the cue, one
   prefill per sample, reading the probability of each verdict label. Its samples share
   the prompt, so the prefix is computed once.
Nothing is made up: a judgment whose labels get almost no probability is flagged and not
scored; an item none of whose judgments can be scored is masked.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass

from rlme.client.wire.judges import (
    Battle,
    ComparisonRequest,
    ComparisonResponse,
    ComparisonResult,
    JudgedItem,
    JudgeTemplate,
    JudgeUsage,
    Judgment,
    JudgmentRequest,
    JudgmentResponse,
    MetaJudgmentRequest,
    MetaJudgmentResponse,
    OrderVerdict,
    Provenance,
    SamplingFields,
)
from rlme.service.backends.base import (
    Generation,
    GenerationResult,
    GenerationTask,
    LabelLogprobs,
    SamplingSettings,
    ScoringTask,
    TaskResult,
    Work,
)
from rlme.service.batcher import Outcome
from rlme.service.errors import DeadlineExceeded, InvalidRequest, PayloadTooLarge, ServiceError
from rlme.service.evaluators import Evaluator
from rlme.service.judging import battles as bt
from rlme.service.judging.templates import (
    ADDITIVE_5,
    DEFAULT_JUDGE,
    VerdictReading,
    check_placeholders,
    fill,
    split_verdict,
    template_sha256,
    verdict_reading,
)
from rlme.service.prompting import encode_text, tokenize_turn
from rlme.service.serving import ServingBase

_INLINE_RENDER_LIMIT = 16  # judge prompts tokenised on the event loop; more go to a thread


@dataclass(frozen=True)
class Reading:
    """One sample: what the judge wrote, and the log-prob of each label after its cue."""

    generation: Generation
    rationale: str
    parsed: str | None
    parse_error: str | None
    logps: tuple[float, ...]


@dataclass(frozen=True)
class Asked:
    """One judge prompt's samples, or why there are none."""

    readings: list[Reading]
    failure: ServiceError | Exception | None = None


@dataclass(frozen=True)
class Resolved:
    name: str
    template: JudgeTemplate
    evaluator: Evaluator
    reading: VerdictReading
    sampling: SamplingSettings
    samples: int

    def provenance(self) -> Provenance:
        return Provenance(
            judge=self.name,
            template_sha256=template_sha256(self.template),
            evaluator=self.evaluator.name,
            model=self.evaluator.config.model,
            model_generation=self.evaluator.generation,
        )


class JudgeService(ServingBase):
    # --- resolving a request -------------------------------------------------------------

    def resolve(self, request: SamplingFields, kind: str) -> Resolved:
        limits = self.settings.limits
        count = len(getattr(request, "items", None) or getattr(request, "pairs", None) or [])
        if count > limits.max_items:
            raise PayloadTooLarge(
                f"{count} items or pairs; at most {limits.max_items} per request (split the batch)"
            )
        if request.samples > limits.max_judge_samples:
            raise InvalidRequest(f"samples={request.samples}; at most {limits.max_judge_samples} per prompt")
        if request.template is not None:
            name, template = "inline", request.template
        else:
            name = request.judge or DEFAULT_JUDGE[kind]
            judges = self.settings.all_judges()
            if name not in judges:
                raise InvalidRequest(f"unknown judge {name!r}; available: {sorted(judges)} (GET /v1/judges)")
            template = judges[name]
        if template.kind != kind:
            raise InvalidRequest(f"judge {name!r} is a {template.kind} judge; this route needs a {kind} one")
        try:
            check_placeholders(template)
        except ValueError as exc:
            raise InvalidRequest(f"template: {exc}") from None
        if request.max_tokens is not None and request.max_tokens > limits.max_judge_tokens:
            raise InvalidRequest(f"max_tokens={request.max_tokens}; at most {limits.max_judge_tokens}")
        # The template's own default is capped by the server's limit rather than refused.
        max_tokens = request.max_tokens or min(template.max_tokens, limits.max_judge_tokens)
        evaluator = self.evaluator(request.evaluator)
        try:
            reading = verdict_reading(evaluator.backend.tokenizer, template.labels)
        except ValueError as exc:
            raise InvalidRequest(f"template labels: {exc}") from None
        sampling = SamplingSettings(
            max_tokens=max_tokens,
            temperature=request.temperature,
            top_p=request.top_p,
            stop=tuple(request.stop),
            seed=request.seed,
        )
        return Resolved(name, template, evaluator, reading, sampling, request.samples)

    # --- asking the judge ----------------------------------------------------------------

    async def ask(
        self, judge: Resolved, messages: list[str], tenant: str, route: str
    ) -> tuple[list[Asked], JudgeUsage]:
        started = time.perf_counter()
        evaluator, template = judge.evaluator, judge.template
        tokenizer, config = evaluator.backend.tokenizer, evaluator.config

        def tokenize_all() -> list[list[int]]:
            return [
                tokenize_turn(tokenizer, template.system_prompt, m, config.chat_template_kwargs)
                for m in messages
            ]

        prompts = (
            await asyncio.to_thread(tokenize_all) if len(messages) > _INLINE_RENDER_LIMIT else tokenize_all()
        )
        room = (
            evaluator.backend.max_model_len
            - judge.sampling.max_tokens
            - len(encode_text(tokenizer, template.cue))
        )
        for i, prompt in enumerate(prompts):
            if len(prompt) > room:
                raise PayloadTooLarge(
                    f"judge prompt {i} needs {len(prompt)} tokens + max_tokens {judge.sampling.max_tokens}; "
                    f"evaluator {evaluator.name!r} holds {evaluator.backend.max_model_len}: shorten the texts"
                )
        evaluations = 2 * judge.samples * len(prompts)  # a generation and a verdict read per sample
        async with self.admitted(tenant, evaluations):
            asked = await self._generate_and_read(judge, prompts, tenant)
        usage = JudgeUsage(
            generations=sum(len(a.readings) for a in asked),
            prompt_tokens=sum(len(p) for p in prompts),
            generated_tokens=sum(r.generation.tokens for a in asked for r in a.readings),
            verdict_reads=sum(len(a.readings) for a in asked),
        )
        self.metrics.generated_tokens.labels(evaluator.name).inc(usage.generated_tokens)
        if usage.generations:
            self.metrics.judgments.labels(evaluator.name, route).inc(usage.generations)
            per_judgment = (time.perf_counter() - started) / usage.generations
            self.metrics.judgment_seconds.labels(evaluator.name, route).observe(per_judgment)
        return asked, usage

    async def _generate_and_read(self, judge: Resolved, prompts: list[list[int]], tenant: str) -> list[Asked]:
        evaluator, template = judge.evaluator, judge.template
        tokenizer = evaluator.backend.tokenizer
        deadline = self.deadline()
        generated = await self._gather(
            ((evaluator, GenerationTask(tuple(p), judge.samples, judge.sampling, deadline)) for p in prompts),
            deadline,
            tenant,
        )
        reads: list[ScoringTask | None] = []
        texts: list[list[tuple[Generation, str, str | None, str | None]]] = []
        for prompt, outcome in zip(prompts, generated, strict=True):
            if not isinstance(outcome, GenerationResult):
                reads.append(None)
                texts.append([])
                continue
            sequences, split = [], []
            for sample in outcome.samples:
                rationale, parsed, error = split_verdict(sample.text, template.cue, template.labels)
                # What the judge wrote up to its last cue; a judge that never wrote one gets it appended.
                lead = rationale if template.cue in sample.text else rationale.rstrip() + "\n"
                sequences.append(
                    (*prompt, *encode_text(tokenizer, lead + template.cue + judge.reading.suffix))
                )
                split.append((sample, rationale, parsed, error))
            reads.append(ScoringTask.sharing(sequences, judge.reading.label_ids))
            texts.append(split)
        read = await self._gather(((evaluator, task) for task in reads if task is not None), deadline, tenant)
        results = iter(read)
        asked = []
        for task, outcome, split in zip(reads, generated, texts, strict=True):
            if task is None:
                asked.append(Asked([], _failure(outcome)))
                continue
            scored = next(results)
            if not isinstance(scored, TaskResult):
                asked.append(Asked([], _failure(scored)))
                continue
            readings = [
                Reading(sample, rationale, parsed, error, label.logps)
                for (sample, rationale, parsed, error), label in zip(split, scored.scores, strict=True)
            ]
            asked.append(Asked(readings))
        return asked

    async def _gather(
        self, work: Iterable[tuple[Evaluator, Work]], deadline: float, tenant: str
    ) -> list[Outcome | BaseException]:
        """Every submission's outcome; admission errors (429, 503) fail the whole request,
        other failures only their own item (its status says which)."""
        outcomes = await self.submit_all(work, deadline, tenant)
        for outcome in outcomes:
            if isinstance(outcome, ServiceError) and outcome.status_code in (429, 503):
                raise outcome
        return outcomes

    def judgment(self, judge: Resolved, reading: Reading) -> Judgment:
        template = judge.template
        mass = LabelLogprobs(reading.logps).mass
        top = max(reading.logps)
        weights = [math.exp(v - top) for v in reading.logps]
        probs = [w / sum(weights) for w in weights] if top > -math.inf else [0.0] * len(weights)
        values = template.label_values
        low = mass < judge.evaluator.config.min_label_mass
        expected = sum(v * p for v, p in zip(values, probs, strict=True)) if values is not None else None
        parsed_score = (
            values[template.labels.index(reading.parsed)] if values is not None and reading.parsed else None
        )
        return Judgment(
            rationale=reading.rationale,
            verdict_probs=dict(zip(template.labels, probs, strict=True)),
            label_mass=mass,
            expected_score=None if low else expected,
            parsed_verdict=reading.parsed,
            parsed_score=parsed_score,
            parse_error=reading.parse_error,
            status="low_label_mass" if low else "parse_failed" if reading.parsed is None else "ok",
            generated_tokens=reading.generation.tokens,
            finish_reason="length" if reading.generation.finish_reason == "length" else "stop",
        )

    # --- the three routes ----------------------------------------------------------------

    async def judgments(self, request: JudgmentRequest, tenant: str) -> JudgmentResponse:
        judge = self.resolve(request, "pointwise")
        for i, item in enumerate(request.items):
            self.check_texts({f"items.{i}.{k}": v for k, v in item.model_dump(exclude={"id"}).items()})
        messages = [
            fill(judge.template, {"prompt": it.prompt, "response": it.response, "reference": it.reference})
            for it in request.items
        ]
        asked, usage = await self.ask(judge, messages, tenant, "judgments")
        values = judge.template.label_values or [0.0, 1.0]
        low, high = min(values), max(values)
        results = []
        for item, one in zip(request.items, asked, strict=True):
            judgments = [self.judgment(judge, r) for r in one.readings]
            scores = [j.expected_score for j in judgments if j.expected_score is not None]
            score = sum(scores) / len(scores) if scores else None
            reward = score if request.reward == "expected" or score is None else (score - low) / (high - low)
            status, error = _status(judgments, one.failure)
            results.append(
                JudgedItem(
                    id=item.id,
                    status=status,
                    mask=score is None,
                    error=error,
                    score=score,
                    reward=reward,
                    judgments=judgments,
                )
            )
        return JudgmentResponse(
            rewards=[r.reward for r in results], results=results, provenance=judge.provenance(), usage=usage
        )

    async def comparisons(self, request: ComparisonRequest, tenant: str) -> ComparisonResponse:
        judge = self.resolve(request, "pairwise")
        messages = []
        for i, pair in enumerate(request.pairs):
            self.check_texts({f"pairs.{i}.{k}": v for k, v in pair.model_dump(exclude={"id"}).items()})
            a, b = pair.response_a, pair.response_b
            messages.append(fill(judge.template, {"prompt": pair.prompt, "response_a": a, "response_b": b}))
            messages.append(fill(judge.template, {"prompt": pair.prompt, "response_a": b, "response_b": a}))
        asked, usage = await self.ask(judge, messages, tenant, "comparisons")
        results = []
        for i, pair in enumerate(request.pairs):
            ab, ba = asked[2 * i], asked[2 * i + 1]
            orders = [
                self._order("ab", judge, ab, first_is_a=True),
                self._order("ba", judge, ba, first_is_a=False),
            ]
            ps = [o.p_a_better for o in orders if o.p_a_better is not None]
            p = sum(ps) / len(ps) if len(ps) == 2 else None
            agree = None if p is None else (ps[0] > 0.5) == (ps[1] > 0.5)
            status, error = _status(orders[0].judgments + orders[1].judgments, ab.failure or ba.failure)
            if p is None and status == "ok":
                status = "low_label_mass"
            results.append(
                ComparisonResult(
                    id=pair.id,
                    status=status,
                    mask=p is None,
                    error=error,
                    p_a_better=p,
                    orders_agree=agree,
                    orders=orders,
                )
            )
        return ComparisonResponse(results=results, provenance=judge.provenance(), usage=usage)

    def _order(self, order: str, judge: Resolved, asked: Asked, first_is_a: bool) -> OrderVerdict:
        judgments = [self.judgment(judge, r) for r in asked.readings]
        first, second = judge.template.labels
        p = _mean_prob(judgments, first if first_is_a else second)
        return OrderVerdict(order=order, p_a_better=p, judgments=judgments)  # type: ignore[arg-type]

    async def meta_judgments(self, request: MetaJudgmentRequest, tenant: str) -> MetaJudgmentResponse:
        judge = self.resolve(request, "meta")
        n = len(request.judgments)
        if n > self.settings.limits.max_meta_judgments:
            raise PayloadTooLarge(
                f"{n} judgments; at most {self.settings.limits.max_meta_judgments} per request"
            )
        if request.judgment_scores is not None and len(request.judgment_scores) != n:
            raise InvalidRequest(f"{len(request.judgment_scores)} judgment_scores for {n} judgments")
        texts: dict[str, str | None] = {"prompt": request.prompt, "response": request.response}
        self.check_texts({**texts, **{f"judgments.{i}": j for i, j in enumerate(request.judgments)}})
        order = [(m, k) for m in range(n) for k in range(n) if m != k]
        messages = [
            fill(
                judge.template,
                {**texts, "judgment_a": request.judgments[m], "judgment_b": request.judgments[k]},
            )
            for m, k in order
        ]
        asked, usage = await self.ask(judge, messages, tenant, "meta-judgments")
        label_first = judge.template.labels[0]
        fights, battles = [], []
        for (m, k), one in zip(order, asked, strict=True):
            judgments = [self.judgment(judge, r) for r in one.readings]
            p = _mean_prob(judgments, label_first)
            battles.append(Battle(first=m, second=k, p_first_better=p, judgments=judgments))
            if p is not None:
                fights.append(((m, k), p))
        all_judgments = [j for b in battles for j in b.judgments]
        status, error = _status(all_judgments, next((a.failure for a in asked if a.failure), None))
        scores_given: list[float | None] = [
            *(request.judgment_scores or map(_stated_score, request.judgments))
        ]
        outcome = dict(fights)
        complete = len(outcome) == len(order)
        if not complete and status == "ok":
            status = "low_label_mass"
        matrix = bt.battle_matrix(n, outcome) if complete else None
        strengths = bt.bradley_terry(matrix) if matrix is not None else None
        chosen = rejected = None
        if strengths is not None and max(strengths) - min(strengths) > 1e-9:
            chosen, rejected = strengths.index(max(strengths)), strengths.index(min(strengths))
        return MetaJudgmentResponse(
            status=status, mask=matrix is None, error=error,
            battles=battles, battle_matrix=matrix, scores=strengths,
            chosen=chosen, rejected=rejected,
            p_a_better=(outcome[(0, 1)] + 1 - outcome[(1, 0)]) / 2 if n == 2 and complete else None,
            position_bias=bt.position_bias(outcome) if complete else None,
            score_bias=bt.score_bias(outcome, scores_given) if complete else None,
            provenance=judge.provenance(), usage=usage,
        )  # fmt: skip


def _mean_prob(judgments: list[Judgment], label: str) -> float | None:
    """Mean P(label) over the judgments whose labels got enough probability to read."""
    usable = [j.verdict_probs[label] for j in judgments if j.status != "low_label_mass"]
    return sum(usable) / len(usable) if usable else None


def _failure(outcome: object) -> ServiceError | Exception:
    return outcome if isinstance(outcome, Exception) else RuntimeError(f"unexpected result {outcome!r}")


def _status(judgments: list[Judgment], failure: Exception | None) -> tuple[str, str | None]:
    if failure is not None:
        return ("timeout" if isinstance(failure, DeadlineExceeded) else "error"), str(failure)
    usable = [j for j in judgments if j.status != "low_label_mass"]
    if not usable:
        return "low_label_mass", None
    if all(j.parsed_verdict is None for j in usable):
        return "parse_failed", None
    return "ok", None


def _stated_score(judgment: str) -> float | None:
    """The score a judgment text states in the additive rubric's format, for the score bias."""
    _, parsed, _ = split_verdict(judgment, ADDITIVE_5.cue, ADDITIVE_5.labels)
    return float(parsed) if parsed is not None else None
