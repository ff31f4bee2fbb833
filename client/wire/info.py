"""What the service tells about itself and its errors: health, evaluators, rubrics, and the
JSON error body every 4xx/5xx carries."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from rlme.client.wire.rewards import MetaQuestion


class ErrorDetail(BaseModel):
    code: str = Field(description="Machine-readable, e.g. 'invalid_request', 'overloaded'.")
    message: str = Field(description="What went wrong and what to do about it.")
    retryable: bool = Field(description="Whether sending the same request again can help.")
    request_id: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


class EvaluatorInfo(BaseModel):
    name: str
    backend: str
    model: str
    loaded: bool
    yes_tokens: list[str]
    no_tokens: list[str]
    label_mass_at_load: float | None = Field(
        default=None,
        description="P(yes labels) + P(no labels) on a sample evaluation when the weights were "
        "loaded; far below 1 means the model answers with something else (see min_label_mass).",
    )


class EvaluatorList(BaseModel):
    default: str
    evaluators: list[EvaluatorInfo]


class RubricInfo(BaseModel):
    name: str
    description: str
    questions: list[MetaQuestion]


class RubricList(BaseModel):
    rubrics: list[RubricInfo]


class Health(BaseModel):
    status: Literal["ok", "loading", "error"]
    evaluators: dict[str, str] = Field(description="Evaluator name -> 'ok', 'loading' or an error.")
    stores: dict[str, str] = Field(
        default_factory=dict,
        description="Optional state files (runs, calibrations) -> 'ok' or why they are not used. A "
        "broken store degrades monitoring or calibration; rewards are still served.",
    )
