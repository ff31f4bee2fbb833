"""The reward contract: POST /v1/rewards (items, meta-questions, evaluators; rewards and
per-question scores). Limits that depend on the server's configuration (how many items,
how long a text) are checked by the service, not here."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from rlme.client.wire.base import MAX_INT64, MAX_NAME_CHARS, MAX_QUESTION_CHARS, MAX_WEIGHT, _Wire
from rlme.client.wire.runs import RUN_ID_PATTERN

Role = Literal["system", "user", "assistant", "tool"]


class ChatMessage(_Wire):
    role: Role
    content: str


class Item(_Wire):
    """One (prompt, response) pair to be judged."""

    prompt: str | list[ChatMessage] = Field(
        description="The prompt the generator answered: plain text or a list of chat messages."
    )
    response: str = Field(description="The generator's response to judge.")
    id: str | None = Field(default=None, max_length=256, description="Echoed back in the result.")
    reference: str | None = Field(
        default=None,
        description="Ground truth or context. When given, the evaluator is shown it "
        "before every question about this item.",
    )
    rule_score: float | None = Field(
        default=None,
        description="Optional: the caller's own rule/label check of this response (e.g. 1 = passes "
        "the verifier). Never shown to the evaluator; the run monitor measures how well p_yes "
        "agrees with it (docs/monitoring.md).",
    )

    @field_validator("prompt")
    @classmethod
    def _prompt_not_empty(cls, prompt: str | list[ChatMessage]) -> str | list[ChatMessage]:
        if isinstance(prompt, list) and not prompt:
            raise ValueError("a chat prompt needs at least one message")
        return prompt


class MetaQuestion(_Wire):
    """A yes/no question the evaluator answers about each item."""

    id: str = Field(min_length=1, max_length=MAX_NAME_CHARS, description="Names the question in results.")
    text: str = Field(
        min_length=1, max_length=MAX_QUESTION_CHARS, description="The question, e.g. 'Is the answer correct?'"
    )
    weight: float = Field(
        default=1.0,
        ge=-MAX_WEIGHT,
        le=MAX_WEIGHT,
        description="w_k in r = sum v_j w_k log p_yes. Negative weights penalise a 'Yes'.",
    )
    requires_reference: bool = Field(
        default=False, description="Reject items without a `reference` for this question."
    )


class EvaluatorChoice(_Wire):
    name: str = Field(
        min_length=1, max_length=MAX_NAME_CHARS, description="A configured evaluator (GET /v1/evaluators)."
    )
    weight: float = Field(default=1.0, ge=0.0, le=MAX_WEIGHT, description="v_j in r = sum v_j w_k log p_yes.")


class RewardRequest(_Wire):
    items: list[Item] = Field(min_length=1, description="The (prompt, response) pairs to score.")
    questions: list[MetaQuestion] | None = Field(
        default=None, description="Inline meta-questions. Give these or `rubric`, not both."
    )
    rubric: str | None = Field(
        default=None,
        max_length=MAX_NAME_CHARS,
        description="A named server-side set of questions (GET /v1/rubrics).",
    )
    evaluators: list[EvaluatorChoice] | None = Field(
        default=None, description="Evaluators and their weights; default: the default evaluator."
    )
    run: str | None = Field(
        default=None,
        pattern=RUN_ID_PATTERN,
        description="Optional training-run id: the service keeps per-step statistics of this run's "
        "rewards and raises an alarm when they stop meaning what they meant (GET /v1/runs/{run}). "
        "A run belongs to the caller's tenant: another tenant's run of the same id is another run.",
    )
    step: int | None = Field(
        default=None, ge=0, le=MAX_INT64, description="The run's training step (with `run`)."
    )
    calibrated: bool | None = Field(
        default=None,
        description="Add `p_yes_calibrated` to each score from the calibration fitted for its "
        "(evaluator, question) (POST /v1/calibrations); the raw p_yes and the reward are unchanged.",
    )

    @model_validator(mode="after")
    def _questions_xor_rubric(self) -> RewardRequest:
        if self.questions is None and self.rubric is None:
            raise ValueError("give either `questions` (a list) or `rubric` (a name)")
        if self.questions is not None and self.rubric is not None:
            raise ValueError("give either `questions` or `rubric`, not both")
        if self.questions is not None:
            if not self.questions:
                raise ValueError("`questions` is empty; give at least one meta-question")
            _no_duplicates([q.id for q in self.questions], "question id")
        if self.evaluators is not None:
            if not self.evaluators:
                raise ValueError("`evaluators` is empty; leave it out to use the default")
            _no_duplicates([e.name for e in self.evaluators], "evaluator name")
        if self.step is not None and self.run is None:
            raise ValueError("`step` needs a `run` id")
        return self


def _no_duplicates(names: list[str], what: str) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"duplicate {what} {name!r}; each must be unique")
        seen.add(name)


class QuestionScore(BaseModel):
    evaluator: str
    question: str
    p_yes: float = Field(description="P(yes) / (P(yes) + P(no)) over the label variants.")
    logp_yes: float = Field(description="Full-vocabulary log-prob of the yes labels.")
    logp_no: float = Field(description="Full-vocabulary log-prob of the no labels.")
    weight: float = Field(description="The question's weight w_k.")
    evaluator_weight: float = Field(default=1.0, description="The evaluator's weight v_j.")
    label_mass: float | None = Field(
        default=None,
        description="P(yes labels) + P(no labels) over the full vocabulary: how much the evaluator "
        "answers yes/no at all. Absent from servers older than this field.",
    )
    low_label_mass: bool = Field(
        default=False,
        description="label_mass is below the evaluator's `min_label_mass`: p_yes then compares two "
        "answers the evaluator hardly gives; look at the item before trusting its reward.",
    )
    p_yes_calibrated: float | None = Field(
        default=None,
        exclude_if=lambda v: v is None,
        description="Only with `calibrated: true`: p_yes through the fitted calibration.",
    )


class ItemResult(BaseModel):
    id: str | None
    reward: float
    scores: list[QuestionScore]


class Usage(BaseModel):
    evaluations: int
    prompt_tokens: int
    cached_prompt_tokens: int
    deduplicated_evaluations: int = Field(
        default=0,
        description="Evaluations identical to another in flight (in this request or one beside it), "
        "computed once and shared.",
    )
    cached_evaluations: int = Field(
        default=0, description="Evaluations served from the reward cache (`cache.enabled`), not computed."
    )


class RewardResponse(BaseModel):
    rewards: list[float]
    results: list[ItemResult]
    usage: Usage
