"""The run monitor: per-run, per-step statistics of the rewards the service hands out, the
hacking signals read from them, and the run's alarm (ok / watch / alarm).

Requests that carry `run` (and `step`; without one, the run's latest step) are observed
after they are scored; a request without `run` is not touched. A run belongs to the tenant
whose requests tagged it: runs are keyed by (tenant, run id), so another tenant's request
with the same id starts that tenant's own run and can neither read nor move this one.

Statistics persist in SQLite (one row per step, written as the step changes), so a
restart loses nothing; memory holds at most `max_runs` runs (least recently used evicted)
and each run's latest `max_steps` steps. An evicted run is read back from SQLite when it
is asked for or written again. A file that is not a usable database is left untouched:
the monitor keeps runs in memory only and says so (`store_error`, /health/ready, a metric).

With `state_store: redis` every replica also writes its part of each step to Redis and
reads the others' (monitoring/shared.py): the statistics, alarm and page of a run whose
steps landed on several replicas are those one replica would have computed.

Prometheus sees how many runs of each tenant are at each alarm level (`rlme_runs`); run
ids, which callers choose, become label values only when `monitoring.run_metric_labels`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
import time
from collections import OrderedDict
from pathlib import Path

from rlme.client.wire import Item, ItemResult, RewardRequest
from rlme.client.wire.runs import Alarm, RunReport
from rlme.service.metrics import Metrics
from rlme.service.monitoring.canaries import prompt_text
from rlme.service.monitoring.probes import AnchorPair, CanaryScore, mean_p_yes
from rlme.service.monitoring.shared import SharedRuns
from rlme.service.monitoring.signals import LEVELS, Thresholds, run_alarm, signals
from rlme.service.monitoring.stats import StepStats
from rlme.service.settings import MonitoringConfig

log = logging.getLogger(__name__)


RunKey = tuple[str, str]  # (tenant, run id)


class RunMonitor:
    def __init__(
        self,
        config: MonitoringConfig,
        db_path: Path | None,
        metrics: Metrics,
        shared: SharedRuns | None = None,
    ) -> None:
        self.config = config
        self.shared = shared
        self.thresholds: Thresholds = config  # the settings' section is a Thresholds
        self._runs: OrderedDict[RunKey, dict[int, StepStats]] = OrderedDict()
        self._levels: dict[RunKey, Alarm] = {}  # the alarm of each run in memory
        self._metrics = metrics
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self.db_path = db_path
        self.store_error: str | None = None
        if config.enabled and db_path is not None:
            try:
                self._db = _open(db_path)
            except (sqlite3.Error, OSError) as exc:
                self.store_error = (
                    f"{db_path} is not a usable SQLite database ({exc}); runs are kept in memory only. "
                    f"Fix: stop the service, move the file aside (mv {db_path} {db_path}.broken), start it"
                )
                log.error("run monitor: %s", self.store_error)
                metrics.store_broken.labels("runs").set(1)

    def observe(
        self, request: RewardRequest, results: list[ItemResult], tenant: str = "anonymous"
    ) -> tuple[Alarm, int] | None:
        """Add a scored request of a run; the run's alarm after it and the step it counted
        toward (None: not a run's)."""
        if request.run is None or not self.config.enabled:
            return None
        run = (tenant, request.run)
        with self._lock:
            steps = self._steps(run)
            # Without a step: the run's latest, as every replica sees it.
            step = request.step if request.step is not None else max(self._view(run), default=0)
            stats = steps.setdefault(step, StepStats())
            for item, result in zip(request.items, results, strict=True):
                _add(stats, step, item, result)
            while len(steps) > self.config.max_steps:
                del steps[min(steps)]
            self._save(run, step, stats)
        return self._alarm(run), step

    def observe_probes(
        self,
        run_id: str,
        step: int,
        anchors: list[AnchorPair],
        canaries: list[CanaryScore],
        tenant: str = "anonymous",
    ) -> None:
        """Add the anchor re-scores and canaries of a run's step (scored after its request)."""
        run = (tenant, run_id)
        with self._lock:
            steps = self._steps(run)
            if step not in steps:  # evicted while the probes were scored
                return
            stats = steps[step]
            for pair in anchors:
                stats.add_anchor(pair.anchored, pair.unanchored)
            for c in canaries:
                stats.add_canary(step, c.kind, c.prompt, c.p_yes, c.real_p_yes, c.response)
            self._save(run, step, stats)
        self._alarm(run)

    def report(self, run_id: str, tenant: str = "anonymous") -> RunReport | None:
        """The tenant's run of that id: its steps, signals, alarm and samples (None: no such run)."""
        run = (tenant, run_id)
        with self._lock:
            if run not in self._runs and not self._stored(run):
                return None
            steps = self._view(run)
            summaries = [steps[s].summary(s) for s in sorted(steps)]
            recent = sorted(steps)[-self.thresholds.window :]
            samples = [sample for s in recent for sample in steps[s].sample_list()]
        found = signals(summaries, self.thresholds)
        first = next((s.step for s in summaries if s.alarm == "alarm"), None)
        return RunReport(
            run=run_id,
            alarm=run_alarm(found),
            first_alarm_step=first,
            signals=found,
            steps=summaries,
            samples=samples,
        )

    def _alarm(self, run: RunKey) -> Alarm:
        with self._lock:
            # The alarm reads only the first and last steps: summarise just those. Steps with
            # anchors, canaries or rule scores may be other than the first and last `window`.
            steps = self._view(run)
            keys = sorted(steps)
            window = self.thresholds.window
            ends = set(keys if len(keys) <= 2 * window else keys[:window] + keys[-window:])
            for probed in ("anchor", "canaries", "rule"):  # signals that read only such steps
                having = [k for k in keys if steps[k].has(probed)]
                ends.update(having[:window] + having[-window:])
            summaries = [steps[s].summary(s) for s in sorted(ends)]
        level = run_alarm(signals(summaries, self.thresholds))
        with self._lock:  # the alarm as of the run's latest step: the history the page plots
            self._set_level(run, level)
            latest = max(steps, default=None)
            if latest is not None and steps[latest].alarm != level:
                own = self._steps(run).setdefault(latest, StepStats())  # the latest may be another's
                own.set_alarm(level, time.time())
                self._save(run, latest, own)
        return level

    def close(self) -> None:
        if self.shared is not None:
            self.shared.close()
        if self._db is not None:
            self._db.close()
            self._db = None

    # --- memory, metrics and SQLite (callers hold the lock) -------------------------------

    def _set_level(self, run: RunKey, level: Alarm | None) -> None:
        """The run's alarm in the per-tenant counts (None: the run left memory)."""
        previous = self._levels.pop(run, None)
        tenant = run[0]
        if previous is not None:
            self._metrics.runs.labels(tenant, previous).dec()
        if level is None:
            if self.config.run_metric_labels:
                with contextlib.suppress(KeyError):  # never observed in this process
                    self._metrics.run_alarm.remove(*run)
            return
        self._levels[run] = level
        self._metrics.runs.labels(tenant, level).inc()
        if self.config.run_metric_labels:
            self._metrics.run_alarm.labels(*run).set(LEVELS.index(level))
        if level == "alarm" and previous != "alarm":
            log.warning(
                "run monitor: run %r of tenant %r raised its alarm (GET /v1/runs/%s)", run[1], tenant, run[1]
            )

    def _view(self, run: RunKey) -> dict[int, StepStats]:
        """The run's latest `max_steps` steps: this replica's, merged with the other replicas'
        parts when the state is shared."""
        own = self._steps(run)
        if self.shared is None:
            return own
        others = self.shared.others(run)
        if not others:
            return own
        keys = sorted(set(own) | set(others))[-self.config.max_steps :]
        return {
            step: StepStats.merged(
                ([own[step]] if step in own else []) + [p for _, p in sorted(others.get(step, {}).items())]
            )
            for step in keys
        }

    def _steps(self, run: RunKey) -> dict[int, StepStats]:
        if run in self._runs:
            self._runs.move_to_end(run)
            return self._runs[run]
        steps = self._load(run)
        if self.shared is not None and steps:
            self.shared.adopt(run, steps)
        self._runs[run] = steps
        while len(self._runs) > self.config.max_runs:
            evicted, _ = self._runs.popitem(last=False)
            self._set_level(evicted, None)
            if self.shared is not None:
                self.shared.forget(evicted)
        return steps

    def _stored(self, run: RunKey) -> bool:
        if self.shared is not None and self.shared.exists(run):
            return True
        if self._db is None:
            return False
        found = self._db.execute(
            "SELECT 1 FROM tenant_run_steps WHERE tenant = ? AND run = ? LIMIT 1", run
        ).fetchone()
        return found is not None

    def _load(self, run: RunKey) -> dict[int, StepStats]:
        if self._db is None:
            return {}
        rows = self._db.execute(
            "SELECT step, stats FROM tenant_run_steps WHERE tenant = ? AND run = ? "
            "ORDER BY step DESC LIMIT ?",
            (*run, self.config.max_steps),
        ).fetchall()
        steps = {}
        for step, stats in sorted(rows):
            try:
                steps[step] = StepStats.from_json(json.loads(stats))
            except (ValueError, TypeError, AttributeError, KeyError) as exc:  # left in the file
                log.warning("run monitor: step %d of run %r is unreadable, skipped: %s", step, run, exc)
        return steps

    def _save(self, run: RunKey, step: int, stats: StepStats) -> None:
        if self.shared is not None:
            self.shared.put(run, step, stats)
        if self._db is None:
            return
        try:
            self._db.execute(
                "INSERT OR REPLACE INTO tenant_run_steps VALUES (?, ?, ?, ?, ?)",
                (*run, step, json.dumps(stats.to_json()), time.time()),
            )
            self._db.commit()
        except sqlite3.Error as exc:  # monitoring must never fail a reward request
            self._db.rollback()
            log.error("run monitor: could not persist run %r step %d: %s", run, step, exc)


def _open(path: Path) -> sqlite3.Connection:
    """The runs database, with the table of (tenant, run, step) rows.

    Files written before runs belonged to tenants (one `run_steps` table) are read once into
    the new table, each run given to the first tenant that tagged it; the old table stays.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, check_same_thread=False)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute(
            "CREATE TABLE IF NOT EXISTS tenant_run_steps (tenant TEXT, run TEXT, step INTEGER, "
            "stats TEXT, updated REAL, PRIMARY KEY (tenant, run, step))"
        )
        legacy = db.execute("SELECT 1 FROM sqlite_master WHERE name = 'run_steps'").fetchone()
        empty = db.execute("SELECT 1 FROM tenant_run_steps LIMIT 1").fetchone() is None
        if legacy and empty:
            for run, step, stats, updated in db.execute("SELECT run, step, stats, updated FROM run_steps"):
                owners = _owners(stats)
                db.execute(
                    "INSERT OR IGNORE INTO tenant_run_steps VALUES (?, ?, ?, ?, ?)",
                    (owners[0], run, step, stats, updated),
                )
            db.commit()
    except BaseException:
        db.close()
        raise
    return db


def _owners(stats: str) -> list[str]:
    """Who tagged a step of an old file (its first tagger owns the run); a row that cannot be
    read goes to 'anonymous' rather than stopping the service."""
    try:
        owners = json.loads(stats).get("tenants")
    except (ValueError, AttributeError):
        return ["anonymous"]
    return owners if isinstance(owners, list) and owners else ["anonymous"]


def _add(stats: StepStats, step: int, item: Item, result: ItemResult) -> None:
    for score in result.scores:
        stats.question(f"{score.evaluator}/{score.question}").add(
            score.p_yes, score.label_mass, score.low_label_mass
        )
    p_mean = mean_p_yes(result)
    stats.add_item(result.reward, item.response, p_mean, item.rule_score)
    stats.add_top(step, prompt_text(item.prompt), item.response, result.reward, p_mean)
