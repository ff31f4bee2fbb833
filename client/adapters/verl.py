"""verl adapter: rlme rewards as verl's custom reward function.

verl imports the function by path, so it is configured by environment variables
($RLME_BASE_URL, $RLME_API_KEY, $RLME_RUBRIC or $RLME_QUESTIONS, $RLME_EVALUATORS,
$RLME_SEND_REFERENCE, $RLME_RUN); keys of `reward.custom_reward_function.reward_kwargs`
(`rubric`, `questions`, `evaluators`, `send_reference`, `run`) arrive as keyword arguments
and win. With a run id the requests are tagged for the run monitor; verl passes no step,
so the step is extra_info["global_steps"] where a reward manager adds it, else a minute
of wall time ($RLME_STEP_SECONDS).

What verl 0.9 passes (its reward loop, verl/experimental/reward_loop/reward_manager/naive.py,
one call per sample, async functions awaited): `data_source`, `solution_str`
(the decoded response only), `ground_truth` (the row's reward_model.ground_truth) and
`extra_info` (the row's extra_info dict). verl does NOT pass the prompt: it is read from
extra_info["prompt"], else extra_info["question"] (verl's gsm8k preprocessing stores
the raw question there), else it is empty. Store the prompt in extra_info when you
preprocess your data. `ground_truth` becomes the item's `reference` unless
$RLME_SEND_REFERENCE=0 (label-free RLME, as in the paper).

    reward.custom_reward_function.path=pkg://rlme.client.adapters.verl
    reward.custom_reward_function.name=compute_score_async  # verl 0.9's reward loop (recommended)
    reward.custom_reward_function.name=compute_score        # the same, blocking
    reward.custom_reward_function.name=compute_score_reward_loop  # the same, with a timeout and flags
    reward.custom_reward_function.name=compute_score_judge  # a generative judge ($RLME_JUDGE)
    compute_score_batch: verl <= 0.6's `reward_model.reward_manager=batch` only (gone in 0.9)
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from ..client import AsyncRewardClient, RewardClient
from ..wire import Item
from ._common import (
    Scoring,
    score_outcomes,
    scoring_for_call,
    shared_async_client,
    shared_client,
    timeout_s,
    to_prompt,
    to_prompt_text,
    to_reference,
    to_response,
)

__all__ = [
    "compute_score",
    "compute_score_async",
    "compute_score_batch",
    "compute_score_judge",
    "compute_score_reward_loop",
]

PROMPT_KEYS = ("prompt", "question")


def compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: Any,
    extra_info: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> float:
    """verl's per-sample signature; one HTTP request per call (the server batches them)."""
    scoring = scoring_for_call(kwargs)
    client: RewardClient = kwargs.get("client") or shared_client()
    item = _item(solution_str, ground_truth, extra_info, scoring)
    return client.rewards([item], **scoring.request_options(_step(extra_info))).rewards[0]


