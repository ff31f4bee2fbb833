"""Per-step statistics of a training run's rewards: what the run monitor keeps.

One `StepStats` per (run, step): the items' rewards, response length and format, and per
(evaluator, question) the distribution of p_yes (a 20-bin histogram, so quantiles take
constant memory) and of the label mass. Pairs of (mean p_yes, rule_score) are kept for
the rule-agreement AUC, at most `MAX_RULE_PAIRS` per step. Anchored items scored again
without their reference, and canaries, add their own sums; a few samples (the
highest-rewarded responses, one canary per kind) are kept for the run's page. Everything
is JSON, so a step is one SQLite row; replicas that each saw part of a step merge their
parts (`StepStats.merged`) into what one replica would have seen.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from rlme.client.wire.runs import AnchorStep, CanaryStep, QuestionStep, RunStep, Sample

BINS = 20
MAX_RULE_PAIRS = 512
TOP_SAMPLES = 3  # highest-rewarded responses kept per step (and one canary per kind)
MIN_CLASS = 3  # passing and failing items a step needs for its rule AUC (fewer: too noisy)
# Bold/italic markers, headings, inline code, bullet and numbered list lines.
MARKDOWN = re.compile(r"\*\*|__|`|^\s{0,3}#{1,6}\s|^\s*[-*+]\s|^\s*\d+[.)]\s", re.M)


def repetition(text: str) -> float:
    """Share of the response's word 3-grams that repeat an earlier one (0: none)."""
    words = text.lower().split()
    grams = list(zip(words, words[1:], words[2:], strict=False))
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def auc(pairs: list[tuple[float, float]]) -> float | None:
    """P(score of a passing item > score of a failing one), ties counting half: the
    Mann-Whitney AUC of p_yes against rule_score >= 0.5, from mid-ranks (n log n). None
    without both classes."""
    passing = sum(rule >= 0.5 for _, rule in pairs)
    failing = len(pairs) - passing
    if not passing or not failing:
        return None
    order = sorted(range(len(pairs)), key=lambda i: pairs[i][0])
    ranks = [0.0] * len(pairs)
    start = 0
    while start < len(order):  # tied scores share their mean rank
        end = start
        while end + 1 < len(order) and pairs[order[end + 1]][0] == pairs[order[start]][0]:
            end += 1
        for k in range(start, end + 1):
            ranks[order[k]] = (start + end) / 2 + 1
        start = end + 1
    rank_sum = sum(r for r, (_, rule) in zip(ranks, pairs, strict=True) if rule >= 0.5)
    return (rank_sum - passing * (passing + 1) / 2) / (passing * failing)


@dataclass
class QuestionStats:
    evaluations: int = 0
    p_sum: float = 0.0
    hist: list[int] = field(default_factory=lambda: [0] * BINS)
    mass_sum: float = 0.0
    low: int = 0

    def add(self, p_yes: float, mass: float | None, low: bool) -> None:
        self.evaluations += 1
        self.p_sum += p_yes
        self.hist[min(BINS - 1, int(p_yes * BINS))] += 1
        self.mass_sum += 1.0 if mass is None else mass
        self.low += low

    def quantile(self, q: float) -> float:
        """From the histogram, linear within the bin that holds it."""
        target, seen = q * self.evaluations, 0
        for b, count in enumerate(self.hist):
            if count and seen + count >= target:
                return (b + (target - seen) / count) / BINS
            seen += count
        return 1.0

    def summary(self) -> QuestionStep:
        n = max(1, self.evaluations)
        quantiles = {f"p{int(q * 100)}": round(self.quantile(q), 4) for q in (0.1, 0.5, 0.9)}
        return QuestionStep(
            evaluations=self.evaluations,
            p_yes_mean=self.p_sum / n,
            p_yes_quantiles=quantiles,
            label_mass_mean=self.mass_sum / n,
            low_label_mass=self.low,
        )


