"""Pieces the framework adapters share: text from chat messages, scoring settings, clients.

Frameworks load verl and slime reward functions by import path, so those adapters are
configured through environment variables and keep one client per process (sync) or
per event loop (async).
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..client import AsyncRewardClient, RewardClient
from ..errors import RLMEError
from ..wire import ChatMessage, EvaluatorChoice, Item, MetaQuestion, RewardResponse

ENV_RUBRIC = "RLME_RUBRIC"
ENV_QUESTIONS = "RLME_QUESTIONS"
ENV_EVALUATORS = "RLME_EVALUATORS"
ENV_SEND_REFERENCE = "RLME_SEND_REFERENCE"
ENV_RUN = "RLME_RUN"
ENV_STEP_SECONDS = "RLME_STEP_SECONDS"
ENV_TIMEOUT = "RLME_TIMEOUT_S"
DEFAULT_RUBRIC = "correctness"


def message_text(content: Any) -> str:
    """A chat message's text; multimodal content (a list of parts) keeps its text parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        return "".join(part.get("text", "") if isinstance(part, Mapping) else str(part) for part in content)
    return "" if content is None else str(content)


def to_prompt(prompt: Any) -> str | list[ChatMessage]:
    """A framework prompt (text or chat messages) as the wire's prompt."""
    if isinstance(prompt, str):
        return prompt
    return [
        ChatMessage(role=message["role"], content=message_text(message.get("content"))) for message in prompt
    ]


def to_prompt_text(prompt: Any) -> str:
    """A framework prompt as one text (judges quote chat prompts as "role: content" lines)."""
    wire = to_prompt(prompt)
    return wire if isinstance(wire, str) else "\n".join(f"{m.role}: {m.content}" for m in wire)


def to_response(completion: Any) -> str:
    """A completion as text; a chat completion (assistant, maybe tool turns) is joined."""
    if isinstance(completion, str):
        return completion
    return "\n".join(message_text(message.get("content")) for message in completion)


def to_reference(value: Any) -> str | None:
    """Ground truth as text (datasets often store numbers); None and "" mean none."""
    if value is None or value == "":
        return None
    return value if isinstance(value, str) else str(value)


@dataclass(frozen=True)
class Scoring:
    """What to ask: a rubric or inline meta-questions, and optionally which evaluators."""

    rubric: str | None = None
    questions: tuple[MetaQuestion, ...] | None = None
    evaluators: tuple[EvaluatorChoice, ...] | None = None
    send_reference: bool = True
    run: str | None = None  # the run monitor's run id (docs/monitoring.md)
    step_seconds: float = 60.0  # without a step from the framework, a step is this much wall time

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Scoring:
        """From $RLME_RUBRIC or $RLME_QUESTIONS (JSON), $RLME_EVALUATORS (JSON),
        $RLME_SEND_REFERENCE ("0" scores without ground truth), $RLME_RUN and
        $RLME_STEP_SECONDS; `overrides` win."""
        env = os.environ if environ is None else environ
        if "rubric" in overrides or "questions" in overrides:  # the caller chose; ignore the env
            rubric, questions = overrides.get("rubric"), overrides.get("questions")
        else:
            rubric, questions = env.get(ENV_RUBRIC) or None, _json_list(env, ENV_QUESTIONS)
        if rubric is not None and questions is not None:
            raise ValueError(f"give a rubric or questions, not both (${ENV_RUBRIC}, ${ENV_QUESTIONS})")
        if rubric is None and questions is None:
            rubric = DEFAULT_RUBRIC
        evaluators = overrides.get("evaluators", _json_list(env, ENV_EVALUATORS))
        send_reference = _flag(overrides.get("send_reference", env.get(ENV_SEND_REFERENCE) or "1"))
        return cls(
            rubric=rubric,
            questions=None if questions is None else tuple(map(MetaQuestion.model_validate, questions)),
            evaluators=None if evaluators is None else tuple(map(EvaluatorChoice.model_validate, evaluators)),
            send_reference=send_reference,
            run=overrides.get("run", env.get(ENV_RUN) or None),
            step_seconds=_positive(overrides.get("step_seconds", env.get(ENV_STEP_SECONDS) or 60.0)),
        )

    def request_options(self, step: int | None = None) -> dict[str, Any]:
        """Keyword arguments for `rewards()`. With a run id, the step is the framework's
        `step` when it gives one, else the wall-clock bucket of `step_seconds` (the same in
        every reward worker process)."""
        options: dict[str, Any] = {
            "rubric": self.rubric,
            "questions": None if self.questions is None else list(self.questions),
            "evaluators": None if self.evaluators is None else list(self.evaluators),
        }
        if self.run is not None:
            options["run"] = self.run
            options["step"] = step if step is not None else int(time.time() // self.step_seconds)
        return options


SCORING_KEYS = ("rubric", "questions", "evaluators", "send_reference", "run", "step_seconds")


def scoring_for_call(kwargs: Mapping[str, Any]) -> Scoring:
    """Env settings, overridden by scoring keys a framework passes through as kwargs."""
    return Scoring.from_env(**{key: kwargs[key] for key in SCORING_KEYS if key in kwargs})


def _positive(value: Any) -> float:
    seconds = float(value)
    if not 0 < seconds < float("inf"):
        raise ValueError(
            f"${ENV_STEP_SECONDS} (step_seconds) must be a positive number of seconds, not {value!r}"
        )
    return seconds


def _flag(value: Any) -> bool:
    """A yes/no setting from a bool or from text such as "0", "false", "no"."""
    if isinstance(value, str):
        return value.strip().lower() not in ("0", "false", "no", "off")
    return bool(value)


def _json_list(env: Mapping[str, str], name: str) -> list[Any] | None:
    raw = env.get(name)
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"${name} must be a JSON list, e.g. '[{{\"id\": ...}}]': {exc}") from exc
    if not isinstance(value, list):
        raise ValueError(f"${name} must be a JSON list, got {type(value).__name__}")
    return value


