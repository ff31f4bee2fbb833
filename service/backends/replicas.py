"""A remote pool's replicas: their state, the errors that move work between them, and one
HTTP request to a replica (re-sent once when it met a connection the server had closed)."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

log = logging.getLogger(__name__)

# uvicorn, under vLLM's API server, closes a keep-alive connection idle for 5 s (the health
# check's own interval, and httpx's default expiry): our pool drops idle ones after 2 s, and
# a request that still meets one closed under it fails at once with one of these. It is sent
# again once; a failure after work may have been done (a body cut off after STALE_WITHIN_S),
# and a timeout, are never resent: they count against the replica.
_STALE_CONNECTION = (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError)
KEEPALIVE_EXPIRY_S = 2.0
STALE_WITHIN_S = 0.5


async def send(client: httpx.AsyncClient, method: str, url: str, **options: Any) -> httpx.Response:
    started = time.monotonic()
    try:
        return await client.request(method, url, **options)
    except _STALE_CONNECTION as exc:
        if time.monotonic() - started > STALE_WITHIN_S:
            raise
        log.debug("%s %s met a closed connection (%r); sending it again", method, url, exc)
        return await client.request(method, url, **options)


class ReplicaError(Exception):
    """The replica could not answer; the work may succeed on another one."""


class ReplicaBusy(ReplicaError):
    """The replica answered 429/408: back off and try again, but it is not broken."""


class ReplicaMismatch(ValueError):
    """The replica serves a different tokenizer or model; it must not be used."""


@dataclass
class Replica:
    url: str
    limit: asyncio.Semaphore
    up: bool = False
    rejected: bool = False  # serves another tokenizer or model: never used
    model: str | None = None
    max_model_len: int | None = None
    problem: str = "not checked yet"
    key: bytes = field(init=False)

    def __post_init__(self) -> None:
        self.key = self.url.encode()
