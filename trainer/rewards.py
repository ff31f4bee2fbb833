"""GRPO's reward (trainer/grpo.py): the service's (RLME), the rule's (RLVR) or their mixture,
with the metrics that show whether the evaluator tracks the truth; the run id the service's
run monitor knows a run by, and the monitor's alarm for it."""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path
from typing import Any, Literal, Protocol

import torch

from rlme.trainer.common import TASK_RULES, mean
from rlme.trainer.rules import NEEDS_REFERENCE, RULES


class RewardSettings(Protocol):
    """The fields of GRPO's TrainConfig (trainer/grpo.py) that its reward reads."""

    reward: Literal["rlme", "rlvr", "mixture", "r_align"]
    rlme_weight: float
    rlvr_weight: float
    rule: str | None
    data: str
    rubric: str | None
    questions: list[dict[str, Any]] | None
    evaluators: list[dict[str, Any]] | None
    mask_low_label_mass: bool
    run: str | None
    output_dir: str
    resume: str | None


def resolve_rule(cfg: RewardSettings, rows: list[dict[str, Any]]) -> str | None:
    """The rule responses are checked with (TrainConfig.rule); an error now if it cannot run."""
    has_references = all(r.get("reference") is not None for r in rows)
    if cfg.reward == "r_align":
        return "judge_verdict"
    rule = cfg.rule or TASK_RULES.get(cfg.data) or ("reference" if has_references else None)
    if rule in NEEDS_REFERENCE and not has_references:
        raise ValueError(f"the {rule!r} rule needs a 'reference' on every data row")
    if rule is None and reward_weights(cfg)[1] != 0:
        raise ValueError(f"the {cfg.reward!r} reward needs a rule: set `rule`, or a 'reference' on every row")
    return rule


def reward_weights(cfg: RewardSettings) -> tuple[float, float]:
    """(w_rlme, w_rlvr): the one place the reward mode is interpreted."""
    both = (cfg.rlme_weight, cfg.rlvr_weight)
    return {"rlme": (1.0, 0.0), "rlvr": (0.0, 1.0), "mixture": both, "r_align": both}[cfg.reward]


def meta_questions(client: Any, cfg: RewardSettings) -> list[Any]:
    """The meta-questions the service will ask (inline, or the rubric's), for metrics and references."""
    from rlme.client import MetaQuestion

    if cfg.questions is not None:
        return [MetaQuestion.model_validate(q) for q in cfg.questions]
    rubrics = {r.name: r.questions for r in client.rubrics().rubrics}
    if cfg.rubric not in rubrics:
        raise ValueError(f"rubric {cfg.rubric!r} is not on the service; it has {sorted(rubrics)}")
    return rubrics[cfg.rubric]


def compute_rewards(
    client: Any,
    cfg: RewardSettings,
    questions: list[Any],
    prompts: list[str],
    texts: list[str],
    references: list[str | None],
    anchored: list[bool],
    rule: str | None,
    step: int | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Rewards (B,) = w_rlme · service reward + w_rlvr · rule reward, and their metrics; NaN
    where a score has low label mass (`mask_low_label_mass`): group_advantages gives it 0.

    The rule check runs whenever there is a rule, also when it is not in the reward: it is
    the independent measure that shows whether the evaluator's reward tracks the truth.
    """
    w_rlme, w_rlvr = reward_weights(cfg)
    rewards = torch.zeros(len(texts))  # (B,)
    metrics: dict[str, float] = {}
    if w_rlme != 0:
        needs_reference = any(q.requires_reference for q in questions)
        items: list[dict[str, Any]] = [
            {"prompt": p, "response": y, "reference": ref if (anchor or needs_reference) else None}
            for p, y, ref, anchor in zip(prompts, texts, references, anchored, strict=True)
        ]
        inline = [q.model_dump() for q in questions] if cfg.questions is not None else None
        rubric = None if inline else cfg.rubric  # inline questions win over the rubric
        if rule is not None:  # the monitor measures how well p_yes agrees with the rule
            for item, y, ref in zip(items, texts, references, strict=True):
                item["rule_score"] = RULES[rule](y, ref)
        answer = client.rewards(
            items, questions=inline, rubric=rubric, evaluators=cfg.evaluators, run=run_id(cfg), step=step
        )
        rewards += w_rlme * torch.tensor(answer.rewards)
        metrics["reward/rlme/mean"] = mean(answer.rewards)
        # p_yes compares two answers the evaluator hardly gave: not a reward (NaN: advantage 0).
        unanswered = torch.tensor([any(s.low_label_mass for s in r.scores) for r in answer.results])  # (B,)
        metrics["reward/low_label_mass_frac"] = float(unanswered.float().mean())
        if cfg.mask_low_label_mass:
            rewards[unanswered] = math.nan
        metrics["usage/evaluations"] = float(answer.usage.evaluations)
        for q in dict.fromkeys(score.question for result in answer.results for score in result.scores):
            scores = [[s for s in result.scores if s.question == q] for result in answer.results]
            metrics[f"p_yes/{q}/mean"] = mean([s.p_yes for item in scores for s in item])
            # This question's share of the reward, Σ_j v_j w_k log p_yes (not floored, unlike the service's).
            terms = [sum(s.evaluator_weight * s.weight * math.log(max(s.p_yes, 1e-30)) for s in item)
                     for item in scores]  # fmt: skip
            metrics[f"reward/{q}/mean"] = mean(terms)
    if rule is not None:
        checks = [RULES[rule](y, ref) for y, ref in zip(texts, references, strict=True)]
        metrics["rlvr/accuracy"] = mean(checks)
        if w_rlvr != 0:
            rewards += w_rlvr * torch.tensor(checks)
            metrics["reward/rlvr/mean"] = mean(checks)
    elif w_rlvr != 0:
        raise ValueError("the rule reward needs a rule (see resolve_rule)")
    return rewards, metrics


def run_id(cfg: RewardSettings) -> str:
    """`run` as a run id the service accepts (train() fills it in when it is null)."""
    name = cfg.run or Path(cfg.output_dir).resolve().name
    cleaned = re.sub(r"[^A-Za-z0-9._:-]", "-", name).lstrip("._:-")[:64]
    return cleaned or "run"


def new_run_id(cfg: RewardSettings, out: Path) -> str:
    """The run id of an earlier run in `out` being resumed, else a new one: the folder's
    name and the start time, so two runs into one folder never share statistics."""
    previous = out / "config.json"
    if cfg.resume and previous.is_file():
        earlier = json.loads(previous.read_text()).get("run")
        if earlier:
            return str(earlier)
    return f"{Path(cfg.output_dir).resolve().name[:48]}-{time.strftime('%Y%m%d-%H%M%S')}"


def monitor_alarm(client: Any, cfg: RewardSettings) -> str | None:
    """The service's alarm for this run (ok / watch / alarm), None where it has no monitor."""
    from rlme.client import RLMEError

    try:
        return str(client.run_report(run_id(cfg)).alarm)
    except RLMEError:  # an older service, a test double, a hiccup: it is only a report
        return None