async def compute_score_async(
    data_source: str,
    solution_str: str,
    ground_truth: Any,
    extra_info: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> float:
    """The same as an `async def`, which verl's reward loop awaits instead of using a thread."""
    scoring = scoring_for_call(kwargs)
    client: AsyncRewardClient = kwargs.get("client") or shared_async_client()
    item = _item(solution_str, ground_truth, extra_info, scoring)
    return (await client.rewards([item], **scoring.request_options(_step(extra_info)))).rewards[0]


def compute_score_batch(
    data_sources: Sequence[str],
    solution_strs: Sequence[str],
    ground_truths: Sequence[Any],
    extra_infos: Sequence[Mapping[str, Any] | None],
    **kwargs: Any,
) -> list[float]:
    """verl's batch reward manager signature: the whole batch in one (chunked) call."""
    scoring = scoring_for_call(kwargs)
    client: RewardClient = kwargs.get("client") or shared_client()
    items = [
        _item(solution, truth, extra, scoring)
        for solution, truth, extra in zip(solution_strs, ground_truths, extra_infos, strict=True)
    ]
    step = _step(extra_infos[0]) if len(extra_infos) else None  # verl passes numpy arrays
    return list(client.rewards(items, **scoring.request_options(step)).rewards)


async def compute_score_reward_loop(
    data_source: str,
    solution_str: str,
    ground_truth: Any,
    extra_info: Mapping[str, Any] | None = None,
    reward_router_address: str | None = None,
    reward_model_tokenizer: Any = None,
    **kwargs: Any,
) -> dict[str, float]:
    """verl 0.9's reward loop signature, the GenRM arguments included (verl passes its own
    reward model's router and tokenizer when one is enabled; rlme is the judge, so they are
    not used). Returns `{"score", "rlme_low_label_mass"}`, the same keys for every sample
    as verl requires: an item the evaluator answered neither yes nor no about keeps its
    computed score and is flagged (1.0) in reward_extra_info, logged per step. verl has no
    per-sample mask, so a reward that could not be computed (the service down past the
    client's retries, no answer within `timeout_s` / $RLME_TIMEOUT_S, default 300 s) raises:
    with verl's default `naive` reward manager the step fails loudly instead of training
    on a 0. (verl's `rate_limited` manager turns any exception into a score of 0.0: do not
    use it with rlme, whose own quotas answer 429 and whose client waits and retries.)"""
    scoring = scoring_for_call(kwargs)
    client: AsyncRewardClient = kwargs.get("client") or shared_async_client()
    item = _item(solution_str, ground_truth, extra_info, scoring)
    timeout = timeout_s(300.0, kwargs.get("timeout_s"))
    (outcome,) = await score_outcomes(client, [item], scoring, _step(extra_info), timeout)
    if outcome.computed is not None:
        return {"score": outcome.computed, "rlme_low_label_mass": 1.0}
    if outcome.reward is None:
        raise RewardFailed(outcome.failure)
    return {"score": outcome.reward, "rlme_low_label_mass": 0.0}


class RewardFailed(RuntimeError):
    """rlme could not compute this sample's reward; verl has no mask, so the step fails."""


def _step(extra_info: Mapping[str, Any] | None) -> int | None:
    """verl 0.9.1 passes no training step to reward functions; a reward manager that adds
    extra_info["global_steps"] (verl's pattern for per-step state) gives one."""
    value = (extra_info or {}).get("global_steps")
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < float("inf"):
        return None
    return int(value)


def _item(
    solution_str: str, ground_truth: Any, extra_info: Mapping[str, Any] | None, scoring: Scoring
) -> Item:
    prompt: Any = ""
    for key in PROMPT_KEYS:
        if extra_info and extra_info.get(key) is not None and len(extra_info[key]) > 0:
            prompt = extra_info[key]
            break
    return Item(
        prompt=to_prompt(prompt),
        response=to_response(solution_str),
        reference=to_reference(ground_truth) if scoring.send_reference else None,
    )


ENV_JUDGE = "RLME_JUDGE"


def compute_score_judge(
    data_source: str,
    solution_str: str,
    ground_truth: Any,
    extra_info: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """A generative judge's score in verl's dict form: {score, masked, status}.

    `judge` (reward_kwargs) or $RLME_JUDGE names the judge (default additive_5); the score
    is its normalized reward in [0, 1]. A masked judgment (no label mass, timeout, error)
    has score None and masked True, so the trainer can drop it instead of learning a 0.0.
    """
    scoring = scoring_for_call(kwargs)
    client: RewardClient = kwargs.get("client") or shared_client()
    item = _item(solution_str, ground_truth, extra_info, scoring)
    judge = kwargs.get("judge") or os.environ.get(ENV_JUDGE) or "additive_5"
    prompt = to_prompt_text(item.prompt)
    answer = client.judgments(
        [{"prompt": prompt, "response": item.response, "reference": item.reference}],
        judge=judge,
        reward="normalized",
        **{k: kwargs[k] for k in ("samples", "temperature", "max_tokens") if k in kwargs},
    )
    result = answer.results[0]
    return {"score": result.reward, "masked": result.mask, "status": result.status}
