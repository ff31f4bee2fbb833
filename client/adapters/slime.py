"""slime adapter: rlme rewards for slime's rollouts (THUDM/slime).

Two ways to plug rlme into slime:

1. No code, slime's remote reward model: `--rm-type remote_rm --rm-url
   http://127.0.0.1:8000/slime/reward`. For each sample slime POSTs
   `{"prompt": sample.prompt, "response": sample.response, "label": sample.label}`
   to the URL and uses the JSON answer as the reward (slime/rollout/rm_hub/__init__.py,
   `remote_rm`); the service's /slime/reward route answers a bare float.
2. This module, for full control from the trainer side (rubric, questions,
   evaluators, chunked batch calls): `--custom-rm-path
   rlme.client.adapters.slime.reward_func`. slime awaits it as
   `fn(args, sample, **kwargs)` for one sample, and as `fn(args, samples, **kwargs)`
   with `--group-rm` or when a custom generate function returns several samples
   (slime/rollout/rm_hub/__init__.py, `async_rm` and `batched_async_rm`); it
   handles both.

Configured like the verl adapter: $RLME_BASE_URL, $RLME_API_KEY, $RLME_RUBRIC or
$RLME_QUESTIONS, $RLME_EVALUATORS, $RLME_SEND_REFERENCE (`sample.label` is the reference),
$RLME_RUN (tags requests for the run monitor; slime passes no step to reward functions,
so a step is a minute of wall time, $RLME_STEP_SECONDS).

3. Failed rewards dropped, not trained on as 0: `--custom-rm-path
   rlme.client.adapters.slime.masked_reward_func --rollout-sample-filter-path
   rlme.client.adapters.slime.drop_failed`. A sample rlme could not score (the request
   failed, or the evaluator answered neither yes nor no) is marked in
   `sample.metadata["rlme_failure"]`; after the rollout, slime calls the filter on the
   groups (slime/rollout/sglang_rollout.py), which sets `remove_sample` (slime then zeroes
   its loss mask) and gives it its group's mean reward, so the number slime still
   normalises the group with moves no one's advantage. Without the filter configured,
   `masked_reward_func` raises instead: a failure never becomes a silent 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..client import AsyncRewardClient
from ..wire import Item
from ._common import (
    Scoring,
    score_outcomes,
    scoring_for_call,
    shared_async_client,
    to_prompt,
    to_reference,
    to_response,
)

__all__ = ["reward_func", "batched_reward_func", "masked_reward_func", "drop_failed"]

FAILURE_KEY = "rlme_failure"
FILTER_PATH = "rlme.client.adapters.slime.drop_failed"


class RewardFailed(RuntimeError):
    """rlme could not score the sample and no filter will drop it."""


async def reward_func(args: Any, sample: Any, **kwargs: Any) -> float | list[float]:
    """slime's custom reward signature; `args` is not used.

    slime passes one `Sample`, or a list of them when `--group-rm` is set or a custom
    generate function returned several samples (slime/rollout/sglang_rollout.py), so
    both are accepted: a float for a sample, a list for a list.
    """
    if isinstance(sample, list):
        return await batched_reward_func(args, sample, **kwargs)
    return (await batched_reward_func(args, [sample], **kwargs))[0]


async def batched_reward_func(args: Any, samples: Sequence[Any], **kwargs: Any) -> list[float]:
    """slime's `--group-rm` signature: one reward per sample, in order."""
    scoring = scoring_for_call(kwargs)
    client: AsyncRewardClient = kwargs.get("client") or shared_async_client()
    items = [_item(sample, scoring) for sample in samples]
    return list((await client.rewards(items, **scoring.request_options())).rewards)


def _item(sample: Any, scoring: Scoring) -> Item:
    """A slime `Sample` (prompt: text or chat messages; response; label) as a wire item."""
    return Item(
        prompt=to_prompt(sample.prompt),
        response=to_response(sample.response),
        reference=to_reference(sample.label) if scoring.send_reference else None,
    )


async def masked_reward_func(args: Any, sample: Any, **kwargs: Any) -> float | list[float]:
    """Like `reward_func`, but a sample rlme could not score is marked for `drop_failed`
    (a placeholder reward of 0.0, replaced there) instead of failing the rollout."""
    samples = sample if isinstance(sample, list) else [sample]
    scoring = scoring_for_call(kwargs)
    client: AsyncRewardClient = kwargs.get("client") or shared_async_client()
    found = await score_outcomes(
        client, [_item(s, scoring) for s in samples], scoring, timeout_s=kwargs.get("timeout_s")
    )
    filtered = getattr(args, "rollout_sample_filter_path", None) == FILTER_PATH
    rewards = []
    for one, outcome in zip(samples, found, strict=True):
        if outcome.reward is None and not filtered:
            raise RewardFailed(
                f"{outcome.failure}; set --rollout-sample-filter-path {FILTER_PATH} to drop such samples"
            )
        metadata = {k: v for k, v in (getattr(one, "metadata", None) or {}).items() if k != FAILURE_KEY}
        one.metadata = metadata if outcome.reward is not None else {**metadata, FAILURE_KEY: outcome.failure}
        rewards.append(0.0 if outcome.reward is None else outcome.reward)
    return rewards if isinstance(sample, list) else rewards[0]


def drop_failed(args: Any, data: list[Any]) -> None:
    """slime's `--rollout-sample-filter-path` hook: `data` is the rollout's groups (lists of
    samples; a flat list is taken as one group). Marked samples get `remove_sample = True`
    and their group's mean reward over the scored samples (slime normalises rewards per group
    before it applies the mask)."""
    groups = data if data and isinstance(data[0], list) else [data]
    for group in groups:
        failed = [s for s in group if (getattr(s, "metadata", None) or {}).get(FAILURE_KEY)]
        if not failed:
            continue
        marked = {id(s) for s in failed}
        scored = [s.reward for s in group if id(s) not in marked and isinstance(s.reward, int | float)]
        neutral = sum(scored) / len(scored) if scored else 0.0  # all failed: equal rewards, no advantage
        for one in failed:
            one.remove_sample = True
            one.reward = neutral
