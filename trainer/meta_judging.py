"""Meta-Rewarding's calls to the service's judges (trainer/dpo.py): judging responses, the
judgments as the meta-judge reads them, the stated scores and their variance (which response's
judgments to battle), the frozen referee's win rate, and the start-up check of the judge and
evaluators the run needs."""

from __future__ import annotations

from typing import Any, Protocol


class JudgingSettings(Protocol):
    """The fields of MetaRewardingConfig (trainer/dpo.py) these calls read."""

    judge: str
    judgments: int
    judge_temperature: float
    judge_max_tokens: int
    judge_evaluator: str | None
    seed: int
    live_self: bool
    live_self_evaluator: str

    @property
    def referee(self) -> str | None: ...


def verdict_of(judgment: Any) -> str:
    """The judgment's most probable label."""
    return str(max(judgment.verdict_probs, key=judgment.verdict_probs.get))


def judgment_text(judgment: Any, cue: str) -> str:
    """A judgment as the meta-judge sees it and as the model learns to write it."""
    return f"{judgment.rationale.rstrip()}\n{cue} {verdict_of(judgment)}"


def judge_responses(client: Any, cfg: JudgingSettings, prompts: list[str], texts: list[str]) -> list[Any]:
    answer = client.judgments(
        [{"prompt": p, "response": y} for p, y in zip(prompts, texts, strict=True)],
        judge=cfg.judge,
        samples=cfg.judgments,
        temperature=cfg.judge_temperature if cfg.judgments > 1 else 0.0,
        max_tokens=cfg.judge_max_tokens,
        evaluator=cfg.judge_evaluator,
        seed=cfg.seed,
    )
    return list(answer.results)


def win_rate(client: Any, cfg: JudgingSettings, prompts: list[str], new: list[str], old: list[str]) -> float:
    """Mean P(new better than old) by the frozen evaluator, both orders."""
    pairs = [
        {"prompt": p, "response_a": a, "response_b": b} for p, a, b in zip(prompts, new, old, strict=True)
    ]
    results = client.compare(pairs, max_tokens=cfg.judge_max_tokens, evaluator=cfg.referee).results
    wins = [r.p_a_better for r in results if r.p_a_better is not None]
    return sum(wins) / len(wins) if wins else float("nan")


def stated_scores(result: Any, template: Any) -> list[float]:
    """The score each usable judgment of a response states (its most probable label's value)."""
    return [
        template.label_values[template.labels.index(verdict_of(j))]
        for j in result.judgments
        if j.expected_score is not None
    ]


def score_variance(scores: list[float]) -> float:
    """Population variance; 0 for fewer than two scores (the largest picks the judged response,
    as write-ups of the paper describe it)."""
    if len(scores) < 2:
        return 0.0
    mean = sum(scores) / len(scores)
    return sum((s - mean) ** 2 for s in scores) / len(scores)


def judge_template(client: Any, cfg: JudgingSettings) -> Any:
    """The configured judge's template; refused at start, not after an iteration, when the
    service lacks it or an evaluator the config names (live self reloads one evaluator and
    needs a frozen referee)."""
    have = {e.name for e in client.evaluators().evaluators}
    needed = {cfg.judge_evaluator, cfg.referee, cfg.live_self_evaluator if cfg.live_self else None} - {None}
    missing = sorted(str(name) for name in needed if name not in have)
    if missing:
        raise ValueError(
            f"the service at {client.base_url} has no evaluator {missing} (it has {sorted(have)}); "
            "for live self start it with examples/meta_rewarding_service.yaml, or set live_self: false"
        )
    judges = {j.name: j.template for j in client.judges().judges}
    if cfg.judge not in judges:
        raise ValueError(f"the service has no judge {cfg.judge!r} (GET /v1/judges)")
    return judges[cfg.judge]
