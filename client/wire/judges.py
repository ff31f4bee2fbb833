"""Wire models of the generative-judge routes: /v1/judgments, /v1/comparisons,
/v1/meta-judgments and /v1/judges. Re-exported by `rlme.client.wire`.

A judge writes a rationale, then its verdict is read twice: as text (`parsed_verdict`,
what the judge wrote after its cue) and as the evaluator's probability of each verdict
label right after the cue (`verdict_probs`), which cannot fail to parse. A judgment whose
labels get almost no probability is flagged, never scored.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, model_validator

from rlme.client.wire.base import (
    MAX_INT64,
    MAX_LABEL_CHARS,
    MAX_NAME_CHARS,
    MAX_STOP_CHARS,
    MAX_WEIGHT,
    _Wire,
)

JudgeKind = Literal["pointwise", "pairwise", "meta"]
# Placeholders each kind of template must use ({reference} is optional for pointwise).
PLACEHOLDERS: dict[str, tuple[str, ...]] = {
    "pointwise": ("prompt", "response"),
    "pairwise": ("prompt", "response_a", "response_b"),
    "meta": ("prompt", "response", "judgment_a", "judgment_b"),
}
OPTIONAL_PLACEHOLDERS: dict[str, tuple[str, ...]] = {"pointwise": ("reference",), "pairwise": (), "meta": ()}


class JudgeTemplate(_Wire):
    """A judge: how it is asked, the cue its verdict follows, and the verdict labels."""

    kind: JudgeKind = Field(
        "pointwise", description="pointwise (a score), pairwise (A/B) or meta (judgment A/B)."
    )
    description: str = ""
    system_prompt: str = Field(min_length=1, max_length=4000)
    template: str = Field(
        min_length=1,
        max_length=8000,
        description="The judge's instructions with {placeholders}: pointwise {prompt} {response} "
        "[{reference}]; pairwise {prompt} {response_a} {response_b}; meta {prompt} {response} "
        "{judgment_a} {judgment_b}. Write '{{' and '}}' for literal braces.",
    )
    cue: str = Field("Score:", min_length=1, max_length=40, description="The verdict follows this text.")
    labels: list[str] = Field(
        default_factory=lambda: ["1", "2", "3", "4", "5"],
        min_length=2,
        max_length=20,
        description="Verdicts, each one token for the evaluator's tokenizer (never one of its special "
        f"tokens; at most {MAX_LABEL_CHARS} characters). Pairwise and meta: the first names the "
        "first-shown candidate, the second the other.",
    )
    label_values: list[float] | None = Field(
        None, description="Pointwise: the number each label stands for; default: the label read as a number."
    )
    max_tokens: int = Field(
        256, ge=1, le=MAX_INT64, description="Default length limit of the rationale, in tokens."
    )

    @model_validator(mode="after")
    def _consistent(self) -> JudgeTemplate:
        if len(set(self.labels)) != len(self.labels):
            raise ValueError("`labels` has duplicates")
        for label in self.labels:
            if not label.strip() or len(label) > MAX_LABEL_CHARS:
                raise ValueError(
                    f"each label is a word of 1 to {MAX_LABEL_CHARS} characters, got {label[:40]!r}"
                )
        if self.kind != "pointwise" and len(self.labels) != 2:
            raise ValueError(f"a {self.kind} judge has exactly two labels (first shown, second shown)")
        if self.kind == "pointwise":
            if self.label_values is None:
                try:
                    self.label_values = [float(label) for label in self.labels]
                except ValueError:
                    raise ValueError("labels that are not numbers need `label_values`") from None
            if len(self.label_values) != len(self.labels):
                raise ValueError("`label_values` needs one number per label")
            if any(abs(v) > MAX_WEIGHT for v in self.label_values):
                raise ValueError(f"`label_values` must lie within +-{MAX_WEIGHT:g}")
            if len(set(self.label_values)) < 2:
                raise ValueError("`label_values` must not all be equal: the score would say nothing")
        return self


class SamplingFields(_Wire):
    samples: int = Field(1, ge=1, le=MAX_INT64, description="Judgments per prompt (the server caps it).")
    temperature: float = Field(0.0, ge=0, le=2, description="0 = greedy.")
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int | None = Field(
        None, ge=1, le=MAX_INT64, description="Rationale length limit; default: the template's."
    )
    stop: list[str] = Field(
        default_factory=list,
        max_length=4,
        description=f"Extra stop strings (at most 4, each 1 to {MAX_STOP_CHARS} characters).",
    )
    seed: int | None = Field(
        None, ge=0, le=MAX_INT64, description="Makes sampled judgments reproducible (0 to 2**63 - 1)."
    )
    judge: str | None = Field(
        None,
        max_length=MAX_NAME_CHARS,
        description="A named judge (GET /v1/judges). Give this or `template`.",
    )
    template: JudgeTemplate | None = Field(None, description="An inline judge instead of a named one.")
    evaluator: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_NAME_CHARS,
        description="Which evaluator judges; default: the default one.",
    )

    @model_validator(mode="after")
    def _judge_xor_template(self) -> SamplingFields:
        if self.judge is not None and self.template is not None:
            raise ValueError("give either `judge` (a name) or `template`, not both")
        if any(not s or len(s) > MAX_STOP_CHARS for s in self.stop):
            raise ValueError(f"each `stop` string has 1 to {MAX_STOP_CHARS} characters")
        return self


class JudgedItemInput(_Wire):
    prompt: str = Field(description="The prompt that was answered (chat prompts: flatten them first).")
    response: str
    id: str | None = None
    reference: str | None = Field(None, description="Shown to templates that use {reference}.")


class JudgmentRequest(SamplingFields):
    items: list[JudgedItemInput] = Field(min_length=1)
    reward: Literal["expected", "normalized"] = Field(
        "expected",
        description="`reward` per item: the mean expected score, or that mean mapped to [0, 1] "
        "between the lowest and highest label value.",
    )


class Judgment(BaseModel):
    """One written judgment and how its verdict was read."""

    rationale: str = Field(description="What the judge wrote before its last verdict cue.")
    verdict_probs: dict[str, float] = Field(
        description="P(label) after the cue, over the labels (sums to 1)."
    )
    label_mass: float = Field(description="Full-vocabulary probability of all labels after the cue.")
    expected_score: float | None = Field(description="Pointwise: sum of value x probability.")
    parsed_verdict: str | None = Field(description="The label the judge itself wrote after its cue.")
    parsed_score: float | None = Field(description="Pointwise: parsed_verdict's value.")
    parse_error: str | None = Field(description="Why no verdict was parsed from the text, if none was.")
    status: Literal["ok", "parse_failed", "low_label_mass"]
    generated_tokens: int
    finish_reason: Literal["stop", "length"]


ItemStatus = Literal["ok", "parse_failed", "low_label_mass", "timeout", "error"]


class Provenance(BaseModel):
    """What produced a response, so a run can be reproduced."""

    judge: str = Field(description="The judge's name, or 'inline'.")
    template_sha256: str = Field(description="Hash of the judge template as used.")
    evaluator: str
    model: str
    model_generation: int = Field(description="How many times the evaluator's weights were reloaded.")


class JudgeUsage(BaseModel):
    generations: int
    prompt_tokens: int
    generated_tokens: int
    verdict_reads: int


class ItemOutcome(BaseModel):
    status: ItemStatus = Field(
        description="ok; parse_failed (scored from the probabilities, the text stated no verdict); "
        "low_label_mass, timeout or error (no score: mask the sample)."
    )
    mask: bool = Field(description="True when a trainer should drop this sample: there is no score.")
    error: str | None = None


class JudgedItem(ItemOutcome):
    id: str | None
    score: float | None = Field(description="Mean expected score of the usable judgments.")
    reward: float | None
    judgments: list[Judgment]


class JudgmentResponse(BaseModel):
    rewards: list[float | None]
    results: list[JudgedItem]
    provenance: Provenance
    usage: JudgeUsage


class Pair(_Wire):
    prompt: str
    response_a: str
    response_b: str
    id: str | None = None


class ComparisonRequest(SamplingFields):
    pairs: list[Pair] = Field(min_length=1)


class OrderVerdict(BaseModel):
    order: Literal["ab", "ba"] = Field(description="ab: response_a shown first.")
    p_a_better: float | None = Field(description="This order's mean P(response_a is better).")
    judgments: list[Judgment] = Field(description="verdict_probs are over the shown positions.")


class ComparisonResult(ItemOutcome):
    id: str | None
    p_a_better: float | None = Field(description="Mean of both orders: position bias cancels.")
    orders_agree: bool | None = Field(description="Both orders prefer the same response.")
    orders: list[OrderVerdict]


class ComparisonResponse(BaseModel):
    results: list[ComparisonResult]
    provenance: Provenance
    usage: JudgeUsage


class MetaJudgmentRequest(SamplingFields):
    prompt: str
    response: str
    judgments: list[str] = Field(min_length=2, max_length=16, description="Judgments of `response` to rank.")
    judgment_scores: list[float] | None = Field(
        None, description="Each judgment's score, for the score-bias measure; default: parsed from its text."
    )


class Battle(BaseModel):
    first: int = Field(description="Index of the judgment shown as A.")
    second: int
    p_first_better: float | None
    judgments: list[Judgment]


class MetaJudgmentResponse(ItemOutcome):
    battles: list[Battle]
    battle_matrix: list[list[float]] | None = Field(
        description="B[m][n]: position-weighted wins of judgment m over n (Meta-Rewarding's weights)."
    )
    scores: list[float] | None = Field(description="Bradley-Terry strength of each judgment.")
    chosen: int | None
    rejected: int | None
    p_a_better: float | None = Field(description="With two judgments: P(the first is better), both orders.")
    position_bias: float | None = Field(
        description="Share of the wins that went to the first-shown judgment."
    )
    score_bias: float | None = Field(
        description="Among battles of judgments with different scores, the share won by the higher score."
    )
    provenance: Provenance
    usage: JudgeUsage


class JudgeInfo(BaseModel):
    name: str
    template: JudgeTemplate
    template_sha256: str


class JudgeList(BaseModel):
    judges: list[JudgeInfo]
