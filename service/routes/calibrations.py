"""POST /v1/calibrations: fit p_yes calibrations from labelled items; GET lists them."""

from __future__ import annotations

from fastapi import APIRouter

from rlme.client.wire import CalibrationList, CalibrationRequest, ErrorBody, Item, RewardRequest
from rlme.service.auth import AdminDep, PrincipalDep
from rlme.service.calibration import fit_calibrations
from rlme.service.deps import ScorerDep
from rlme.service.errors import InvalidRequest, StoreUnavailable
from rlme.service.routes.rewards import ERRORS

router = APIRouter(tags=["calibration"])


@router.post("/v1/calibrations", responses={**ERRORS, 403: {"model": ErrorBody}})
async def calibrate(body: CalibrationRequest, scorer: ScorerDep, who: AdminDep) -> CalibrationList:
    """Score the labelled items, fit a Platt map per (evaluator, question) on all but a
    held-out share of each label, report ECE and Brier score before and after on the held-out
    items, and keep the maps: later requests with `calibrated: true` get `p_yes_calibrated`.
    A fit whose slope is not positive, or that makes both held-out ECE and Brier score worse,
    is answered with `accepted: false` and its `warning`, and not kept.
    Admin keys only (a calibration changes what every tenant's calibrated requests get)."""
    labels = [item.label for item in body.items]
    for value in (True, False):
        if labels.count(value) < 2:
            raise InvalidRequest(
                f"calibration needs at least 2 items labelled {value}; got {labels.count(value)}"
            )
    items = [Item.model_validate(item.model_dump(exclude={"label"})) for item in body.items]
    request = RewardRequest(
        items=items, questions=body.questions, rubric=body.rubric, evaluators=body.evaluator_choices()
    )
    if scorer.calibrations.store_error is not None:
        raise StoreUnavailable(scorer.calibrations.store_error)
    texts = {q.id: q.text for q in scorer.plan(request).questions}
    answer = await scorer.score(request, who.tenant)
    models = {name: e.config.model for name, e in scorer.pool.evaluators.items()}
    fits = fit_calibrations(answer.results, labels, texts, models, body.held_out_fraction)
    scorer.calibrations.put([fit for fit in fits if fit.accepted])
    return CalibrationList(calibrations=fits)


@router.get("/v1/calibrations")
async def calibrations(scorer: ScorerDep, who: PrincipalDep) -> CalibrationList:
    """The fitted calibrations, with the held-out ECE they were fitted with."""
    scorer.calibrations.refresh()
    return CalibrationList(calibrations=scorer.calibrations.all())
