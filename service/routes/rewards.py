"""POST /v1/rewards: the reward contract (v1)."""

from __future__ import annotations

from fastapi import APIRouter

from rlme.client.wire import ErrorBody, RewardRequest, RewardResponse
from rlme.service.auth import PrincipalDep
from rlme.service.deps import ScorerDep

router = APIRouter(tags=["rewards"])

ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in {
        401: "Missing, invalid or revoked API key.",
        413: "Too many items or questions, or a text too long.",
        422: "Invalid request: the message says what to fix.",
        429: "Queue full; honour Retry-After.",
        503: "Evaluator loading or service stopping; honour Retry-After.",
        504: "Waited in the queue past the deadline.",
    }.items()
}


@router.post("/v1/rewards", responses=ERRORS)
async def rewards(request: RewardRequest, scorer: ScorerDep, who: PrincipalDep) -> RewardResponse:
    """Score each item with every meta-question and evaluator; rewards in request order."""
    return await scorer.score(request, who.tenant)
