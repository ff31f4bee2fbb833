"""What every user of a shared Redis store needs (run statistics, calibrations, the reward
cache): a client that waits at most `timeout_s` a call, a breaker so that a store which
failed is not asked again for `retry_s` (each call would wait out its timeout), and the
store's epoch, a random id written once, which changes when Redis has lost its data
(restarted without persistence, flushed, replaced); a replica that sees it change writes
again what it holds, so the store's state resumes."""

from __future__ import annotations

import time
import uuid
from typing import Any


class Breaker:
    """Up until a failure; then not asked again for `retry_s`, when one call may try."""

    def __init__(self, retry_s: float) -> None:
        self.retry_s = retry_s
        self.up = True
        self._until = 0.0

    def may_ask(self) -> bool:
        return self.up or time.monotonic() >= self._until

    def failed(self) -> bool:
        """Record a failure; True when the store was up until now."""
        was_up, self.up = self.up, False
        self._until = time.monotonic() + self.retry_s
        return was_up

    def answered(self) -> bool:
        """Record an answer; True when the store was down until now."""
        was_down, self.up = not self.up, True
        return was_down


def redis_client(url: str, timeout_s: float) -> Any:
    import redis

    return redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)


def epoch(client: Any, prefix: str) -> str:
    """The store's epoch (made now if it has none)."""
    key = f"{prefix}epoch"
    client.set(key, uuid.uuid4().hex, nx=True)
    value = client.get(key)
    return value.decode() if isinstance(value, bytes) else str(value)
