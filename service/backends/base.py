"""The evaluator backend protocol, and the data that crosses it.

A backend turns token sequences into the log-probabilities of the Yes and No labels at
the next position. Everything else (rendering, batching, rewards) happens outside it,
so a new engine is one small class (LitServe's `LitAPI` is the model).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from rlme.client.wire import Item, MetaQuestion
from rlme.service.prompting import LabelTokens, Tokenizer, common_prefix_len, tokenize
from rlme.service.settings import EvaluatorConfig


@dataclass(frozen=True)
class ScoringTask:
    """All meta-questions of one item for one evaluator.

    `sequences[k]` is the full token sequence for question k, and the first
    `prefix_len` tokens are the same in all of them (0 < prefix_len < every length).
    """

    sequences: tuple[tuple[int, ...], ...]
    prefix_len: int

    @property
    def prompt_tokens(self) -> int:
        return sum(len(s) for s in self.sequences)

    @property
    def shared_tokens(self) -> int:
        """Tokens not recomputed when the prefix is shared."""
        return (len(self.sequences) - 1) * self.prefix_len

    def split(self) -> list[ScoringTask]:
        """One task per question, each scored from scratch."""
        return [ScoringTask(sequences=(s,), prefix_len=len(s) - 1) for s in self.sequences]


def build_task(
    tokenizer: Tokenizer,
    system_prompt: str,
    item: Item,
    questions: list[MetaQuestion],
    template_kwargs: Mapping[str, Any] | None = None,
) -> ScoringTask:
    """One item's questions as full token sequences, and the prefix they share."""
    sequences = tuple(tuple(tokenize(tokenizer, system_prompt, item, q, template_kwargs)) for q in questions)
    shortest = min(len(s) for s in sequences)
    # Keep at least one token per question after the prefix: its logits are the answer.
    prefix_len = min(common_prefix_len(sequences), shortest - 1)
    return ScoringTask(sequences=sequences, prefix_len=prefix_len)


@dataclass(frozen=True)
class LabelLogprobs:
    """Full-vocabulary log-probs of the yes and no label variants (logsumexp over variants)."""

    logp_yes: float
    logp_no: float


@dataclass(frozen=True)
class TaskResult:
    scores: tuple[LabelLogprobs, ...]  # one per question, in order
    cached_prompt_tokens: int


class Backend(Protocol):
    """What the service needs from an evaluator engine.

    `setup` and `score` block and are called in a worker thread. An engine that is
    asynchronous by nature (vLLM's AsyncLLM, HTTP to remote servers) may also define
    `async def setup_async()` and `async def score_async(tasks)`, which are then
    awaited on the service's event loop instead, and `async def aclose()` to release
    engine processes or connection pools at shutdown.
    """

    @property
    def tokenizer(self) -> Tokenizer: ...
    @property
    def labels(self) -> LabelTokens: ...
    @property
    def max_model_len(self) -> int: ...

    def setup(self) -> None:
        """Load weights and tokenizer; raise ValueError with a fix on bad configuration."""

    def score(self, tasks: Sequence[ScoringTask]) -> list[TaskResult]:
        """Results in task order. Raises if the batch could not be scored."""
        ...

    def health(self) -> str:
        """'ok', 'loading', or a message saying what is wrong."""
        ...


class LoadedState:
    """What every backend holds once `setup` has run: tokenizer, label tokens, context length.

    Backends fill `_tokenizer`, `_labels`, `_max_model_len` and `_status` in `setup`; reading
    the first two before then raises a RuntimeError that names the evaluator.
    """

    def __init__(self, config: EvaluatorConfig, cache_dir: Path) -> None:
        self.config = config
        self.cache_dir = cache_dir
        self._tokenizer: Any = None
        self._labels: LabelTokens | None = None
        self._max_model_len = 0
        self._status = "loading"

    @property
    def tokenizer(self) -> Tokenizer:
        return self._require(self._tokenizer)

    @property
    def labels(self) -> LabelTokens:
        return self._require(self._labels)

    @property
    def max_model_len(self) -> int:
        return self._max_model_len

    def _require(self, value: Any) -> Any:
        if value is None:
            raise RuntimeError(f"evaluator {self.config.name!r} is not loaded yet")
        return value


class EventLoopState(LoadedState):
    """LoadedState for engines that live on the service's event loop (vLLM's AsyncLLM, an
    HTTP client pool): they load and score only through `setup_async`/`score_async`, so the
    protocol's synchronous pair refuses, naming the one to await."""

    def setup(self) -> None:
        raise RuntimeError(
            f"the {self.config.backend} backend runs on the service's event loop: await setup_async()"
        )

    def score(self, tasks: Sequence[ScoringTask]) -> list[TaskResult]:
        raise RuntimeError(
            f"the {self.config.backend} backend runs on the service's event loop: await score_async()"
        )


async def score_now(backend: Backend, tasks: Sequence[ScoringTask]) -> list[TaskResult]:
    """Score on the engine's own terms: awaited on the event loop, or in a worker thread."""
    score_async = getattr(backend, "score_async", None)
    if score_async is not None:  # engines with their own event loop (vLLM, remote)
        return list(await score_async(tasks))
    return await asyncio.to_thread(backend.score, tasks)  # keeps the event loop free
