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
    questions: dict[str, QuestionStep]


class Signal(BaseModel):
    name: str
    level: Alarm
    value: float | None = Field(default=None, description="The measured quantity the level is read from.")
    detail: str


class RunReport(BaseModel):
    run: str
    alarm: Alarm
    signals: list[Signal]
    steps: list[RunStep] = Field(description="Steps in order (the last `max_steps` kept).")
