"""Rubrics: what one is (RubricConfig), and those shipped with rlme, named sets of
meta-questions and their weights. Below the settings, which import both.

The first four carry the meta-questions reported in the RLME paper (Rentschler &
Roberts, 2026): correctness, logical derivation (against post-hoc rationalisation),
a length constraint for controllable trade-offs, and faithfulness to a given context.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from rlme.client.wire import MetaQuestion


class RubricConfig(BaseModel):
    """A named set of meta-questions (`rubrics:` in the settings; GET /v1/rubrics)."""

    model_config = ConfigDict(extra="forbid")
    description: str = ""
    questions: list[MetaQuestion] = Field(min_length=1)


CORRECT = MetaQuestion(id="correct", text="Is the answer correct?")
LOGICAL = MetaQuestion(
    id="logical",
    text="Does the whole solution logically lead from the question to an answer?",
)
LENGTH = MetaQuestion(id="length", text="Is the length of the response between 200 and 500 characters?")
SUPPORTED = MetaQuestion(
    id="supported",
    text="Is the answer supported by the context, regardless of whether it seems right or wrong?",
    requires_reference=True,
)

BUILTIN_RUBRICS: dict[str, RubricConfig] = {
    "correctness": RubricConfig(description="Is the answer correct?", questions=[CORRECT]),
    "rlme_math": RubricConfig(
        description="RLME's math rubric: correct, and derived rather than rationalised.",
        questions=[CORRECT, LOGICAL],
    ),
    "correct_and_length": RubricConfig(
        description="Correctness traded off against a 200-500 character length target.",
        questions=[CORRECT, LENGTH.model_copy(update={"weight": 0.5})],
    ),
    "grounded": RubricConfig(
        description="Faithfulness to the item's `reference` context (required).",
        questions=[SUPPORTED],
    ),
    "polite": RubricConfig(
        description="Tone: polite and helpful.",
        questions=[
            MetaQuestion(id="polite", text="Is the response polite?"),
            MetaQuestion(id="helpful", text="Is the response helpful?"),
        ],
    ),
}
