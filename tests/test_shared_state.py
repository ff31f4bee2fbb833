"""Replicas that behave as one service (`state_store: redis`): a run's steps split between
replicas give the statistics, alarm and page one replica gives; a calibration fitted on one
replica is used by another at once; Redis down leaves rewards answered and monitoring on
each replica's own view, and nothing acknowledged is lost when it is back. A real
redis-server on 127.0.0.1 (tests/test_rate_store.py starts it), real service processes."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from rlme.client.wire import Item, ItemResult, RewardRequest
from rlme.client.wire.calibration import Calibration
from rlme.client.wire.rewards import QuestionScore
from rlme.service.calibration import CalibrationStore, SharedCalibrations
from rlme.service.errors import StoreUnavailable
from rlme.service.metrics import Metrics
from rlme.service.monitoring.monitor import RunMonitor
from rlme.service.monitoring.shared import SharedRuns
from rlme.service.monitoring.stats import StepStats
from rlme.service.settings import MonitoringConfig

from support import Redis, start_server


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[Redis]:
    server = Redis(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def scored(rng: random.Random, step: int, n: int) -> tuple[RewardRequest, list[ItemResult]]:
    """A run's request of `n` items at `step`, with p_yes drifting up and a rule score."""
    items, results = [], []
    for i in range(n):
        p = min(0.99, max(0.01, rng.gauss(0.3 + 0.05 * step, 0.1)))
        response = ("**Sure!** " if step > 4 and i % 2 else "") + f"answer {rng.randint(0, 9)} of step {step}"
        items.append(Item(prompt=f"question {i}", response=response, rule_score=float(p > 0.5)))
        score = QuestionScore(evaluator="default", question="q", p_yes=p, logp_yes=-0.1, logp_no=-2.0,
                              weight=1.0, label_mass=0.9)  # fmt: skip
        results.append(ItemResult(id=None, reward=round(p - 0.5, 6), scores=[score]))
    request = RewardRequest(items=items, questions=[{"id": "q", "text": "Good?"}], run="r1", step=step)
    return request, results


def monitor(url: str | None, replica: str, tmp: Path) -> RunMonitor:
    shared = None if url is None else SharedRuns(url, "t:run:", replica, 3600, retry_s=0.2, timeout_s=0.25)
    return RunMonitor(MonitoringConfig(window=2), tmp / f"{replica}.sqlite", Metrics(), shared)


def same(a: object, b: object) -> None:
    """Reports equal, floats to 1e-9 (sums added in another order)."""
    if isinstance(a, dict) and isinstance(b, dict):
        assert a.keys() == b.keys()
        for key in a:
            same(a[key], b[key])
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            same(x, y)
    elif isinstance(a, float) and isinstance(b, float):
        assert a == pytest.approx(b, abs=1e-9)
    else:
        assert a == b


def test_merging_parts_of_a_step_gives_what_one_replica_saw() -> None:
    rng = random.Random(0)
    whole, parts = StepStats(), [StepStats(), StepStats()]
    for k in range(40):
        reward, p = rng.random(), rng.random()
        for stats in (whole, parts[k % 2]):
            stats.question("default/q").add(p, 0.9, p < 0.1)
            stats.add_item(reward, f"response {k}", p, float(p > 0.5))
            stats.add_top(3, f"prompt {k}", f"response {k}", reward, p)
            stats.add_anchor(p, p + 0.1)
    merged = StepStats.merged(parts)
    same(merged.summary(3).model_dump(), whole.summary(3).model_dump())
    assert merged.sample_list() == whole.sample_list()


def test_a_run_split_between_two_replicas_reads_as_one(redis_server: Redis, tmp_path: Path) -> None:
    rng = random.Random(1)
    steps = [scored(rng, s, 12) for s in range(1, 9)]
    alone, a, b = monitor(None, "alone", tmp_path), monitor(redis_server.url, "a", tmp_path), None
    b = monitor(redis_server.url, "b", tmp_path)
    alarms_alone, alarms_split = [], []
    for n, (request, results) in enumerate(steps):
        alarms_alone.append(alone.observe(request, results))
        half = len(results) // 2  # every step half on each replica, the order alternating
        first, second = (a, b) if n % 2 else (b, a)
        first.observe(request.model_copy(update={"items": request.items[:half]}), results[:half])
        alarms_split.append(
            second.observe(request.model_copy(update={"items": request.items[half:]}), results[half:])
        )
    assert alarms_split == alarms_alone
    assert {level for level, _ in alarms_alone} != {"ok"}  # the run raises something to agree on
    expected = alone.report("r1")
    assert expected is not None
    for replica in (a, b):
        report = replica.report("r1")
        assert report is not None
        same(report.model_dump(), expected.model_dump())
    assert b.report("r1", tenant="other") is None  # still one tenant's run
    for m in (alone, a, b):
        m.close()


