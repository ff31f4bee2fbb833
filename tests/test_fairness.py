"""Weighted fair scheduling across tenants, with a test-double engine whose batches take
a fixed time (like a GPU, where one more sequence in a batch costs little)."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Sequence

import pytest

from rlme.service.backends.base import LabelLogprobs, ScoringTask, TaskResult
from rlme.service.batcher import Batcher
from rlme.service.fair_queue import FairQueue
from rlme.service.prompting import LabelTokens
from rlme.service.settings import BatchingConfig

BATCH_SECONDS = 0.05
B_REQUESTS, B_PERIOD = 12, 0.025
A_PER_B = 20  # tenant A sends 20x tenant B's load, well past the engine's capacity


class FixedCostBackend:
    """Test double: every batch takes BATCH_SECONDS, whatever its size."""

    tokenizer = None
    labels = LabelTokens((1,), (2,), ("Yes",), ("No",))
    max_model_len = 10_000

    def setup(self) -> None: ...

    def health(self) -> str:
        return "ok"

    def score(self, tasks: Sequence[ScoringTask]) -> list[TaskResult]:
        time.sleep(BATCH_SECONDS)
        return [TaskResult((LabelLogprobs((-1.0, -2.0)),), 0) for _ in tasks]


def one_task() -> ScoringTask:
    return ScoringTask(sequences=((1, 2, 3),), prefix_len=2)


async def b_latencies(batcher: Batcher, flood_tenant: str | None) -> list[float]:
    far = time.monotonic() + 120
    flood: list[asyncio.Future[TaskResult]] = []
    latencies: list[float] = []

    async def timed() -> None:
        started = time.perf_counter()
        await batcher.submit(one_task(), far, "B")
        latencies.append(time.perf_counter() - started)

    calls = []
    for _ in range(B_REQUESTS):
        if flood_tenant is not None:
            flood += [
                asyncio.ensure_future(batcher.submit(one_task(), far, flood_tenant)) for _ in range(A_PER_B)
            ]
        calls.append(asyncio.ensure_future(timed()))
        await asyncio.sleep(B_PERIOD)
    await asyncio.gather(*calls, *flood)
    return latencies


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1]


async def run(flood_tenant: str | None) -> float:
    config = BatchingConfig(max_batch_evaluations=16, max_wait_ms=20, max_queue_evaluations=100_000)
    batcher = Batcher("test", FixedCostBackend(), config)
    batcher.start()
    try:
        return p95(await b_latencies(batcher, flood_tenant))
    finally:
        await batcher.stop()


async def test_a_flooding_tenant_cannot_push_anothers_latency_up() -> None:
    alone = await run(flood_tenant=None)
    with_flood = await run(flood_tenant="A")
    assert with_flood <= 2 * alone, (alone, with_flood)


async def test_without_separate_tenants_the_flood_would_win() -> None:
    """The same load, all as one tenant (FIFO): shows the test above can fail."""
    alone = await run(flood_tenant=None)
    fifo = await run(flood_tenant="B")
    assert fifo > 3 * alone, (alone, fifo)


class Entry:
    def __init__(self, tenant: str, evaluations: int = 1) -> None:
        self.tenant, self.evaluations, self.start_tag = tenant, evaluations, 0.0


def test_weights_share_the_engine_in_proportion() -> None:
    queue: FairQueue[Entry] = FairQueue()
    for _ in range(30):
        queue.put(Entry("heavy"), weight=2.0)
        queue.put(Entry("light"), weight=1.0)
    served = [queue.pop_nowait().tenant for _ in range(30)]  # type: ignore[union-attr]
    assert served.count("heavy") == 20 and served.count("light") == 10


def test_an_idle_tenant_banks_no_credit() -> None:
    queue: FairQueue[Entry] = FairQueue()
    for _ in range(10):
        queue.put(Entry("busy"), weight=1.0)
    for _ in range(5):
        queue.pop_nowait()
    for _ in range(10):
        queue.put(Entry("late"), weight=1.0)  # arrives now: starts at the current virtual time
    served = [queue.pop_nowait().tenant for _ in range(10)]  # type: ignore[union-attr]
    assert served.count("late") == 5  # alternates with busy; not 10 in a row


@pytest.mark.parametrize("timeout", [0.0, 0.01])
async def test_get_times_out_empty(timeout: float) -> None:
    assert await FairQueue[Entry]().get(timeout) is None
