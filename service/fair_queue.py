"""A queue that serves tenants in weighted fair order (start-time fair queuing).

Each queued task gets a virtual start tag: max(virtual time, the tenant's previous
finish tag), and advances its tenant's finish tag by evaluations / weight. The task with
the smallest start tag is served next. A tenant that floods the queue only pushes its
own tags into the future; another tenant's new work starts at the current virtual time
and is served within about one batch, whatever the flood. Idle tenants bank no credit.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Generic, Protocol, TypeVar


class Fair(Protocol):
    tenant: str
    evaluations: int
    start_tag: float


T = TypeVar("T", bound=Fair)


class FairQueue(Generic[T]):
    def __init__(self) -> None:
        self._queues: dict[str, deque[T]] = {}
        self._last_finish: dict[str, float] = {}
        self._virtual_time = 0.0
        self._size = 0
        self._nonempty = asyncio.Event()

    def __len__(self) -> int:
        return self._size

    def put(self, entry: T, weight: float) -> None:
        start = max(self._virtual_time, self._last_finish.get(entry.tenant, 0.0))
        entry.start_tag = start
        self._last_finish[entry.tenant] = start + entry.evaluations / weight
        self._queues.setdefault(entry.tenant, deque()).append(entry)
        self._size += 1
        self._nonempty.set()

    def pop_nowait(self) -> T | None:
        heads = [queue[0] for queue in self._queues.values()]
        if not heads:
            return None
        entry = min(heads, key=lambda e: e.start_tag)
        queue = self._queues[entry.tenant]
        queue.popleft()
        if not queue:
            del self._queues[entry.tenant]
        self._virtual_time = max(self._virtual_time, entry.start_tag)
        self._size -= 1
        if self._size == 0:
            self._nonempty.clear()
        return entry

    async def get(self, timeout: float | None = None) -> T | None:
        """The next entry; None if none arrived within `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            entry = self.pop_nowait()
            if entry is not None:
                return entry
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return None
            try:
                await asyncio.wait_for(self._nonempty.wait(), remaining)
            except TimeoutError:
                return None

    def drain(self) -> list[T]:
        drained = []
        while (entry := self.pop_nowait()) is not None:
            drained.append(entry)
        return drained
