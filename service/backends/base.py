"""The evaluator backend protocol, and the data that crosses it.

A backend turns token sequences into the log-probabilities of the Yes and No labels at
the next position. Everything else (rendering, batching, rewards) happens outside it,
so a new engine is one small class (LitServe's `LitAPI` is the model).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
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
    # Token ids whose log-probs are summed per label, at the next position: None means the
    # evaluator's (yes, no); a verdict reads e.g. ("1", ..., "5") or ("A", "B").
    label_ids: tuple[tuple[int, ...], ...] | None = None

    @property
    def evaluations(self) -> int:
        return len(self.sequences)

    @property
    def prompt_tokens(self) -> int:
        return sum(len(s) for s in self.sequences)

    @property
    def shared_tokens(self) -> int:
        """Tokens not recomputed when the prefix is shared."""
        return (len(self.sequences) - 1) * self.prefix_len

    def split(self) -> list[ScoringTask]:
        """One task per question, each scored from scratch."""
        return [ScoringTask((s,), len(s) - 1, self.label_ids) for s in self.sequences]

    def labels_or(self, default: LabelTokens) -> tuple[tuple[int, ...], ...]:
        return self.label_ids or (default.yes_ids, default.no_ids)

    @classmethod
    def sharing(
        cls, sequences: Sequence[Sequence[int]], label_ids: tuple[tuple[int, ...], ...] | None = None
    ) -> ScoringTask:
        """A task over `sequences` with their shared prefix, keeping at least one token per
        sequence after it: that token's logits are the answer."""
        prefix_len = min(common_prefix_len(sequences), min(len(s) for s in sequences) - 1)
        return cls(tuple(tuple(s) for s in sequences), prefix_len, label_ids)


def build_task(
    tokenizer: Tokenizer,
    system_prompt: str,
    item: Item,
    questions: list[MetaQuestion],
    template_kwargs: Mapping[str, Any] | None = None,
) -> ScoringTask:
    """One item's questions as full token sequences, and the prefix they share."""
    return ScoringTask.sharing(
        [tokenize(tokenizer, system_prompt, item, q, template_kwargs) for q in questions]
    )


@dataclass(frozen=True)
class LabelLogprobs:
    """Full-vocabulary log-probs of each label (logsumexp over its token variants), in the
    order of the task's labels: (yes, no) for a meta-question."""

    logps: tuple[float, ...]

    @property
    def mass(self) -> float:
        """Full-vocabulary probability of all the labels together."""
        return sum(math.exp(v) for v in self.logps)

    @property
    def logp_yes(self) -> float:
        return self.logps[0]

    @property
    def logp_no(self) -> float:
        return self.logps[1]


@dataclass(frozen=True)
class SamplingSettings:
    """How a judge writes: the usual sampling knobs, shared by every backend."""

    max_tokens: int
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass(frozen=True)
class GenerationTask:
    """`samples` continuations of one prompt (a judge writing its rationale)."""

    prompt: tuple[int, ...]
    samples: int
    sampling: SamplingSettings
    # time.monotonic() after which nobody waits for it: an engine stops decoding it there.
    deadline: float | None = field(default=None, compare=False)

    @property
    def evaluations(self) -> int:
        return self.samples

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt)


@dataclass(frozen=True)
class Generation:
    text: str  # cut before the first stop string, which is not included
    tokens: int  # generated tokens, the stop string's included
    finish_reason: str  # "stop" (a stop string or end of turn) or "length"


@dataclass(frozen=True)
class GenerationResult:
    samples: tuple[Generation, ...]


Work = ScoringTask | GenerationTask


@dataclass(frozen=True)
class TaskResult:
    scores: tuple[LabelLogprobs, ...]  # one per question, in order
    cached_prompt_tokens: int


class Backend(Protocol):
    """What the service needs from an evaluator engine.

    `setup`, `score` and `generate` block and are called in a worker thread. An engine that
    is asynchronous by nature (vLLM's AsyncLLM, HTTP to remote servers) may also define
    `async def setup_async()`, `async def score_async(tasks)` and `generate_async`, which are then
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

    def generate(self, tasks: Sequence[GenerationTask]) -> list[GenerationResult]:
        """Continuations in task order (engines on the event loop: `generate_async`)."""
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

    def generate(self, tasks: Sequence[GenerationTask]) -> list[GenerationResult]:
        raise RuntimeError(
            f"the {self.config.backend} backend runs on the service's event loop: await generate_async()"
        )


async def score_now(backend: Backend, tasks: Sequence[ScoringTask]) -> list[TaskResult]:
    """Score on the engine's own terms: awaited on the event loop, or in a worker thread."""
    return await _run(backend, "score", tasks)


async def run_batch(backend: Backend, work: Sequence[Work]) -> list[TaskResult] | list[GenerationResult]:
    """A batch of one kind of work (the batcher never mixes them), on the engine's own terms."""
    return await _run(backend, "generate" if isinstance(work[0], GenerationTask) else "score", work)


async def _run(backend: Backend, method: str, work: Sequence[Work]) -> Any:
    run_async = getattr(backend, f"{method}_async", None)
    if run_async is not None:  # engines with their own event loop (vLLM, remote)
        return list(await run_async(work))
    return await asyncio.to_thread(getattr(backend, method), work)  # keeps the event loop free


def flat_label_ids(labels: tuple[tuple[int, ...], ...]) -> list[int]:
    """Every label's token ids once, for engines that take one list of ids to report."""
    return list(dict.fromkeys(i for ids in labels for i in ids))


def logsumexp(values: Sequence[float]) -> float:
    """log(sum(exp(v))) of a label's token variants, safe when all are -inf."""
    top = max(values)
    if top == -math.inf:
        return top
    return top + math.log(sum(math.exp(v - top) for v in values))


# A late generation is cancelled this long after its caller's deadline, so the batcher has
# always answered that caller 504 first and the empty result reaches no one.
_LATE_GRACE_S = 0.5


def late_at(task: GenerationTask) -> float:
    """When an engine may stop a task's generation (monotonic; inf: never)."""
    return math.inf if task.deadline is None else task.deadline + _LATE_GRACE_S


async def until_deadline(task: GenerationTask, work: Awaitable[GenerationResult]) -> GenerationResult:
    """`work`, cancelled once nobody waits for it (the task's deadline has passed): cancelling
    aborts the request in the engine (vLLM aborts a cancelled generate; a remote server, one
    whose connection closed), so a late judge does not keep writing for no one."""
    if task.deadline is None:
        return await work
    left = late_at(task) - time.monotonic()
    try:
        return await asyncio.wait_for(work, timeout=max(0.0, left))
    except (TimeoutError, asyncio.TimeoutError):  # one class from Python 3.11
        return GenerationResult(samples=())


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """The text before the first stop string, and whether one was found."""
    found = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return (text[: min(found)], True) if found else (text, False)
