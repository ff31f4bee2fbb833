"""No evaluation computed twice: identical scoring work is computed once and fanned out, and
(with `cache.enabled`) a result computed before is served again.

An evaluation is identified by a content hash of the evaluator's identity (its settings,
the model files' sizes and times, its reload count, rlme's version), every token id of its
rendered sequences, the label token ids it reads and the tenant: a change of template,
system prompt, question, reference or weights changes the key, and one tenant's work is
never shared with another's (a hit would tell it that another tenant scored the same text),
unless `cache.share_across_tenants`. The value is the label log-probabilities only.

- Identical tasks of one request, and of requests in flight at once, share one computation
  (always on: scoring is deterministic, and the batch would compute the same numbers).
- The cache (off by default) keeps results in memory up to `max_bytes` (least recently used
  evicted, counted), or in Redis shared by every replica (`backend: redis`, `ttl_s`); a Redis
  that does not answer is a miss (and is not asked again for 2 s). Judges' generations are
  not cached (their verdict reads are).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from rlme.service.backends.base import LabelLogprobs, LabelTokens, ScoringTask, TaskResult
from rlme.service.metrics import Metrics
from rlme.service.settings import CacheConfig
from rlme.service.shared_store import Breaker

REDIS_RETRY_S = 2.0  # after a Redis failure, lookups are misses this long without asking

log = logging.getLogger(__name__)


@dataclass
class Tally:
    """What a request did not compute: evaluations fanned out from an identical one in flight
    (deduplicated) and evaluations served from the cache (cached)."""

    deduplicated: int = 0
    cached: int = 0


def task_key(identity: str, task: ScoringTask, default_labels: LabelTokens, tenant: str = "") -> str:
    """The content hash an evaluation is known by; `tenant` keeps one tenant's work apart from
    another's (else a hit, its usage count or its speed would tell a tenant that another
    one scored the same text)."""
    digest = hashlib.sha256(json.dumps([identity, tenant]).encode())
    for sequence in task.sequences:
        digest.update(b"|s")
        digest.update(json.dumps(sequence).encode())
    digest.update(b"|l" + json.dumps(task.labels_or(default_labels)).encode())
    return digest.hexdigest()


def encode(result: TaskResult) -> bytes:
    return json.dumps([list(score.logps) for score in result.scores]).encode()  # repr floats: exact


def decode(value: bytes, task: ScoringTask, default_labels: LabelTokens) -> TaskResult | None:
    """The stored result, or None (a miss) for a value that does not fit the task."""
    try:
        scores = tuple(LabelLogprobs(tuple(float(v) for v in logps)) for logps in json.loads(value))
    except (ValueError, TypeError):
        return None
    if len(scores) != len(task.sequences) or any(
        len(s.logps) != len(task.labels_or(default_labels)) for s in scores
    ):
        return None
    return TaskResult(scores=scores, cached_prompt_tokens=task.prompt_tokens)


class ResultCache:
    def __init__(self, config: CacheConfig, metrics: Metrics) -> None:
        self.config = config
        self.metrics = metrics
        self._memory: OrderedDict[str, bytes] = OrderedDict()
        self._bytes = 0
        self._inflight: dict[str, asyncio.Future[TaskResult]] = {}
        self._redis: Any = None
        if config.enabled and config.backend == "redis":
            import redis.asyncio as redis

            self._redis = redis.from_url(config.redis_url, socket_timeout=0.5, socket_connect_timeout=0.5)
        self._breaker = Breaker(REDIS_RETRY_S)

    def inflight(self, key: str) -> asyncio.Future[TaskResult] | None:
        return self._inflight.get(key)

    def start(self, key: str) -> asyncio.Future[TaskResult]:
        future: asyncio.Future[TaskResult] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        return future

    def finish(self, key: str, outcome: object) -> None:
        future = self._inflight.pop(key, None)
        if future is None or future.done():
            return
        if isinstance(outcome, TaskResult):
            future.set_result(outcome)
        else:  # the sharers compute it themselves (a cancellation never crosses requests)
            future.set_exception(RuntimeError(f"the request computing it did not finish: {outcome!r}"))
            future.exception()  # retrieved: no warning when no one else waited

    async def lookup(self, key: str, task: ScoringTask, default_labels: LabelTokens) -> TaskResult | None:
        """The stored result for `task` (counted as a hit), or None (a miss)."""
        if not self.config.enabled:
            return None
        value = await self.get(key)
        found = None if value is None else decode(value, task, default_labels)
        self.metrics.cache_lookups.labels("hit" if found is not None else "miss").inc()
        return found

    async def get(self, key: str) -> bytes | None:
        """The stored bytes; None when absent, or when a Redis cache does not answer."""
        if not self.config.enabled:
            return None
        if self._redis is None:
            if key in self._memory:
                self._memory.move_to_end(key)
            return self._memory.get(key)
        if not self._breaker.may_ask():
            return None
        try:
            value: bytes | None = await self._redis.get(self.config.key_prefix + key)
        except Exception as exc:  # a cache that does not answer is a miss
            self._failed(exc)
            return None
        self._breaker.answered()
        return value

    async def put(self, key: str, result: TaskResult) -> None:
        if not self.config.enabled:
            return
        value = encode(result)
        if self._redis is not None:
            if not self._breaker.may_ask():
                return
            try:
                await self._redis.set(self.config.key_prefix + key, value, ex=max(1, int(self.config.ttl_s)))
            except Exception as exc:
                self._failed(exc)
            return
        if key in self._memory:
            return
        self._memory[key] = value
        self._bytes += len(key) + len(value)
        while self._bytes > self.config.max_bytes and self._memory:
            old, old_value = self._memory.popitem(last=False)
            self._bytes -= len(old) + len(old_value)
            self.metrics.cache_evictions.inc()
        self.metrics.cache_bytes.set(self._bytes)

    def _failed(self, exc: Exception) -> None:
        self.metrics.state_store_errors.labels("cache").inc()
        if self._breaker.failed():  # once per outage, then not asked for REDIS_RETRY_S
            log.warning("reward cache at %s failed (%r): computing instead", self.config.redis_url, exc)

    async def aclose(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
