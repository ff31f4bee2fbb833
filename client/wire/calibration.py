"""Wire models of calibration: POST/GET /v1/calibrations. Re-exported by `rlme.client.wire`.

A calibration maps an evaluator's raw p_yes for one question to a probability that
matches how often the answer is really "yes" on labelled items (Platt scaling on the
logit). Requests with `calibrated: true` get `p_yes_calibrated` beside the raw `p_yes`.
"""

from __future__ import annotations

from pydantic import BaseModel, Field, model_validator

from rlme.client.wire.base import MAX_NAME_CHARS, _Wire
from rlme.client.wire.rewards import EvaluatorChoice, Item, MetaQuestion, _no_duplicates


class LabelledItem(Item):
    label: bool = Field(description="The true answer to the questions for this item (True: 'yes').")


class CalibrationRequest(_Wire):
    items: list[LabelledItem] = Field(min_length=8, description="Labelled items; both labels needed.")
    questions: list[MetaQuestion] | None = Field(default=None, description="Or `rubric`.")
    rubric: str | None = Field(default=None, max_length=MAX_NAME_CHARS)
    evaluator: str | None = Field(
        default=None, min_length=1, max_length=MAX_NAME_CHARS, description="Default: the default evaluator."
    )
    held_out_fraction: float = Field(
        default=0.25, gt=0, lt=1, description="Share of each label's items kept out of the fit, for ECE."
    )

    @model_validator(mode="after")
    def _questions_xor_rubric(self) -> CalibrationRequest:
        if (self.questions is None) == (self.rubric is None):
            raise ValueError("give either `questions` (a list) or `rubric` (a name)")
        if self.questions is not None:
            if not self.questions:
                raise ValueError("`questions` is empty")
            _no_duplicates([q.id for q in self.questions], "question id")
        return self

    def evaluator_choices(self) -> list[EvaluatorChoice] | None:
        return None if self.evaluator is None else [EvaluatorChoice(name=self.evaluator)]


class Calibration(BaseModel):
    evaluator: str
    model: str = Field(description="The evaluator's weights when fitted: reloading others makes it stale.")
    question: str = Field(description="The question's text: what a calibration is looked up by.")
    question_id: str
    a: float = Field(description="p_yes_calibrated = sigmoid(a * logit(p_yes) + b).")
    b: float
    train_items: int
    held_out_items: int
    ece_before: float = Field(
        description="Expected calibration error of the raw p_yes on the held-out items."
    )
    ece_after: float = Field(description="... of p_yes_calibrated (10 equal-width bins).")
    brier_before: float
    brier_after: float
    fitted_at: float = Field(description="Unix time.")
    accepted: bool = Field(
        default=True,
        description="Kept and applied to `calibrated: true` requests. False: the fit was refused (its "
        "slope is not positive, or both held-out ECE and Brier got worse; `warning` says which) and "
        "the previous calibration, if any, stays.",
    )
    warning: str | None = Field(
        default=None, description="Why a fit was refused, or what got worse on the held-out items."
    )


class CalibrationList(BaseModel):
    calibrations: list[Calibration]
