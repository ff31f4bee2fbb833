"""The dynamic batcher, driven by a test-double backend (no model needed)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence

import pytest

from rlme.service.backends.base import LabelLogprobs, ScoringTask, TaskResult
from rlme.service.batcher import Batcher
from rlme.service.errors import DeadlineExceeded, Overloaded, ServiceStopping
from rlme.service.prompting import LabelTokens
from rlme.service.settings import BatchingConfig

POISON = 666


class CharTokenizer:
    """Test double: no chat template, one token per character (the load-time label check runs)."""

    chat_template = None

    def encode(self, text: str, add_special_tokens: bool = False, **kwargs: object) -> list[int]:
        return [ord(c) for c in text]


class RecordingBackend:
    """Test double: logp_yes = -first token; records batch sizes; fails on POISON."""

    tokenizer = CharTokenizer()
    labels = LabelTokens((1,), (2,), ("Yes",), ("No",))
    max_model_len = 10_000

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.gate = threading.Event()
        self.gate.set()
        self.active = self.peak = 0  # batches inside score() now / at most
        self.closed = False
        self._lock = threading.Lock()

    async def aclose(self) -> None:
        self.closed = True

    def setup(self) -> None: ...

    def health(self) -> str:
        return "ok"

    def score(self, tasks: Sequence[ScoringTask]) -> list[TaskResult]:
        with self._lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
        self.gate.wait(timeout=10)
        with self._lock:
            self.active -= 1
        self.batches.append(len(tasks))
        if any(POISON in s for t in tasks for s in t.sequences):
            raise RuntimeError("poisoned input")
        return [TaskResult(tuple(LabelLogprobs((-float(s[0]), -1.0)) for s in t.sequences), 0) for t in tasks]


def task(first: int, length: int = 4, questions: int = 1) -> ScoringTask:
    sequence = (first, *range(1, length))
    return ScoringTask(sequences=(sequence,) * questions, prefix_len=length - 1)


def far() -> float:
    return time.monotonic() + 60


async def started(backend: RecordingBackend, concurrency: int = 1, **config: float) -> Batcher:
    batcher = Batcher("test", backend, BatchingConfig(**config), concurrency=concurrency)  # type: ignore[arg-type]
    batcher.start()
    return batcher


async def test_concurrent_submissions_share_one_batch() -> None:
    backend = RecordingBackend()
    batcher = await started(backend, max_wait_ms=50)
    results = await asyncio.gather(*(batcher.submit(task(i), far()) for i in range(10)))
    assert backend.batches == [10]
    assert [r.scores[0].logp_yes for r in results] == [-float(i) for i in range(10)]
    await batcher.stop()


async def test_flushes_at_max_batch_evaluations() -> None:
    backend = RecordingBackend()
    batcher = await started(backend, max_wait_ms=50, max_batch_evaluations=4)
    await asyncio.gather(*(batcher.submit(task(i), far()) for i in range(10)))
    assert backend.batches == [4, 4, 2]
    await batcher.stop()


async def test_flushes_before_the_token_budget() -> None:
    backend = RecordingBackend()
    batcher = await started(backend, max_wait_ms=50, max_batch_tokens=250)
    await asyncio.gather(*(batcher.submit(task(i, length=100), far()) for i in range(5)))
    assert backend.batches == [2, 2, 1]
    await batcher.stop()


async def test_a_groups_shared_prompt_counts_once_against_the_token_budget() -> None:
    """Five answers to one 90-token prompt: 500 prompt tokens, but 90 + 5 x 10 to compute."""
    backend = RecordingBackend()
    batcher = await started(backend, max_wait_ms=50, max_batch_tokens=250)
    prompt = tuple(range(3, 93))
    group = [
        ScoringTask(sequences=((*prompt, *range(100 + 10 * i, 110 + 10 * i)),), prefix_len=99)
        for i in range(5)
    ]
    await asyncio.gather(*(batcher.submit(t, far()) for t in group))
    assert backend.batches == [5]
    await batcher.stop()


async def test_full_queue_answers_overloaded_with_retry_after() -> None:
    backend = RecordingBackend()
    backend.gate.clear()  # the engine is busy
    batcher = await started(backend, max_wait_ms=0, max_queue_evaluations=4)
    busy = asyncio.ensure_future(batcher.submit(task(1), far()))
    await asyncio.sleep(0.05)  # the worker has taken it and is blocked in the engine
    queued = [asyncio.ensure_future(batcher.submit(task(2, questions=2), far())) for _ in range(2)]
    await asyncio.sleep(0)
    with pytest.raises(Overloaded) as raised:
        await batcher.submit(task(3), far())
    assert raised.value.status_code == 429 and raised.value.retry_after_s is not None
    backend.gate.set()
    await asyncio.gather(busy, *queued)  # nothing admitted was lost
    await batcher.stop()


async def test_work_past_its_deadline_gets_504_not_scored() -> None:
    backend = RecordingBackend()
    batcher = await started(backend, max_wait_ms=0)
    with pytest.raises(DeadlineExceeded) as raised:
        await batcher.submit(task(1), deadline=time.monotonic() - 1)
    assert raised.value.status_code == 504
    assert backend.batches == []
    await batcher.stop()


async def test_a_bad_item_fails_only_its_own_request() -> None:
    backend = RecordingBackend()
    batcher = await started(backend, max_wait_ms=50)
    outcomes = await asyncio.gather(
        *(batcher.submit(task(POISON if i == 3 else i), far()) for i in range(6)),
        return_exceptions=True,
    )
    assert isinstance(outcomes[3], RuntimeError)
    good = [o for i, o in enumerate(outcomes) if i != 3]
    assert [o.scores[0].logp_yes for o in good] == [0.0, -1.0, -2.0, -4.0, -5.0]  # type: ignore[union-attr]
    assert backend.batches[0] == 6  # tried together first, then one by one
    await batcher.stop()


async def test_stop_rejects_queued_work_cleanly() -> None:
    backend = RecordingBackend()
    backend.gate.clear()
    batcher = await started(backend, max_wait_ms=0)
    first = asyncio.ensure_future(batcher.submit(task(1), far()))
    await asyncio.sleep(0.05)
    second = asyncio.ensure_future(batcher.submit(task(2), far()))
    await asyncio.sleep(0)
    stopping = asyncio.ensure_future(batcher.stop())
    await asyncio.sleep(0.05)
    backend.gate.set()
    await stopping
    with pytest.raises(ServiceStopping):
        await second
    with pytest.raises(ServiceStopping):
        await batcher.submit(task(3), far())
    assert (await first).scores[0].logp_yes == -1.0  # the batch in the engine finished


@pytest.mark.parametrize("concurrency", [1, 3])
async def test_at_most_concurrency_batches_are_in_the_engine(concurrency: int) -> None:
    backend = RecordingBackend()
    backend.gate.clear()
    batcher = await started(backend, concurrency=concurrency, max_wait_ms=0, max_batch_evaluations=1)
    submitted = [asyncio.ensure_future(batcher.submit(task(i), far())) for i in range(6)]
    await asyncio.sleep(0.2)
    assert backend.active == concurrency  # the rest wait in the queue, not in the engine
    assert batcher.queued_evaluations == 6 - concurrency
    backend.gate.set()
    results = await asyncio.gather(*submitted)
    assert [r.scores[0].logp_yes for r in results] == [-float(i) for i in range(6)]
    assert backend.peak == concurrency
    await batcher.stop()


async def test_retire_waits_for_the_old_engines_batches_only() -> None:
    old, new = RecordingBackend(), RecordingBackend()
    old.gate.clear()
    batcher = await started(old, concurrency=2, max_wait_ms=0)
    on_old = asyncio.ensure_future(batcher.submit(task(1), far()))
    await asyncio.sleep(0.05)
    batcher.backend = new  # what a reload does
    on_new = await batcher.submit(task(2), far())  # scored by the new engine meanwhile
    assert on_new.scores[0].logp_yes == -2.0 and new.batches == [1]
    retiring = asyncio.ensure_future(batcher.retire(old))
    await asyncio.sleep(0.05)
    assert not retiring.done()  # the old engine still has a batch
    old.gate.set()
    await retiring
    assert on_old.done() and (await on_old).scores[0].logp_yes == -1.0
    await batcher.stop()


async def test_reload_swaps_engines_and_closes_the_old_one(monkeypatch: pytest.MonkeyPatch) -> None:
    from rlme.service import evaluators
    from rlme.service.metrics import Metrics
    from rlme.service.settings import EvaluatorConfig

    old, new = RecordingBackend(), RecordingBackend()
    monkeypatch.setattr(evaluators, "build_backend", lambda config, cache_dir: new)
    evaluator = evaluators.Evaluator(EvaluatorConfig(name="test"), old, Metrics(), cache_dir=None)  # type: ignore[arg-type]
    await evaluator.load()
    old.gate.clear()
    in_flight = asyncio.ensure_future(evaluator.batcher.submit(task(1), far()))
    await asyncio.sleep(0.05)
    reloading = asyncio.ensure_future(evaluator.reload("/models/next"))
    await asyncio.sleep(0.05)
    assert evaluator.backend is new and evaluator.config.model == "/models/next"
    assert not old.closed  # its batch is still running
    old.gate.set()
    await reloading
    assert old.closed and not new.closed
    assert (await in_flight).scores[0].logp_yes == -1.0
    await evaluator.batcher.stop()


async def test_a_late_generation_is_cancelled_in_the_engine() -> None:
    """vLLM and remote backends wrap each generation in until_deadline: past its deadline the
    engine's request is cancelled (vLLM aborts it), not left writing for no one."""
    from rlme.service.backends.base import GenerationResult, GenerationTask, SamplingSettings, until_deadline

    cancelled = asyncio.Event()

    async def endless() -> GenerationResult:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        raise AssertionError("not reached")

    task = GenerationTask((1, 2), 1, SamplingSettings(max_tokens=8), deadline=time.monotonic() + 0.1)
    started = time.monotonic()
    result = await until_deadline(task, endless())
    assert result.samples == () and cancelled.is_set()
    assert time.monotonic() - started < 1.5  # the deadline plus the grace of 0.5 s