@dataclass
class StepStats:
    items: int = 0
    reward_sum: float = 0.0
    chars_sum: int = 0
    markdown: int = 0
    repetition_sum: float = 0.0
    rule_pairs: list[tuple[float, float]] = field(default_factory=list)
    rule_items: int = 0
    rule_passes: int = 0
    questions: dict[str, QuestionStats] = field(default_factory=dict)
    # anchored items re-scored without their reference: count, sum of p_yes with and without
    anchor: list[float] = field(default_factory=lambda: [0, 0.0, 0.0])
    # canary kind -> [count, sum of canary p_yes, sum of the real responses' p_yes]
    canaries: dict[str, list[float]] = field(default_factory=dict)
    samples: list[dict[str, Any]] = field(default_factory=list)
    tenants: list[str] = field(default_factory=list)  # who tagged it, in files before per-tenant runs
    alarm: str | None = None  # the run's alarm as of this step
    alarm_at: float = 0.0  # when it was set: of several replicas' parts of a step, the latest wins

    def add_item(self, reward: float, response: str, p_mean: float, rule_score: float | None) -> None:
        self.items += 1
        self.reward_sum += reward
        self.chars_sum += len(response)
        self.markdown += bool(MARKDOWN.search(response))
        self.repetition_sum += repetition(response)
        if rule_score is not None:
            self.rule_items += 1
            self.rule_passes += rule_score >= 0.5
            if len(self.rule_pairs) < MAX_RULE_PAIRS:
                self.rule_pairs.append((p_mean, rule_score))

    def add_top(self, step: int, prompt: str, response: str, reward: float, p_mean: float) -> None:
        """Keep the step's TOP_SAMPLES highest-rewarded responses."""
        tops = [s for s in self.samples if s["kind"] == "top"]
        if len(tops) >= TOP_SAMPLES and reward <= min(s["reward"] for s in tops):
            return
        if len(tops) >= TOP_SAMPLES:
            self.samples.remove(min(tops, key=lambda s: s["reward"]))
        self.samples.append(_sample(step, "top", prompt, response, reward, p_mean))

    def add_anchor(self, anchored: float, unanchored: float) -> None:
        self.anchor[0] += 1
        self.anchor[1] += anchored
        self.anchor[2] += unanchored

    def add_canary(self, step: int, kind: str, prompt: str, canary: float, real: float, text: str) -> None:
        sums = self.canaries.setdefault(kind, [0, 0.0, 0.0])
        sums[0] += 1
        sums[1] += canary
        sums[2] += real
        if not any(s["kind"] == kind for s in self.samples):
            self.samples.append(_sample(step, kind, prompt, text, None, canary))

    def set_alarm(self, level: str, now: float) -> None:
        self.alarm, self.alarm_at = level, now

    @classmethod
    def merged(cls, parts: list[StepStats]) -> StepStats:
        """One step observed in parts (by several replicas) as one replica would have seen it:
        counts, sums and histograms add; rule pairs are taken in order up to MAX_RULE_PAIRS;
        the TOP_SAMPLES highest-rewarded responses and one canary sample per kind are kept;
        the alarm is the one set last."""
        if len(parts) == 1:
            return parts[0]
        out = cls()
        for part in parts:
            out.items += part.items
            out.reward_sum += part.reward_sum
            out.chars_sum += part.chars_sum
            out.markdown += part.markdown
            out.repetition_sum += part.repetition_sum
            out.rule_items += part.rule_items
            out.rule_passes += part.rule_passes
            out.rule_pairs.extend(part.rule_pairs[: MAX_RULE_PAIRS - len(out.rule_pairs)])
            for key, q in part.questions.items():
                mine = out.question(key)
                mine.evaluations += q.evaluations
                mine.p_sum += q.p_sum
                mine.hist = [a + b for a, b in zip(mine.hist, q.hist, strict=True)]
                mine.mass_sum += q.mass_sum
                mine.low += q.low
            out.anchor = [a + b for a, b in zip(out.anchor, part.anchor, strict=True)]
            for kind, sums in part.canaries.items():
                mine_sums = out.canaries.setdefault(kind, [0, 0.0, 0.0])
                out.canaries[kind] = [a + b for a, b in zip(mine_sums, sums, strict=True)]
            for sample in part.samples:
                if sample["kind"] != "top" and not any(s["kind"] == sample["kind"] for s in out.samples):
                    out.samples.append(sample)
            out.tenants.extend(t for t in part.tenants if t not in out.tenants)
            if part.alarm is not None and part.alarm_at >= out.alarm_at:
                out.alarm, out.alarm_at = part.alarm, part.alarm_at
        tops = sorted((s for part in parts for s in part.samples if s["kind"] == "top"), key=_rank)
        out.samples = tops[:TOP_SAMPLES] + out.samples
        return out

    def question(self, key: str) -> QuestionStats:
        return self.questions.setdefault(key, QuestionStats())

    def summary(self, step: int) -> RunStep:
        n = max(1, self.items)
        return RunStep(
            step=step,
            items=self.items,
            reward_mean=self.reward_sum / n,
            response_chars_mean=self.chars_sum / n,
            markdown_share=self.markdown / n,
            repetition_mean=self.repetition_sum / n,
            rule_auc=auc(self.rule_pairs) if min(self._classes()) >= MIN_CLASS else None,
            rule_pass_rate=self.rule_passes / self.rule_items if self.rule_items else None,
            rule_items=self.rule_items,
            rule_passes=self.rule_passes,
            alarm=self.alarm if self.alarm in ("ok", "watch", "alarm") else None,
            questions={key: q.summary() for key, q in sorted(self.questions.items())},
            anchor=_anchor_step(self.anchor),
            canaries={
                kind: CanaryStep(items=int(n), p_yes_mean=p / n, p_yes_real=real / n)
                for kind, (n, p, real) in sorted(self.canaries.items())
            },
        )

    def has(self, what: str) -> bool:
        """Whether this step has anchors, canaries or rule scores."""
        return bool({"anchor": self.anchor[0], "canaries": self.canaries, "rule": self.rule_items}[what])

    def _classes(self) -> tuple[int, int]:
        passing = sum(rule >= 0.5 for _, rule in self.rule_pairs)
        return passing, len(self.rule_pairs) - passing

    def sample_list(self) -> list[Sample]:
        """The highest-rewarded first, then one canary per kind (an order every replica agrees on)."""
        tops = sorted((s for s in self.samples if s["kind"] == "top"), key=_rank)
        canaries = sorted((s for s in self.samples if s["kind"] != "top"), key=lambda s: s["kind"])
        return [Sample(**s) for s in tops + canaries]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StepStats:
        """From a stored row (rows written before a field existed get its default)."""
        questions = {key: QuestionStats(**q) for key, q in data.pop("questions").items()}
        pairs = [(float(p), float(r)) for p, r in data.pop("rule_pairs")]
        if "rule_items" not in data:  # a row from before the counts were kept: its pairs say
            data["rule_items"], data["rule_passes"] = len(pairs), sum(r >= 0.5 for _, r in pairs)
        return cls(**data, rule_pairs=pairs, questions=questions)


def _rank(sample: dict[str, Any]) -> tuple[float, str, str]:
    return -sample["reward"], sample["prompt"], sample["response"]


def _anchor_step(sums: list[float]) -> AnchorStep | None:
    n, anchored, unanchored = sums
    if not n:
        return None
    return AnchorStep(
        items=int(n),
        p_yes_anchored=anchored / n,
        p_yes_unanchored=unanchored / n,
        gap=(unanchored - anchored) / n,
    )


def _sample(
    step: int, kind: str, prompt: str, response: str, reward: float | None, p_yes: float
) -> dict[str, Any]:
    return {
        "step": step,
        "kind": kind,
        "prompt": prompt[:300],
        "response": response[:600],
        "reward": reward,
        "p_yes": p_yes,
    }
