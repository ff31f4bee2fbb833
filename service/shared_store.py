"""What every user of the shared Redis state store needs (`state_store: redis`): a client that
waits at most `timeout_s` a call, and the store's epoch, a random id written once, which
changes when Redis has lost its data (restarted without persistence, flushed, replaced); a
replica that sees it change writes again what it holds, so the store's state resumes."""

from __future__ import annotations

import uuid
from typing import Any


def redis_client(url: str, timeout_s: float) -> Any:
    import redis

    return redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)


def epoch(client: Any, prefix: str) -> str:
    """The store's epoch (made now if it has none)."""
    key = f"{prefix}epoch"
    client.set(key, uuid.uuid4().hex, nx=True)
    value = client.get(key)
    return value.decode() if isinstance(value, bytes) else str(value)
