"""verifiers adapter (prime-rl environments): rlme rewards for a verifiers v1 `Task`.

verifiers 0.4 scores a rollout by awaiting its task's reward functions, each bound by
parameter name to `task` (the row: `prompt`, and the fields a TaskData subclass adds,
such as `answer`) and `trace` (the rollout: `last_reply` is the policy's last answer);
a function returns a float (or a mapping of named floats), weighted and summed. A reward
function that raises turns the trace's scoring into a `TaskError`: the trace gets
`has_error`, and prime-rl leaves such traces out of training
(orchestrator/algo/base.py, `iter_trainable_traces`). So each function here returns
rlme's number or raises `RewardFailed`, never a 0.

- `reward`: rlme's reward for (prompt, last reply, `answer` as the reference), asking
  $RLME_RUBRIC or $RLME_QUESTIONS (the meta-questions), as the other adapters.
- `judgment`: a generative judge's normalized score in [0, 1] ($RLME_JUDGE, default
  `additive_5`); a masked judgment (no verdict, timeout) raises.
- `preference`: P(the reply is better than the row's `answer`), judged in both orders by
  /v1/comparisons ($RLME_PAIRWISE_JUDGE, default `pairwise`); no verdict raises.

Plug them into a task's config, or call them from `@vf.reward` methods:

    [env.taskset.task.rewards]
    rlme = { fn = "rlme.client.adapters.verifiers:reward", weight = 1.0 }

    class MathTask(vf.Task[MathData]):
        @vf.reward(weight=1.0)
        async def rlme(self, task, trace):
            return await rlme_verifiers.reward(task, trace)

One pooled async client per event loop; $RLME_TIMEOUT_S bounds each call (default 120 s).
verifiers itself is not imported.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from typing import Any

from ..errors import RLMEError
from ..wire import Item
from ._common import (
    first_reference,
    message_text,
    score_outcomes,
    scoring_for_call,
    shared_async_client,
    timeout_s,
)

__all__ = ["reward", "judgment", "preference", "RewardFailed"]

REFERENCE_FIELDS = ("answer", "reference", "ground_truth", "expected_answer")


class RewardFailed(RuntimeError):
    """rlme could not score this trace: raised, so verifiers marks the trace `has_error`."""


async def reward(task: Any, trace: Any, **options: Any) -> float:
    """rlme's reward for the trace's last reply (meta-questions from the environment)."""
    scoring = scoring_for_call(options)
    client = options.get("client") or shared_async_client()
    item = Item(prompt=prompt_of(task), response=reply_of(trace),
                reference=reference_of(task) if scoring.send_reference else None)  # fmt: skip
    (outcome,) = await score_outcomes(client, [item], scoring, timeout_s=_timeout(options))
    if outcome.reward is None:
        raise RewardFailed(outcome.failure)
    return outcome.reward


async def judgment(task: Any, trace: Any, **options: Any) -> float:
    """A generative judge's normalized score of the last reply; a masked judgment raises."""
    client = options.get("client") or shared_async_client()
    judge = options.get("judge") or os.environ.get("RLME_JUDGE") or "additive_5"
    item = {"prompt": _prompt_text(task), "response": reply_of(trace), "reference": reference_of(task)}
    answer = await _call(client.judgments([item], judge=judge, reward="normalized"), options)
    result = answer.results[0]
    if result.mask or result.reward is None:
        raise RewardFailed(f"rlme: judge {judge!r} gave no verdict ({result.status})")
    return float(result.reward)


async def preference(task: Any, trace: Any, **options: Any) -> float:
    """P(last reply better than the row's answer), both orders; no verdict raises."""
    client = options.get("client") or shared_async_client()
    reference = reference_of(task)
    if reference is None:
        raise RewardFailed("rlme: `preference` compares with the row's `answer`, and this row has none")
    judge = options.get("judge") or os.environ.get("RLME_PAIRWISE_JUDGE") or "pairwise"
    pair = {"prompt": _prompt_text(task), "response_a": reply_of(trace), "response_b": reference}
    answer = await _call(client.compare([pair], judge=judge), options)
    better = answer.results[0].p_a_better
    if better is None:
        raise RewardFailed(f"rlme: judge {judge!r} gave no verdict in either order")
    return float(better)


def prompt_of(task: Any) -> str | list[dict[str, str]]:
    """The row's prompt: text, or messages (pydantic or dicts) as role/content dicts."""
    prompt = _field(task, "prompt")
    if prompt is None or isinstance(prompt, str):
        return prompt or ""
    messages = []
    for message in prompt:
        role = _field(message, "role")
        if role in ("system", "user", "assistant"):
            messages.append({"role": role, "content": message_text(_field(message, "content"))})
    return messages


def reply_of(trace: Any) -> str:
    reply = _field(trace, "last_reply")
    return reply if isinstance(reply, str) else message_text(reply)


def reference_of(task: Any) -> str | None:
    return first_reference(task, REFERENCE_FIELDS)


def _prompt_text(task: Any) -> str:
    prompt = prompt_of(task)
    return prompt if isinstance(prompt, str) else "\n".join(f"{m['role']}: {m['content']}" for m in prompt)


def _field(obj: Any, name: str) -> Any:
    return obj.get(name) if isinstance(obj, Mapping) else getattr(obj, name, None)


def _timeout(options: Mapping[str, Any]) -> float:
    return timeout_s(120.0, options.get("timeout_s"))


async def _call(call: Any, options: Mapping[str, Any]) -> Any:
    try:
        return await asyncio.wait_for(call, _timeout(options))
    except (RLMEError, asyncio.TimeoutError) as exc:
        why = f"no answer within {_timeout(options)} s" if isinstance(exc, asyncio.TimeoutError) else str(exc)
        raise RewardFailed(f"rlme: {why}") from exc
