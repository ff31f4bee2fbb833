"""The generative-judge routes: POST /v1/judgments, /v1/comparisons, /v1/meta-judgments;
GET /v1/judges. Same auth, quotas, fair share, limits and errors as /v1/rewards."""

from __future__ import annotations

from fastapi import APIRouter

from rlme.client.wire import (
    ComparisonRequest,
    ComparisonResponse,
    JudgeInfo,
    JudgeList,
    JudgmentRequest,
    JudgmentResponse,
    MetaJudgmentRequest,
    MetaJudgmentResponse,
)
from rlme.service.auth import PrincipalDep
from rlme.service.deps import JudgeDep, SettingsDep
from rlme.service.judging.templates import template_sha256
from rlme.service.routes.rewards import ERRORS

router = APIRouter(tags=["judges"])


@router.post("/v1/judgments", responses=ERRORS)
async def judgments(request: JudgmentRequest, judge: JudgeDep, who: PrincipalDep) -> JudgmentResponse:
    """Pointwise: N written judgments per item, each with its verdict distribution and score."""
    return await judge.judgments(request, who.tenant)


@router.post("/v1/comparisons", responses=ERRORS)
async def comparisons(request: ComparisonRequest, judge: JudgeDep, who: PrincipalDep) -> ComparisonResponse:
    """Pairwise: each pair judged in both orders (A,B) and (B,A); p_a_better averages them."""
    return await judge.comparisons(request, who.tenant)


@router.post("/v1/meta-judgments", responses=ERRORS)
async def meta_judgments(
    request: MetaJudgmentRequest, judge: JudgeDep, who: PrincipalDep
) -> MetaJudgmentResponse:
    """Meta-judge: every pair of the given judgments in both orders, position-corrected,
    Bradley-Terry scores, the (chosen, rejected) pair, and the meta-judge's biases."""
    return await judge.meta_judgments(request, who.tenant)


@router.get("/v1/judges", tags=["info"])
async def judges(settings: SettingsDep) -> JudgeList:
    """The named judge templates (built-in and configured)."""
    return JudgeList(
        judges=[
            JudgeInfo(name=name, template=template, template_sha256=template_sha256(template))
            for name, template in sorted(settings.all_judges().items())
        ]
    )
