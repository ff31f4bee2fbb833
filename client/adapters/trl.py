"""TRL adapter: rlme rewards as an entry of `reward_funcs` (GRPOTrainer, RLOOTrainer).

TRL's contract (trl/trainer/grpo_trainer.py, `_calculate_rewards`): the function is
called with keyword arguments `prompts`, `completions`, `completion_ids`, every dataset
column except "prompt" (one value per completion), `trainer_state`, `log_extra` and
`log_metric`; it returns one float (or None: "not applicable") per completion. Prompts
and completions are strings, or lists of chat messages in the conversational format.
The reward is logged under the callable's `__name__`. An `async def` function (TRL
checks `inspect.iscoroutinefunction`) is awaited on TRL's own event loop, concurrently
with the other async reward functions.

    from rlme.client.adapters.trl import RLMERewardFunc
    trainer = GRPOTrainer(..., reward_funcs=RLMERewardFunc(rubric="correctness"))

Generative judges enter TRL the same way (TRL removed `trl.judges` in v1.1.0):
`JudgeRewardFunc` (a pointwise judge's score per completion) and `GroupComparisonRewardFunc`
(each completion of a GRPO group against the others, both orders). A judgment the
service could not score (masked: no label mass, timeout, error) gives None, which TRL
skips, never a made-up 0.0.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from statistics import fmean
from typing import Any

from .._core import EvaluatorLike, QuestionLike
from ..client import AsyncRewardClient, RewardClient
from ..wire import Item, RewardResponse
from ._common import (
    Scoring,
    shared_async_client,
    to_prompt,
    to_prompt_text,
    to_reference,
    to_response,
)

__all__ = ["GroupComparisonRewardFunc", "JudgeRewardFunc", "RLMERewardFunc", "async_reward_func"]

TRLRewardFunc = Callable[..., list[float | None]]
AsyncTRLRewardFunc = Callable[..., Awaitable[list[float | None]]]


@dataclass(frozen=True)
class _Spec:
    scoring: Scoring
    reference_columns: tuple[str, ...]
    name: str
    run: str | None = None

    @classmethod
    def build(
        cls,
        rubric: str | None,
        questions: Sequence[QuestionLike] | None,
        evaluators: Sequence[EvaluatorLike] | None,
        reference_column: str | Sequence[str] | None,
        name: str,
        run: str | None = None,
    ) -> _Spec:
        overrides: dict[str, Any] = {"rubric": rubric, "questions": questions}
        if evaluators is not None:
            overrides["evaluators"] = evaluators
        columns = (reference_column,) if isinstance(reference_column, str) else reference_column
        # No environment lookup: a TRL script says what it wants in code.
        scoring = Scoring.from_env({}, **overrides)
        return cls(scoring, tuple(columns or ()), name, run)

    def options(self, columns: Mapping[str, Any]) -> dict[str, Any]:
        """The request's scoring options, and `run`/`step` for the service's run monitor
        (step = TRL's `trainer_state.global_step`) when a run id was given."""
        options = self.scoring.request_options()
        if self.run is not None:
            state = columns.get("trainer_state")
            options.update(run=self.run, step=getattr(state, "global_step", None))
        return options

    def items(
        self, prompts: Sequence[Any], completions: Sequence[Any], columns: Mapping[str, Any]
    ) -> list[Item]:
        references = self._references(columns, len(completions))
        return [
            Item(prompt=to_prompt(prompt), response=to_response(completion), reference=reference)
            for prompt, completion, reference in zip(prompts, completions, references, strict=True)
        ]

    def _references(self, columns: Mapping[str, Any], count: int) -> Sequence[str | None]:
        """The first configured column present in the batch supplies `reference`."""
        for column in self.reference_columns:
            if columns.get(column) is not None:
                return [to_reference(value) for value in columns[column]]
        return [None] * count

    def rewards(self, answer: RewardResponse, log_metric: Any) -> list[float | None]:
        """The rewards, after logging the mean p_yes of each meta-question if TRL lets us."""
        if callable(log_metric):
            by_question: dict[str, list[float]] = {}
            for result in answer.results:
                for score in result.scores:
                    by_question.setdefault(score.question, []).append(score.p_yes)
            for question, p_yes in by_question.items():
                log_metric(f"{self.name}/p_yes/{question}", fmean(p_yes))
        return list(answer.rewards)


class RLMERewardFunc:
    """A synchronous TRL reward function backed by the rlme service.

    Give `rubric` (a server-side name) or `questions` (inline meta-questions); neither
    means rubric "correctness". `reference_column` names the dataset column(s) holding
    ground truth, tried in order; None scores without it. `run`: a run id for the service's
    run monitor; each call then carries it and TRL's `trainer_state.global_step`. Picklable (TRL's
    AsyncGRPOTrainer sends reward functions to a child process): the client is rebuilt
    from `base_url`/`api_key` (or $RLME_BASE_URL/$RLME_API_KEY) after unpickling.
    """

    def __init__(
        self,
        *,
        rubric: str | None = None,
        questions: Sequence[QuestionLike] | None = None,
        evaluators: Sequence[EvaluatorLike] | None = None,
        reference_column: str | Sequence[str] | None = "reference",
        name: str = "rlme",
        base_url: str | None = None,
        api_key: str | None = None,
        client: RewardClient | None = None,
        run: str | None = None,
    ) -> None:
        self._spec = _Spec.build(rubric, questions, evaluators, reference_column, name, run)
        self.__name__ = name  # TRL names the logged reward after this
        self._base_url = client.base_url if client is not None else base_url
        self._api_key = client.api_key if client is not None else api_key
        self._client = client

    def __call__(
        self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any
    ) -> list[float | None]:
        if self._client is None:
            self._client = RewardClient(base_url=self._base_url, api_key=self._api_key)
        answer = self._client.rewards(
            self._spec.items(prompts, completions, kwargs), **self._spec.options(kwargs)
        )
        return self._spec.rewards(answer, kwargs.get("log_metric"))

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_client": None}  # sockets do not travel

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def async_reward_func(
    *,
    rubric: str | None = None,
    questions: Sequence[QuestionLike] | None = None,
    evaluators: Sequence[EvaluatorLike] | None = None,
    reference_column: str | Sequence[str] | None = "reference",
    name: str = "rlme",
    client: AsyncRewardClient | None = None,
    run: str | None = None,
) -> AsyncTRLRewardFunc:
    """An `async def` TRL reward function backed by the rlme service.

    Same options as `RLMERewardFunc`. Without `client`, each event loop gets its own
    AsyncRewardClient from $RLME_BASE_URL/$RLME_API_KEY. A closure, so not picklable:
    use `RLMERewardFunc` with AsyncGRPOTrainer.
    """
    spec = _Spec.build(rubric, questions, evaluators, reference_column, name, run)

    async def reward(prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float | None]:
        http = client or shared_async_client()
        answer = await http.rewards(spec.items(prompts, completions, kwargs), **spec.options(kwargs))
        return spec.rewards(answer, kwargs.get("log_metric"))

    reward.__name__ = reward.__qualname__ = name
    return reward


class _JudgeFunc:
    """What the judge reward functions share: a lazily built client that does not pickle."""

    def __init__(self, name: str, options: dict[str, Any], base_url: str | None, api_key: str | None,
                 client: RewardClient | None) -> None:  # fmt: skip
        self.__name__ = name
        self._options = {k: v for k, v in options.items() if v is not None}
        self._base_url = client.base_url if client is not None else base_url
        self._api_key = client.api_key if client is not None else api_key
        self._client = client

    @property
    def client(self) -> RewardClient:
        if self._client is None:
            self._client = RewardClient(base_url=self._base_url, api_key=self._api_key)
        return self._client

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_client": None}

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


class JudgeRewardFunc(_JudgeFunc):
    """A pointwise generative judge as a TRL reward function: the item's `reward` per
    completion (`reward="normalized"` maps the judge's scale to [0, 1]); masked items None.

    `reference_column`, when present in the batch, fills the template's {reference}.
    """

    def __init__(
        self,
        *,
        judge: str = "additive_5",
        samples: int = 1,
        temperature: float = 0.0,
        max_tokens: int | None = None,
        reward: str = "normalized",
        reference_column: str | None = None,
        name: str = "rlme_judge",
        base_url: str | None = None,
        api_key: str | None = None,
        client: RewardClient | None = None,
    ) -> None:
        options = {"judge": judge, "samples": samples, "temperature": temperature, "max_tokens": max_tokens,
                   "reward": reward}  # fmt: skip
        super().__init__(name, options, base_url, api_key, client)
        self._reference_column = reference_column

    def __call__(
        self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any
    ) -> list[float | None]:
        references = kwargs.get(self._reference_column or "") or [None] * len(completions)
        items = [
            {"prompt": to_prompt_text(p), "response": to_response(c), "reference": to_reference(r)}
            for p, c, r in zip(prompts, completions, references, strict=True)
        ]
        answer = self.client.judgments(items, **self._options)
        return list(answer.rewards)


class GroupComparisonRewardFunc(_JudgeFunc):
    """Each completion against the others of its GRPO group, by a pairwise judge.

    TRL lays a group's completions out one after another with the same prompt. A
    completion's reward is its mean P(better) over the other members, each pair judged in
    both orders; None where every comparison of it was masked. A group of G costs
    G(G-1)/2 comparisons, 2 judge prompts each.
    """

    def __init__(
        self,
        *,
        judge: str = "pairwise",
        samples: int = 1,
        temperature: float = 0.0,
        max_tokens: int | None = None,
        name: str = "rlme_group_comparison",
        base_url: str | None = None,
        api_key: str | None = None,
        client: RewardClient | None = None,
    ) -> None:
        options = {"judge": judge, "samples": samples, "temperature": temperature, "max_tokens": max_tokens}
        super().__init__(name, options, base_url, api_key, client)

    def __call__(
        self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any
    ) -> list[float | None]:
        texts = [to_prompt_text(p) for p in prompts]
        responses = [to_response(c) for c in completions]
        pairs, index = [], []
        for group in _groups(texts):
            for a_at, i in enumerate(group):
                for j in group[a_at + 1 :]:
                    pairs.append({"prompt": texts[i], "response_a": responses[i], "response_b": responses[j]})
                    index.append((i, j))
        wins: list[list[float]] = [[] for _ in completions]
        if pairs:
            for (i, j), result in zip(
                index, self.client.compare(pairs, **self._options).results, strict=True
            ):
                if result.p_a_better is not None:
                    wins[i].append(result.p_a_better)
                    wins[j].append(1 - result.p_a_better)
        return [fmean(w) if w else None for w in wins]


def _groups(prompts: Sequence[str]) -> list[list[int]]:
    """Runs of consecutive equal prompts: TRL's GRPO groups."""
    groups: list[list[int]] = []
    for i, prompt in enumerate(prompts):
        if groups and prompts[groups[-1][0]] == prompt:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups
