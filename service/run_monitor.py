"""The run monitor: per-run, per-step statistics of the rewards the service hands out, the
hacking signals read from them, and the run's alarm (ok / watch / alarm).

Requests that carry `run` (and `step`; without one, the run's latest step) are observed
after they are scored; a request without `run` is not touched. Statistics persist in
SQLite (one row per step, written as the step changes), so a restart loses nothing;
memory holds at most `max_runs` runs (least recently used evicted, also from the
Prometheus gauge) and each run's latest `max_steps` steps. An evicted run is read back
from SQLite when it is asked for or written again.
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
from rlme.client.wire_runs import Alarm, RunReport
from rlme.service.canaries import prompt_text
from rlme.service.hacking_signals import LEVELS, Thresholds, run_alarm, signals
from rlme.service.metrics import Metrics
from rlme.service.run_probes import AnchorPair, CanaryScore, mean_p_yes
from rlme.service.run_stats import StepStats
from rlme.service.settings import MonitoringConfig

log = logging.getLogger(__name__)


class RunMonitor:
    def __init__(self, config: MonitoringConfig, db_path: Path | None, metrics: Metrics) -> None:
        self.config = config
        self.thresholds = Thresholds(
            **{f: getattr(config, f) for f in Thresholds.__dataclass_fields__}  # same names
        )
        self._runs: OrderedDict[str, dict[int, StepStats]] = OrderedDict()
        self._metrics = metrics
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        if config.enabled and db_path is not None:
            db_path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(db_path, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS run_steps "
                "(run TEXT, step INTEGER, stats TEXT, updated REAL, PRIMARY KEY (run, step))"
            )

    def observe(
        self, request: RewardRequest, results: list[ItemResult], tenant: str = "anonymous"
    ) -> tuple[Alarm, int] | None:
        """Add a scored request of a run; the run's alarm after it and the step it counted
        toward (None: not a run's). The tenant may read the step's samples."""
        run = request.run
        if run is None or not self.config.enabled:
            return None
        with self._lock:
            steps = self._steps(run)
            step = request.step if request.step is not None else max(steps, default=0)
            stats = steps.setdefault(step, StepStats())
            if tenant not in stats.tenants:
                stats.tenants.append(tenant)
            for item, result in zip(request.items, results, strict=True):
                _add(stats, step, item, result)
            while len(steps) > self.config.max_steps:
                del steps[min(steps)]
            self._save(run, step, stats)
        return self._alarm(run), step

    def observe_probes(
        self, run: str, step: int, anchors: list[AnchorPair], canaries: list[CanaryScore]
    ) -> None:
        """Add the anchor re-scores and canaries of a run's step (scored after its request)."""
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

    def report(self, run: str, viewer: str | None = None) -> RunReport | None:
        """The run's steps, signals and alarm; samples (policy text) only of the steps the
        `viewer` tenant tagged (None: an admin, who sees all)."""
        with self._lock:
            if run not in self._runs and not self._stored(run):
                return None
            steps = self._steps(run)
            summaries = [steps[s].summary(s) for s in sorted(steps)]
            recent = sorted(steps)[-self.thresholds.window :]
            samples = [
                sample
                for s in recent
                if viewer is None or viewer in steps[s].tenants
                for sample in steps[s].sample_list()
            ]
        found = signals(summaries, self.thresholds)
        first = next((s.step for s in summaries if s.alarm == "alarm"), None)
        return RunReport(
            run=run,
            alarm=run_alarm(found),
            first_alarm_step=first,
            signals=found,
            steps=summaries,
            samples=samples,
        )

    def _alarm(self, run: str) -> Alarm:
        with self._lock:
            # The alarm reads only the first and last steps: summarise just those. Steps with
            # anchors, canaries or rule scores may be other than the first and last `window`.
            steps = self._steps(run)
            keys = sorted(steps)
            window = self.thresholds.window
            ends = set(keys if len(keys) <= 2 * window else keys[:window] + keys[-window:])
            for probed in ("anchor", "canaries", "rule"):  # signals that read only such steps
                having = [k for k in keys if steps[k].has(probed)]
                ends.update(having[:window] + having[-window:])
            summaries = [steps[s].summary(s) for s in sorted(ends)]
        level = run_alarm(signals(summaries, self.thresholds))
        self._metrics.run_alarm.labels(run).set(LEVELS.index(level))
        with self._lock:  # the alarm as of the run's latest step: the history the page plots
            steps = self._steps(run)
            latest = max(steps, default=None)
            if latest is not None and steps[latest].alarm != level:
                steps[latest].alarm = level
                self._save(run, latest, steps[latest])
        return level

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    # --- memory and SQLite (callers hold the lock) ----------------------------------------

    def _steps(self, run: str) -> dict[int, StepStats]:
        if run in self._runs:
            self._runs.move_to_end(run)
            return self._runs[run]
        steps = self._load(run)
        self._runs[run] = steps
        while len(self._runs) > self.config.max_runs:
            evicted, _ = self._runs.popitem(last=False)
            with contextlib.suppress(KeyError):  # never observed in this process
                self._metrics.run_alarm.remove(evicted)
        return steps

    def _stored(self, run: str) -> bool:
        if self._db is None:
            return False
        return (
            self._db.execute("SELECT 1 FROM run_steps WHERE run = ? LIMIT 1", (run,)).fetchone() is not None
        )

    def _load(self, run: str) -> dict[int, StepStats]:
        if self._db is None:
            return {}
        rows = self._db.execute(
            "SELECT step, stats FROM run_steps WHERE run = ? ORDER BY step DESC LIMIT ?",
            (run, self.config.max_steps),
        ).fetchall()
        return {step: StepStats.from_json(json.loads(stats)) for step, stats in sorted(rows)}

    def _save(self, run: str, step: int, stats: StepStats) -> None:
        if self._db is None:
            return
        try:
            self._db.execute(
                "INSERT OR REPLACE INTO run_steps VALUES (?, ?, ?, ?)",
                (run, step, json.dumps(stats.to_json()), time.time()),
            )
            self._db.commit()
        except sqlite3.Error as exc:  # monitoring must never fail a reward request
            self._db.rollback()
            log.error("run monitor: could not persist run %r step %d: %s", run, step, exc)


def _add(stats: StepStats, step: int, item: Item, result: ItemResult) -> None:
    for score in result.scores:
        stats.question(f"{score.evaluator}/{score.question}").add(
            score.p_yes, score.label_mass, score.low_label_mass
        )
    p_mean = mean_p_yes(result)
    stats.add_item(result.reward, item.response, p_mean, item.rule_score)
    stats.add_top(step, prompt_text(item.prompt), item.response, result.reward, p_mean)
