"""POST /v1/calibrations: fit p_yes calibrations from labelled items; GET lists them."""

from __future__ import annotations

import time

from fastapi import APIRouter

from rlme.client.wire import Calibration, CalibrationList, CalibrationRequest, ErrorBody, Item, RewardRequest
from rlme.service.auth import AdminDep, PrincipalDep
from rlme.service.calibration import apply, brier, ece, fit_platt, held_out_split
from rlme.service.deps import ScorerDep
from rlme.service.errors import InvalidRequest
from rlme.service.routes.rewards import ERRORS

router = APIRouter(tags=["calibration"])


@router.post("/v1/calibrations", responses={**ERRORS, 403: {"model": ErrorBody}})
async def calibrate(body: CalibrationRequest, scorer: ScorerDep, who: AdminDep) -> CalibrationList:
    """Score the labelled items, fit a Platt map per (evaluator, question) on all but a
    held-out share of each label, report ECE and Brier score before and after on the held-out
    items, and keep the maps: later requests with `calibrated: true` get `p_yes_calibrated`.
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
    texts = {q.id: q.text for q in scorer.plan(request).questions}
    answer = await scorer.score(request, who.tenant)
    train, held = held_out_split(labels, body.held_out_fraction)
    fits = []
    for k, first in enumerate(answer.results[0].scores):
        p = [result.scores[k].p_yes for result in answer.results]
        a, b = fit_platt([p[i] for i in train], [labels[i] for i in train])
        raw, y = [p[i] for i in held], [labels[i] for i in held]
        after = [apply(a, b, value) for value in raw]
        evaluator = scorer.pool.get(first.evaluator)
        assert evaluator is not None
        fits.append(
            Calibration(
                evaluator=first.evaluator,
                model=evaluator.config.model,
                question=texts[first.question],
                question_id=first.question,
                a=a,
                b=b,
                train_items=len(train),
                held_out_items=len(held),
                ece_before=ece(raw, y),
                ece_after=ece(after, y),
                brier_before=brier(raw, y),
                brier_after=brier(after, y),
                fitted_at=time.time(),
            )
        )
    scorer.calibrations.put(fits)
    return CalibrationList(calibrations=fits)


@router.get("/v1/calibrations")
async def calibrations(scorer: ScorerDep, who: PrincipalDep) -> CalibrationList:
    """The fitted calibrations, with the held-out ECE they were fitted with."""
    return CalibrationList(calibrations=scorer.calibrations.all())
