"""POST /v1/rewards: the reward contract (v1)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from rlme.client.wire import ErrorBody, RewardRequest, RewardResponse
from rlme.service.auth import PrincipalDep
from rlme.service.deps import ScorerDep

router = APIRouter(tags=["rewards"])
RUN_ALARM_HEADER = "x-rlme-run-alarm"

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
async def rewards(
    request: RewardRequest, scorer: ScorerDep, who: PrincipalDep, response: Response
) -> RewardResponse:
    """Score each item with every meta-question and evaluator; rewards in request order.

    With `run` (and `step`), the run monitor records the answer and the run's alarm comes
    back in the `x-rlme-run-alarm` header (ok / watch / alarm; GET /v1/runs/{run})."""
    answer = await scorer.score(request, who.tenant)
    alarm = scorer.observe_run(request, answer, who.tenant)
    if alarm is not None:
        response.headers[RUN_ALARM_HEADER] = alarm
    return answer
