"""One dynamic batcher per evaluator: work from all concurrent requests, one engine.

Callers `submit()` work and await its result: a ScoringTask (one item's questions, one
prefill each) or a GenerationTask (a judge prompt and its N samples). A batch holds one
kind of work, so the engine gets its prefills and its decoding in separate calls. Tasks wait
in a FairQueue, so tenants are served in weighted fair order. A worker
takes the first queued task, waits up to `max_wait_ms` for company, and flushes when the
batch reaches `max_batch_evaluations` or the next task would pass `max_batch_tokens` (tokens
to compute, shared prefixes once: `new_tokens`).
The backend runs in a worker thread so the event loop keeps accepting requests. Up to
`concurrency` batches are in the engine at once (1 for transformers; engines with their
own scheduler, vLLM and remote servers, overlap several); the next batch is collected
only when a slot is free, so batches grow while the engine is busy.

Admission is bounded: beyond `max_queue_evaluations` queued evaluations, `submit`
raises Overloaded (429). At its deadline a caller gets DeadlineExceeded (504), wherever its
task is: a queued task is then skipped, a judge's generation stops at its next decode step. If a batch
fails, its tasks are retried one by one so one bad item fails only its own request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from rlme.service.backends.base import Backend, GenerationResult, ScoringTask, TaskResult, Work, run_batch
from rlme.service.errors import DeadlineExceeded, Overloaded, ServiceError, ServiceStopping
from rlme.service.fair_queue import FairQueue
from rlme.service.prompting import common_prefix_len
from rlme.service.settings import BatchingConfig

log = logging.getLogger(__name__)


Outcome = TaskResult | GenerationResult


def new_tokens(task: Work, previous: Work | None) -> int:
    """Tokens `task` adds to a batch whose last task is `previous`: for a scoring task, its own
    prefix tree (the item's shared prefix once) less the prefix its first evaluation shares
    with `previous`'s (a GRPO group's prompt is counted once, as the engines compute it); for
    a judge prompt, its tokens. A batch is cut at max_batch_tokens of these."""
    if not isinstance(task, ScoringTask):
        return task.prompt_tokens
    own = task.prompt_tokens - task.shared_tokens
    if isinstance(previous, ScoringTask):
        own -= common_prefix_len((previous.sequences[0], task.sequences[0]))
    return max(own, 1)


@dataclass
class Pending:
    task: Work
    future: asyncio.Future[Outcome]
    enqueued_at: float
    deadline: float
    tenant: str = "anonymous"
    evaluations: int = field(init=False)
    start_tag: float = 0.0  # set by the FairQueue
    queued: bool = True  # counted in queued_evaluations until collected or expired

    def __post_init__(self) -> None:
        self.evaluations = self.task.evaluations


BatchObserver = Callable[[int, int, float], None]  # (evaluations, tasks, seconds)


class Batcher:
    def __init__(
        self,
        name: str,
        backend: Backend,
        config: BatchingConfig,
        on_batch: BatchObserver | None = None,
        concurrency: int = 1,
        on_wait: Callable[[float], None] | None = None,  # seconds each task waited for its batch
    ) -> None:
        self.name = name
        self.backend = backend  # swapped by a reload; each batch keeps the one it started on
        self.config = config
        self.on_batch = on_batch
        self.on_wait = on_wait
        self._queue: FairQueue[Pending] = FairQueue()
        self._carry: Pending | None = None  # took from the queue, did not fit the last batch
        self.queued_evaluations = 0
        self._worker: asyncio.Task[None] | None = None
        self._slots = asyncio.Semaphore(concurrency)
        self._in_flight: dict[asyncio.Task[None], Backend] = {}  # batches in an engine
        self._stopping = False

    def start(self) -> None:
        self._worker = asyncio.create_task(self._run(), name=f"batcher-{self.name}")

    async def stop(self, grace_s: float = 30.0) -> None:
        """Stop accepting work; give the batches in the engine `grace_s` to finish, then ask the
        engine to abort them (a judge stops at its next decode step); fail what is queued."""
        self._stopping = True
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        if self._in_flight:
            _, running = await asyncio.wait(list(self._in_flight), timeout=grace_s)
            if running:
                log.warning(
                    "evaluator %r: %d batches still running at shutdown; aborting", self.name, len(running)
                )
                for backend in set(self._in_flight.values()):
                    abort = getattr(backend, "abort", None)
                    if abort is not None:
                        abort()
                # A prefill cannot be interrupted, but it is bounded by max_batch_tokens.
                await asyncio.wait(running, timeout=max(5.0, grace_s))
        for pending in self._drain():
            if not pending.future.done():
                pending.future.set_exception(ServiceStopping())

    async def retire(self, backend: Backend) -> None:
        """Wait until no batch is left in `backend` (one a reload swapped out)."""
        running = [task for task, engine in self._in_flight.items() if engine is backend]
        if running:
            await asyncio.wait(running)

    def _drain(self) -> list[Pending]:
        drained = [self._carry] if self._carry else []
        self._carry = None
        return drained + self._queue.drain()

    def retry_after_s(self) -> float:
        """A rough time for the queue to halve, for Retry-After."""
        return max(1.0, min(30.0, self.queued_evaluations / max(1, self.config.max_batch_evaluations)))

    async def submit(
        self, task: Work, deadline: float, tenant: str = "anonymous", weight: float = 1.0
    ) -> Outcome:
        if self._stopping:
            raise ServiceStopping()
        evaluations = task.evaluations
        if self.queued_evaluations + evaluations > self.config.max_queue_evaluations:
            raise Overloaded(
                f"evaluator {self.name!r} has {self.queued_evaluations} evaluations queued "
                f"(limit {self.config.max_queue_evaluations})",
                retry_after_s=self.retry_after_s(),
            )
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        now = time.monotonic()
        pending = Pending(task=task, future=future, enqueued_at=now, deadline=deadline, tenant=tenant)
        self.queued_evaluations += evaluations
        self._queue.put(pending, weight)
        try:
            # The deadline holds wherever the task is: queued, or in the engine.
            return await asyncio.wait_for(future, timeout=max(0.0, deadline - now))
        except (TimeoutError, asyncio.TimeoutError):  # one class from Python 3.11
            if pending.queued:  # never reached the engine: it no longer counts as queued
                pending.queued = False
                self.queued_evaluations -= evaluations
            raise DeadlineExceeded(time.monotonic() - now) from None

    async def _next(self, timeout: float | None) -> Pending | None:
        if self._carry is not None:
            pending, self._carry = self._carry, None
            return pending
        return await self._queue.get(timeout)

    async def _collect(self) -> list[Pending]:
        first = await self._next(None)
        assert first is not None
        batch, evaluations, tokens = [first], first.evaluations, new_tokens(first.task, None)
        flush_at = time.monotonic() + self.config.max_wait_ms / 1000
        while evaluations < self.config.max_batch_evaluations:
            pending = await self._next(flush_at - time.monotonic())
            if pending is None:
                break
            cost = new_tokens(pending.task, batch[-1].task)
            too_many = evaluations + pending.evaluations > self.config.max_batch_evaluations
            too_long = tokens + cost > self.config.max_batch_tokens
            other_kind = type(pending.task) is not type(first.task)
            if too_many or too_long or other_kind:
                self._carry = pending
                break
            batch.append(pending)
            evaluations += pending.evaluations
            tokens += cost
        return batch

    async def _run(self) -> None:
        while True:
            await self._slots.acquire()  # collect only when the engine can take the batch
            try:
                batch = await self._collect()
            except BaseException:
                self._slots.release()
                raise
            for pending in batch:
                if pending.queued:
                    pending.queued = False
                    self.queued_evaluations -= pending.evaluations
            now = time.monotonic()
            live = []
            for pending in batch:
                if pending.future.done():  # the caller went away
                    continue
                if now > pending.deadline:
                    pending.future.set_exception(DeadlineExceeded(now - pending.enqueued_at))
                    continue
                live.append(pending)
                if self.on_wait is not None:
                    self.on_wait(now - pending.enqueued_at)
            if not live:
                self._slots.release()
                continue
            # A task of its own: stopping the worker must not abandon a batch already accepted.
            task = asyncio.create_task(self._score(live, self.backend), name=f"batch-{self.name}")
            self._in_flight[task] = self.backend
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        del self._in_flight[task]
        self._slots.release()

    async def _score(self, batch: list[Pending], backend: Backend) -> None:
        started = time.perf_counter()
        try:
            results: list[Outcome] = list(await run_batch(backend, [p.task for p in batch]))
        except ServiceError as exc:  # the engine stopping, say: the same answer for the whole batch
            for pending in batch:
                _settle(pending, exc)
            return
        except Exception as exc:  # isolate the bad item: score each task on its own
            if len(batch) == 1:
                log.warning("evaluator %r failed a task: %s", self.name, exc)
                _settle(batch[0], exc)
                return
            log.warning("evaluator %r failed a batch of %d; retrying one by one", self.name, len(batch))
            for pending in batch:
                await self._score([pending], backend)
            return
        if self.on_batch is not None:
            evaluations = sum(p.evaluations for p in batch)
            self.on_batch(evaluations, len(batch), time.perf_counter() - started)
        for pending, result in zip(batch, results, strict=True):
            _settle(pending, result)


def _settle(pending: Pending, outcome: Outcome | BaseException) -> None:
    if pending.future.done():
        return
    if isinstance(outcome, BaseException):
        pending.future.set_exception(outcome)
    else:
        pending.future.set_result(outcome)
