"""Routes in RL frameworks' own reward-model contracts, served by the same scorer.

- OpenRLHF `--reward.remote_url` (`--remote_rm_url` before 0.10.2): POST /get_reward
  {"query", "prompts", "labels"} -> {"rewards", "scores", "extra_logs"}; query = prompt + response.
- slime `--rm-url`: POST /slime/reward {"prompt", "response", "label"} -> a bare float.

Questions come from the `rubric` query parameter, else `compat_rubric` in the config.
Labels are shown to the evaluator only when a question requires a reference: RLME's
point is to need no labels.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import ValidationError

from rlme.client.wire import (
    ErrorBody,
    Item,
    OpenRLHFRewardRequest,
    OpenRLHFRewardResponse,
    RewardRequest,
    RewardResponse,
    SlimeRewardRequest,
)
from rlme.service.auth import Principal, PrincipalDep
from rlme.service.deps import ScorerDep, SettingsDep
from rlme.service.errors import InvalidRequest

router = APIRouter(tags=["framework compatibility"])

RubricQuery = Annotated[str | None, Query(description="Rubric name; default: compat_rubric.")]
_ERRORS: dict[int | str, dict[str, object]] = {422: {"model": ErrorBody}, 429: {"model": ErrorBody}}


def _item(index: int, **fields: object) -> Item:
    try:
        return Item.model_validate(fields)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise InvalidRequest(f"sample {index}: {problems}") from exc


async def _score(
    scorer: ScorerDep, settings: SettingsDep, who: Principal, rubric: str | None, items: list[Item]
) -> RewardResponse:
    name = rubric or settings.compat_rubric
    questions = settings.all_rubrics().get(name)
    if questions is not None and not any(q.requires_reference for q in questions.questions):
        items = [item.model_copy(update={"reference": None}) for item in items]
    return await scorer.score(RewardRequest(items=items, rubric=name), who.tenant)


@router.post("/get_reward", responses=_ERRORS)
async def openrlhf_get_reward(
    body: OpenRLHFRewardRequest,
    scorer: ScorerDep,
    settings: SettingsDep,
    who: PrincipalDep,
    rubric: RubricQuery = None,
) -> OpenRLHFRewardResponse:
    """OpenRLHF remote reward model. `scores` is the mean p_yes (0-1) of each sample."""
    if body.prompts is None or len(body.prompts) != len(body.query):
        raise InvalidRequest("`prompts` must be given, one per `query`, to split off the response")
    labels = body.labels if body.labels is not None else [None] * len(body.query)
    if len(labels) != len(body.query):
        raise InvalidRequest(f"{len(labels)} labels for {len(body.query)} queries")
    items = []
    for i, (query, prompt, label) in enumerate(zip(body.query, body.prompts, labels, strict=True)):
        if not query.startswith(prompt):
            raise InvalidRequest(f"query[{i}] does not start with prompts[{i}]")
        items.append(_item(i, prompt=prompt, response=query[len(prompt) :], reference=label))
    scored = await _score(scorer, settings, who, rubric, items)
    extra_logs: dict[str, list[float]] = {}
    for result in scored.results:
        for s in result.scores:
            extra_logs.setdefault(f"p_yes/{s.evaluator}/{s.question}", []).append(s.p_yes)
    scores = [sum(s.p_yes for s in r.scores) / len(r.scores) for r in scored.results]
    return OpenRLHFRewardResponse(rewards=scored.rewards, scores=scores, extra_logs=extra_logs)


@router.post("/slime/reward", responses=_ERRORS)
async def slime_reward(
    body: SlimeRewardRequest,
    scorer: ScorerDep,
    settings: SettingsDep,
    who: PrincipalDep,
    rubric: RubricQuery = None,
) -> float:
    """slime remote reward model: one sample per request, the reward as a bare number."""
    label = None if body.label is None else str(body.label)
    item = _item(0, prompt=body.prompt, response=body.response, reference=label)
    scored = await _score(scorer, settings, who, rubric, [item])
    return scored.rewards[0]
