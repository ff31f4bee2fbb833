"""Wire models of the run monitor: GET /v1/runs/{run}. Re-exported by `rlme.client.wire`.

A training run tags its reward requests with `run` and `step`; the service keeps per-step
statistics of what it answered and reads hacking signals from them (docs/monitoring.md).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

Alarm = Literal["ok", "watch", "alarm"]
RUN_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$"


class QuestionStep(BaseModel):
    evaluations: int
    p_yes_mean: float
    p_yes_quantiles: dict[str, float] = Field(description="p10, p50, p90 of p_yes (20-bin histogram).")
    label_mass_mean: float
    low_label_mass: int = Field(description="Scores below the evaluator's min_label_mass.")


class AnchorStep(BaseModel):
    items: int = Field(description="Anchored items (with a `reference`) scored again without it.")
    p_yes_anchored: float = Field(description="Their mean p_yes as the caller asked (reference shown).")
    p_yes_unanchored: float = Field(description="Their mean p_yes without the reference.")
    gap: float = Field(description="p_yes_unanchored - p_yes_anchored: 'Yes' the evaluator gives unchecked.")


class CanaryStep(BaseModel):
    items: int
    p_yes_mean: float = Field(description="Mean p_yes of the canaries (same questions and evaluators).")
    p_yes_real: float = Field(description="Mean p_yes of the real responses they were made from.")


class RunStep(BaseModel):
    step: int
    items: int
    reward_mean: float
    response_chars_mean: float
    markdown_share: float = Field(description="Share of responses with markdown (**, #, `, lists).")
    repetition_mean: float = Field(description="Mean share of repeated word 3-grams in a response.")
    rule_auc: float | None = Field(
        default=None, description="AUC of p_yes against the items' rule_score (when they carry one)."
    )
    rule_pass_rate: float | None = Field(
        default=None, description="Share of the items whose rule_score is >= 0.5 (when they carry one)."
    )
    rule_items: int = Field(default=0, description="Items that carried a rule_score.")
    rule_passes: int = Field(default=0, description="... of which rule_score >= 0.5.")
    alarm: Alarm | None = Field(default=None, description="The run's alarm as of this step (its history).")
    questions: dict[str, QuestionStep]
    anchor: AnchorStep | None = Field(
        default=None, description="Anchored items scored again without their reference (anchor divergence)."
    )
    canaries: dict[str, CanaryStep] = Field(
        default_factory=dict, description="Per canary kind: degenerate rewrites of this step's responses."
    )


class Signal(BaseModel):
    name: str
    level: Alarm
    value: float | None = Field(default=None, description="The measured quantity the level is read from.")
    detail: str
    change: bool = Field(
        default=True,
        description="The level reports a change since the run's start (two such watches make an "
        "alarm); false: a state of the evaluator (e.g. it never told canaries apart).",
    )


class Sample(BaseModel):
    step: int
    kind: str = Field(description="'top' (a highest-rewarded response) or a canary kind.")
    prompt: str = Field(description="Truncated to 300 characters.")
    response: str = Field(description="Truncated to 600 characters.")
    reward: float | None = Field(default=None, description="The reward it was given (real responses).")
    p_yes: float = Field(description="Mean p_yes over its questions and evaluators.")


class RunReport(BaseModel):
    run: str
    alarm: Alarm
    first_alarm_step: int | None = Field(
        default=None,
        description="The first step at which the run's alarm was 'alarm', even if it went down since.",
    )
    signals: list[Signal]
    steps: list[RunStep] = Field(description="Steps in order (the last `max_steps` kept).")
    samples: list[Sample] = Field(
        default_factory=list,
        description="The highest-rewarded responses and the canaries of the last `window` steps "
        "(only of steps the caller's tenant tagged, unless an admin asks).",
    )
