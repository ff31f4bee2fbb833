"""AReaL adapter: rlme rewards for AReaL's RLVR workflow (inclusionAI/AReaL).

AReaL's `RLVRWorkflow` wraps its `reward_fn` in `AsyncRewardWrapper`
(areal/api/reward_api.py), which runs it in a process pool as
`reward_fn(prompt, completions, prompt_ids, completion_ids, **data)` (one completion per
call; `data` is the dataset row) with `timeout_seconds` (default 15) and `max_retries`
(default 3). Two things AReaL does with a failure decide this adapter's shape:
- a call that times out in the wrapper is retried and then scored 0 and KEPT, so this
  function gives up itself first, `$RLME_TIMEOUT_S` (default 12 s, under AReaL's 15),
  and raises;
- a call that raises is retried and then re-raised; AReaL's workflow executor then rejects
  the rollout (`workflow_exception`): it is left out of training. That is the mask.
So `reward_fn` returns rlme's reward, or raises `RewardFailed` (never a 0).

    from rlme.client.adapters.areal import reward_fn
    workflow = RLVRWorkflow(reward_fn=reward_fn, ...)   # a module-level function: picklable

The reference is the row's `answer` (or `solution`, `ground_truth`) unless
$RLME_SEND_REFERENCE=0; the rest as the other adapters ($RLME_BASE_URL, $RLME_API_KEY,
$RLME_RUBRIC or $RLME_QUESTIONS, $RLME_EVALUATORS, $RLME_RUN with a wall-clock step).
`async_reward_fn` is the same for a custom workflow that awaits rewards itself (no pool).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..client import AsyncRewardClient, RewardClient
from ..errors import RLMEError
from ..wire import Item
from ._common import (
    Outcome,
    Scoring,
    first_reference,
    outcomes,
    score_outcomes,
    shared_async_client,
    timeout_s,
    to_prompt,
)

__all__ = ["reward_fn", "async_reward_fn", "RewardFailed"]

REFERENCE_KEYS = ("answer", "solution", "ground_truth", "reference")


class RewardFailed(RuntimeError):
    """rlme gave no reward for this rollout; AReaL rejects a rollout whose reward raises."""


def reward_fn(
    prompt: Any, completions: Any, prompt_ids: Any = None, completion_ids: Any = None, **data: Any
) -> float:
    """AReaL's reward signature, for `AsyncRewardWrapper`: it runs in AReaL's worker process,
    with that process's one pooled client (blocking calls: a worker does one at a time)."""
    scoring = Scoring.from_env()  # never from `data`: a dataset column must not change settings
    client = _process_client(_timeout())
    try:
        answer = client.rewards([_item(prompt, completions, data, scoring)], **scoring.request_options())
    except RLMEError as exc:
        raise RewardFailed(f"rlme: {exc}") from exc
    return _reward(outcomes(answer)[0])


async def async_reward_fn(
    prompt: Any, completions: Any, prompt_ids: Any = None, completion_ids: Any = None, **data: Any
) -> float:
    """The same for a workflow that awaits its rewards itself (no process pool)."""
    scoring = Scoring.from_env()
    client: AsyncRewardClient = shared_async_client()
    item = _item(prompt, completions, data, scoring)
    (outcome,) = await score_outcomes(client, [item], scoring, timeout_s=_timeout())
    return _reward(outcome)


def _reward(outcome: Outcome) -> float:
    if outcome.reward is None:
        raise RewardFailed(outcome.failure)
    return outcome.reward


_clients: dict[float, RewardClient] = {}


def _process_client(timeout_s: float) -> RewardClient:
    """One client per worker process (and timeout), built from $RLME_BASE_URL / $RLME_API_KEY."""
    client = _clients.get(timeout_s)
    if client is None or client.is_closed:
        client = _clients[timeout_s] = RewardClient(total_timeout=timeout_s)
    return client


def _item(prompt: Any, completion: Any, data: Mapping[str, Any], scoring: Scoring) -> Item:
    text = completion if isinstance(completion, str) else str(completion)
    return Item(
        prompt=to_prompt(prompt),
        response=text,
        reference=first_reference(data, REFERENCE_KEYS) if scoring.send_reference else None,
    )


def _timeout() -> float:
    return timeout_s(12.0)  # under AsyncRewardWrapper's default 15 s
