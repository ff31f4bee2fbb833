"""The run monitor's statistics shared by every replica through Redis (`state_store: redis`).

Each replica writes only its own part of a step (one hash field per (step, replica)), so
two replicas never overwrite each other and no write needs a lock; a reader merges the
parts of every replica (`StepStats.merged`). Every write also appends (field, version) to
the run's change log, so a replica catches up with the others by reading only what changed
since the version it saw last.

    {prefix}{len(tenant)}:{tenant}:{run}:parts   hash    "{step}|{replica}" -> StepStats JSON
    {prefix}{len(tenant)}:{tenant}:{run}:log     zset    field, scored by the run's version
    {prefix}{len(tenant)}:{tenant}:{run}:v       counter the run's version
    {prefix}epoch                                  changes when Redis lost its data (shared_store.py)

Failure: Redis calls wait at most `timeout_s`; after a failure the store is not asked again
for `retry_s`, and the replica's own parts written meanwhile are pushed when it answers
again (they are also in the replica's own SQLite file, so nothing acknowledged is lost).
Until then the replica's view is its own parts plus what it last read of the others. A
Redis that comes back empty (a new epoch) is given every part each replica holds again.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from rlme.service.monitoring.stats import StepStats
from rlme.service.shared_store import Breaker, epoch, redis_client

log = logging.getLogger(__name__)

RunKey = tuple[str, str]  # (tenant, run id)

# Write one part and log it under the run's next version, atomically.
_PUT = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local version = redis.call('INCR', KEYS[3])
redis.call('ZADD', KEYS[2], version, ARGV[1])
local ttl = tonumber(ARGV[3])
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ttl) end
return version
"""


class SharedRuns:
    """The parts of every run's steps that the other replicas wrote, kept up to date."""

    def __init__(
        self,
        url: str,
        prefix: str,
        replica: str,
        ttl_s: float,
        retry_s: float,
        timeout_s: float,
        on_error: Callable[[bool], None] | None = None,
        max_steps: int = 1000,
    ) -> None:
        self.max_steps = max_steps
        self._redis: Any = redis_client(url, timeout_s)
        self._put = self._redis.register_script(_PUT)
        self.prefix, self.replica, self.url = prefix, replica, url
        self._ttl_ms = int(ttl_s * 1000)
        self.breaker = Breaker(retry_s)
        self._on_error = on_error  # called with True when it answers again, False on a failure
        self._seen: dict[RunKey, int] = {}  # version of each run read so far
        self._others: dict[RunKey, dict[int, dict[str, StepStats]]] = {}  # step -> replica -> part
        self._unsent: dict[RunKey, dict[int, StepStats]] = {}  # own parts not yet written
        self._own: dict[RunKey, dict[int, StepStats]] = {}  # own parts written (to write again)
        self._epoch: str | None = None

    def others(self, run: RunKey) -> dict[int, dict[str, StepStats]]:
        """The other replicas' parts of the run, as of now (or as last read, while down)."""
        self._sync(run)
        return self._others.get(run, {})

    def exists(self, run: RunKey) -> bool:
        return bool(self.others(run))

    def put(self, run: RunKey, step: int, stats: StepStats) -> None:
        """This replica's part of a step; kept to send later while the store is down."""
        self._unsent.setdefault(run, {})[step] = stats
        own = self._own.setdefault(run, {})
        own[step] = stats
        _trim(own, self.max_steps)
        self._sync(None)

    def adopt(self, run: RunKey, steps: dict[int, StepStats]) -> None:
        """This replica's parts of a run read back from its own file: written again if the
        store loses its data."""
        self._own[run] = dict(steps)

    def forget(self, run: RunKey) -> None:
        """The run left this replica's memory: drop what was read of it."""
        self._seen.pop(run, None)
        self._others.pop(run, None)
        self._own.pop(run, None)

    def close(self) -> None:
        self._redis.close()

    # --- Redis -------------------------------------------------------------------------------

    def _key(self, run: RunKey) -> str:
        tenant, run_id = run
        return f"{self.prefix}{len(tenant)}:{tenant}:{run_id}"

    def _flush(self) -> None:
        while self._unsent:
            run, parts = next(iter(self._unsent.items()))
            key = self._key(run)
            while parts:
                step, stats = next(iter(parts.items()))
                field = f"{step}|{self.replica}"
                text = json.dumps(stats.to_json())
                self._put(keys=[f"{key}:parts", f"{key}:log", f"{key}:v"], args=[field, text, self._ttl_ms])
                del parts[step]
            del self._unsent[run]

    def _catch_up(self, run: RunKey) -> None:
        key = self._key(run)
        since = self._seen.get(run, 0)
        version = int(self._redis.get(f"{key}:v") or 0)
        if version < since:  # the run's keys expired or were lost: read it anew, write ours again
            since, self._others[run] = 0, {}
            self._unsent.setdefault(run, {}).update(self._own.get(run, {}))
            self._flush()
            version = int(self._redis.get(f"{key}:v") or 0)
        changed = self._redis.zrangebyscore(f"{key}:log", f"({since}", "+inf", withscores=True)
        if not changed:  # nothing new (an unknown run leaves no entry behind)
            if run in self._others:
                self._seen[run] = max(since, version)
            return
        fields = [f.decode() for f, _ in changed if not f.decode().endswith(f"|{self.replica}")]
        texts = self._redis.hmget(f"{key}:parts", fields) if fields else []
        parts = self._others.setdefault(run, {})
        for field, text in zip(fields, texts, strict=True):
            if text is None:  # expired between the two reads
                continue
            step, replica = field.split("|", 1)
            try:
                parts.setdefault(int(step), {})[replica] = StepStats.from_json(json.loads(text))
            except (ValueError, TypeError, AttributeError, KeyError) as exc:
                log.warning("shared runs: part %s of run %r is unreadable, skipped: %s", field, run, exc)
        self._seen[run] = int(max(score for _, score in changed))
        _trim(parts, self.max_steps)

    @property
    def up(self) -> bool:
        return self.breaker.up

    def _sync(self, run: RunKey | None) -> None:
        if not self.breaker.may_ask():
            return
        try:
            now = epoch(self._redis, self.prefix)
            if now != self._epoch:
                if self._epoch is not None:
                    log.warning(
                        "shared runs at %s lost its data: writing this replica's parts again", self.url
                    )
                self._epoch, self._seen, self._others = now, {}, {}
                for known, parts in self._own.items():
                    self._unsent.setdefault(known, {}).update(parts)
            self._flush()
            if run is not None:
                self._catch_up(run)
        except Exception as exc:  # redis errors, timeouts, a broken connection
            self._failed(exc)
            return
        self._answered()

    def _failed(self, exc: Exception) -> None:
        if self.breaker.failed():
            log.error("shared runs at %s failed (%r): this replica's view only, retrying", self.url, exc)
        if self._on_error is not None:
            self._on_error(False)

    def _answered(self) -> None:
        if self.breaker.answered():
            log.warning("shared runs at %s answer again; own parts sent, others read", self.url)
            if self._on_error is not None:
                self._on_error(True)


def _trim(steps: dict[int, Any], keep: int) -> None:
    """Only the latest `keep` steps stay in memory, as in the monitor."""
    for step in sorted(steps)[: max(0, len(steps) - keep)]:
        del steps[step]
