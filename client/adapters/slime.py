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
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..client import AsyncRewardClient
from ..wire import Item
from ._common import (
    Scoring,
    scoring_for_call,
    shared_async_client,
    to_prompt,
    to_reference,
    to_response,
)

__all__ = ["reward_func", "batched_reward_func"]


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