def test_redis_down_keeps_each_replicas_view_and_loses_nothing(redis_server: Redis, tmp_path: Path) -> None:
    rng = random.Random(2)
    a, b = monitor(redis_server.url, "a", tmp_path), monitor(redis_server.url, "b", tmp_path)
    request, results = scored(rng, 1, 6)
    a.observe(request, results)
    redis_server.stop()
    began = time.monotonic()
    request2, results2 = scored(rng, 2, 6)
    assert a.observe(request2, results2) is not None  # answered, from a's own view
    assert time.monotonic() - began < 2  # one timeout at most, then the store is not asked
    assert a.shared is not None and not a.shared.up
    report = a.report("r1")
    assert report is not None and [s.step for s in report.steps] == [1, 2]
    redis_server.start()  # empty: this Redis keeps nothing across a restart
    time.sleep(0.3)  # past retry_s
    assert b.report("r1") is None  # the run is with a alone now ...
    a.report("r1")  # ... until a's next call sees the store's new epoch and writes all it holds
    assert a.shared.up
    seen_by_b = b.report("r1")
    assert seen_by_b is not None and [s.step for s in seen_by_b.steps] == [1, 2]
    assert seen_by_b.steps[1].items == 6
    a.close()
    b.close()


def fit(question: str, a: float) -> Calibration:
    return Calibration(evaluator="default", model="embedded", question_id="q", question=question, a=a, b=0.0,
                       train_items=8, held_out_items=2, ece_before=0.2, ece_after=0.1, brier_before=0.3,
                       brier_after=0.2, fitted_at=0.0)  # fmt: skip


def test_a_calibration_fitted_on_one_replica_is_used_by_another(redis_server: Redis, tmp_path: Path) -> None:
    def store(name: str) -> CalibrationStore:
        shared = SharedCalibrations(redis_server.url, "t:", retry_s=0.2, timeout_s=0.25)
        return CalibrationStore(tmp_path / f"{name}.json", shared)

    one, two = store("one"), store("two")
    two.refresh()
    one.put([fit("Is it right?", 1.5)])
    assert two.get("default", "Is it right?") is None  # not read yet ...
    two.refresh()  # ... and read at its next calibrated request
    found = two.get("default", "Is it right?")
    assert found is not None and found.a == 1.5
    redis_server.stop()
    with pytest.raises(StoreUnavailable):  # not kept anywhere, so not acknowledged
        one.put([fit("Is it kind?", 2.0)])
    assert one.get("default", "Is it kind?") is None
    two.refresh()  # down: the last known maps stay in use
    assert two.get("default", "Is it right?") is not None
    redis_server.start()  # back, and empty
    time.sleep(0.3)  # past retry_s
    two.refresh()  # nothing is wiped; the new store is given what this replica holds
    assert two.get("default", "Is it right?") is not None
    three = store("three")
    three.refresh()
    found = three.get("default", "Is it right?")
    assert found is not None and found.a == 1.5


@pytest.mark.e2e
@pytest.mark.model
def test_two_service_processes_share_a_run_and_a_calibration(redis_server: Redis, tmp_path: Path) -> None:
    env = {
        "RLME_STATE_STORE__BACKEND": "redis",
        "RLME_STATE_STORE__REDIS_URL": redis_server.url,
        # Two model servers share 2 cores: a 0.25 s Redis call can time out under that load, and
        # the breaker would then show one replica its own view for 2 s. This test is about merging.
        "RLME_STATE_STORE__TIMEOUT_S": "2",
        "RLME_MONITORING__CANARY_RATE": "0",  # probes are scored in the background: keep the run exact
        "RLME_MONITORING__ANCHOR_RATE": "0",
        "OMP_NUM_THREADS": "1",
    }
    question = {"id": "q", "text": "Is the answer correct?"}
    answers = [("2+2?", "4"), ("2+3?", "5"), ("3+3?", "6"), ("2+2?", "5"), ("2+3?", "7")]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    env_a = {**env, "RLME_MONITORING__DB_PATH": str(tmp_path / "a" / "runs.sqlite")}
    env_b = {**env, "RLME_MONITORING__DB_PATH": str(tmp_path / "b" / "runs.sqlite")}
    with start_server(tmp_path / "a", env=env_a) as a, start_server(tmp_path / "b", env=env_b) as b:
        for step in range(1, 5):  # steps alternate between the replicas
            body = {"items": [{"prompt": p, "response": r} for p, r in answers[step - 1 : step + 2]],
                    "questions": [question], "run": "shared-run", "step": step}  # fmt: skip
            assert httpx.post(f"{(a, b)[step % 2]}/v1/rewards", json=body, timeout=120).status_code == 200
        reports = [httpx.get(f"{url}/v1/runs/shared-run", timeout=30).json() for url in (a, b)]
        assert [s["step"] for s in reports[0]["steps"]] == [1, 2, 3, 4]
        same(reports[0], reports[1])
        pages = [httpx.get(f"{url}/runs/shared-run", timeout=30).text for url in (a, b)]
        assert pages[0] == pages[1]

        rows = (Path(__file__).resolve().parent.parent / "examples" / "calibration_lists.jsonl").read_text()
        items = [json.loads(line) for line in rows.splitlines() if line.strip()]
        listed = {"id": "list", "text": "Is the response a numbered list?"}
        fitted = httpx.post(f"{a}/v1/calibrations", json={"items": items, "questions": [listed]}, timeout=300)
        assert fitted.status_code == 200, fitted.text
        assert fitted.json()["calibrations"][0]["accepted"], fitted.text
        calibrated = {"items": [items[0]], "questions": [listed], "calibrated": True}
        del calibrated["items"][0]["label"]
        used = httpx.post(f"{b}/v1/rewards", json=calibrated, timeout=120)  # fitted on a, used by b
        assert used.status_code == 200, used.text
        assert "p_yes_calibrated" in used.json()["results"][0]["scores"][0]