_sync_lock = threading.Lock()
_sync_client: RewardClient | None = None
_async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncRewardClient] = (
    weakref.WeakKeyDictionary()
)


def shared_client() -> RewardClient:
    """The process's client, built from $RLME_BASE_URL / $RLME_API_KEY on first use."""
    global _sync_client
    with _sync_lock:
        if _sync_client is None or _sync_client.is_closed:
            _sync_client = RewardClient()
        return _sync_client


def shared_async_client() -> AsyncRewardClient:
    """The running event loop's client: an httpx.AsyncClient must not cross loops."""
    loop = asyncio.get_running_loop()
    client = _async_clients.get(loop)
    if client is None or client.is_closed:
        client = _async_clients[loop] = AsyncRewardClient()
    return client


def timeout_s(default: float, given: Any = None) -> float:
    """A per-call timeout: `given` (the framework's setting), else $RLME_TIMEOUT_S, else
    `default`; a positive number of seconds."""
    value = given or os.environ.get(ENV_TIMEOUT) or default
    seconds = float(value)
    if not seconds > 0:
        raise ValueError(f"${ENV_TIMEOUT} (timeout_s) must be a positive number of seconds, not {value!r}")
    return seconds


def first_reference(row: Any, keys: Sequence[str]) -> str | None:
    """The first of `keys` a row (a mapping or an object) has a non-empty value for, as text."""
    for key in keys:
        value = row.get(key) if isinstance(row, Mapping) else getattr(row, key, None)
        if value not in (None, ""):
            return to_reference(value)
    return None


@dataclass(frozen=True)
class Outcome:
    """One sample's reward, or why there is none. A failed reward is never 0: each adapter
    hands `failure` to its framework's own way of dropping a sample."""

    reward: float | None
    failure: str | None = None
    computed: float | None = None  # low label mass: the reward computed, but not to be trusted

    @property
    def failed(self) -> bool:
        return self.reward is None


async def score_outcomes(
    client: AsyncRewardClient,
    items: Sequence[Item],
    scoring: Scoring,
    step: int | None = None,
    timeout_s: float | None = None,
) -> list[Outcome]:
    """Score `items` in one request within `timeout_s` (the framework's per-call timeout);
    a request that fails or times out fails every item, and an item whose every score has
    low label mass (the evaluator answered neither yes nor no) fails on its own."""
    try:
        call = client.rewards(list(items), **scoring.request_options(step))
        answer = await (call if timeout_s is None else asyncio.wait_for(call, timeout_s))
    except (RLMEError, asyncio.TimeoutError) as exc:  # asyncio's is the builtin from Python 3.11
        why = f"no answer within {timeout_s} s" if isinstance(exc, asyncio.TimeoutError) else f"{exc}"
        return [Outcome(None, f"rlme: {why}")] * len(items)
    return outcomes(answer)


def outcomes(answer: RewardResponse) -> list[Outcome]:
    """Each item's reward; an item whose every score has low label mass has none."""
    found = []
    for result in answer.results:
        if result.scores and all(score.low_label_mass for score in result.scores):
            why = "rlme: low label mass (the evaluator answered neither yes nor no)"
            found.append(Outcome(None, why, computed=result.reward))
        else:
            found.append(Outcome(result.reward))
    return found
