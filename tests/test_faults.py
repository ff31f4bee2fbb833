"""Faults through the real server: deadlines that hold wherever the work is, SIGTERM under
load, kill -9 and restart, state files that are broken, judges stopped mid-generation.

Each case was a defect once (issue 21): 504s 15 s after a 15 s deadline, plain-text 500s
at shutdown, a judge that ran on for minutes after SIGTERM, a corrupt calibrations.json
that stopped the service blaming the YAML config.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from rlme.client.wire import ItemResult, QuestionScore
from rlme.service.backends.base import GenerationTask, SamplingSettings, ScoringTask, TaskResult
from rlme.service.calibration import fit_calibrations
from rlme.service.errors import ServiceStopping

from replica_double import ReplicaDouble
from support import TEST_LIMITS, ThreadedServer, free_port, service_settings, wait_healthy

pytestmark = [pytest.mark.model, pytest.mark.e2e]

QUESTIONS = [{"id": "polite", "text": "Is the response polite?"}]
ITEM = {"prompt": "Say hi.", "response": "Hello, friend!"}
REWARD = {"items": [ITEM], "questions": QUESTIONS}


def slow_engine(server: ThreadedServer, seconds: float) -> None:
    """Every scoring batch takes `seconds` longer (a busy engine)."""
    backend = server.app.state.pool.evaluators["default"].backend
    original = backend.score

    def score(tasks: Sequence[ScoringTask]) -> list[TaskResult]:
        time.sleep(seconds)
        return original(tasks)

    backend.score = score


async def post_many(url: str, n: int) -> list[httpx.Response | BaseException]:
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        bodies = [{"items": [{**ITEM, "response": f"Hello {i}!"}], "questions": QUESTIONS} for i in range(n)]
        return await asyncio.gather(
            *(client.post("/v1/rewards", json=b) for b in bodies), return_exceptions=True
        )


def test_the_deadline_holds_for_queued_work_and_work_in_the_engine() -> None:
    limits = {**TEST_LIMITS, "request_timeout_s": 2}
    evaluator = {"name": "default", "dtype": "float32", "batching": {"max_batch_evaluations": 1}}
    with ThreadedServer(limits=limits, evaluators=[evaluator]) as server:
        slow_engine(server, 6)
        started = time.monotonic()
        answers = asyncio.run(post_many(server.url, 3))  # one in the engine, two queued behind it
        elapsed = time.monotonic() - started
        for answer in answers:
            assert isinstance(answer, httpx.Response) and answer.status_code == 504, answer
            assert answer.json()["error"]["code"] == "deadline_exceeded"
        # at the deadline (+1.5 s of slack for a loaded CI machine), not when the engine got to them (6 s)
        assert 2 - 1 < elapsed < 2 + 1.5, elapsed
        assert server.app.state.pool.evaluators["default"].batcher.queued_evaluations == 0


def test_sigterm_under_load_answers_json_never_a_500() -> None:
    evaluator = {"name": "default", "dtype": "float32", "batching": {"max_batch_evaluations": 1}}
    server = ThreadedServer(grace_s=2, evaluators=[evaluator])
    with server:
        slow_engine(server, 1.0)  # batches end at about 1, 2, 3, ... s; the grace ends at 2.5 s
        loop = asyncio.new_event_loop()
        flood = loop.create_task(post_many(server.url, 6))
        loop.run_until_complete(asyncio.sleep(0.5))  # accepted and queued
        stopping = time.monotonic()
        server.server.should_exit = True  # what SIGTERM does
        answers = loop.run_until_complete(flood)
        loop.close()
        server.thread.join(timeout=30)
        assert not server.thread.is_alive() and time.monotonic() - stopping < 15
    codes = []
    for answer in answers:
        if isinstance(answer, BaseException):  # the connection closed after the listener stopped
            assert isinstance(answer, httpx.TransportError), answer
            continue
        codes.append(answer.status_code)
        assert answer.headers["content-type"].startswith("application/json"), answer.text
        if answer.status_code != 200:
            assert answer.status_code == 503 and answer.json()["error"]["code"] == "shutting_down"
            assert int(answer.headers["retry-after"]) >= 1
    assert 200 in codes and 503 in codes, codes  # some finished in the grace period, some did not


def test_broken_state_files_degrade_monitoring_never_serving(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    runs, calibrations = tmp_path / "runs.sqlite", tmp_path / "calibrations.json"
    runs.write_bytes(b"this is not a database" * 100)
    calibrations.write_text('[{"evaluator": "default", "a": "steep"}')
    files = {path: path.read_bytes() for path in (runs, calibrations)}
    settings: dict[str, Any] = {"monitoring": {"db_path": str(runs)}, "calibrations_path": str(calibrations)}
    with ThreadedServer(**settings) as server:
        ready = httpx.get(f"{server.url}/health/ready").json()
        tagged = httpx.post(f"{server.url}/v1/rewards", json={**REWARD, "run": "r1", "step": 1}, timeout=60)
        report = httpx.get(f"{server.url}/v1/runs/r1")
        items = [{**ITEM, "label": i % 2 == 0} for i in range(8)]
        fit = httpx.post(
            f"{server.url}/v1/calibrations", json={"items": items, "questions": QUESTIONS}, timeout=60
        )
        metrics = httpx.get(f"{server.url}/metrics").text
    assert ready["status"] == "ok"
    assert str(runs) in ready["stores"]["runs"] and "move the file aside" in ready["stores"]["runs"]
    assert str(calibrations) in ready["stores"]["calibrations"]
    assert tagged.status_code == 200 and report.status_code == 200  # runs kept in memory
    assert fit.status_code == 503 and fit.json()["error"]["code"] == "store_unavailable"
    assert 'rlme_store_broken{store="runs"} 1.0' in metrics
    assert 'rlme_store_broken{store="calibrations"} 1.0' in metrics
    assert {path: path.read_bytes() for path in files} == files  # the user's files, untouched
    for path in files:  # one log line each, naming the file and the fix
        lines = [r for r in caplog.records if r.levelname == "ERROR" and str(path) in r.getMessage()]
        assert len(lines) == 1 and f"mv {path} {path}.broken" in lines[0].getMessage(), lines


def serve_process(tmp_path: Path, port: int, **env: str) -> subprocess.Popen[bytes]:
    """`rlme serve` as its own process (signals reach it as in production), once healthy."""
    env = {
        **os.environ,
        "RLME_LOG_LEVEL": "warning",
        "RLME_MONITORING__DB_PATH": str(tmp_path / "runs.sqlite"),
        "RLME_CALIBRATIONS_PATH": str(tmp_path / "calibrations.json"),
        **env,
    }
    command = [sys.executable, "-m", "rlme.trainer.cli", "serve", "--port", str(port)]
    with (tmp_path / "server.log").open("ab") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    wait_healthy(f"http://127.0.0.1:{port}", process, tmp_path / "server.log", 180)
    return process


# Sampled hot and long, some of 16 judgments run to max_tokens (minutes on a CPU).
LONG_JUDGMENT = {
    "items": [{"prompt": "Tell a very long story about a cat, in many paragraphs.", "response": "Once..."}],
    "judge": "additive_5", "samples": 16, "temperature": 1.5, "max_tokens": 2000, "seed": 1,
}  # fmt: skip


def test_a_real_process_ends_a_judgment_at_its_deadline_and_stops_at_sigterm(tmp_path: Path) -> None:
    """The defect: a judgment ran on for 12 minutes and SIGTERM did not stop the process."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    limits = {"RLME_LIMITS__REQUEST_TIMEOUT_S": "4", "RLME_LIMITS__MAX_JUDGE_TOKENS": "2000"}
    process = serve_process(tmp_path, port, RLME_SHUTDOWN_GRACE_S="1", **limits)
    try:
        started = time.monotonic()
        late = httpx.post(f"{url}/v1/judgments", json=LONG_JUDGMENT, timeout=120)
        took = time.monotonic() - started
        # a judgment past its deadline is reported as such, masked, never a made-up score
        [result] = late.json()["results"]
        assert late.status_code == 200 and (result["status"], result["mask"], result["score"]) == (
            "timeout", True, None,
        ), late.text  # fmt: skip
        assert 3.0 < took < 5.0, took  # the 4 s deadline, +- 1 s
        started = time.monotonic()  # the engine was freed: the next request is served at once
        assert httpx.post(f"{url}/v1/rewards", json=REWARD, timeout=60).status_code == 200
        assert time.monotonic() - started < 5

        answers: list[httpx.Response | BaseException] = []

        def judge() -> None:
            try:
                answers.append(httpx.post(f"{url}/v1/judgments", json=LONG_JUDGMENT, timeout=120))
            except httpx.TransportError as exc:
                answers.append(exc)

        caller = threading.Thread(target=judge)
        caller.start()
        time.sleep(1.0)  # generating; the grace ends at ~2 s, well before the 4 s deadline
        stopping = time.monotonic()
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        stopped = time.monotonic() - stopping
        caller.join(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
    # uvicorn re-raises the signal once it has shut down gracefully: the exit says SIGTERM
    assert process.returncode in (0, -signal.SIGTERM), process.returncode
    assert stopped < 1 + 1 + 4, stopped  # the grace, the engine's 1 s, slack
    [answer] = answers
    assert isinstance(answer, httpx.Response), answer  # answered, not dropped
    assert answer.headers["content-type"].startswith("application/json"), answer.text
    assert answer.status_code == 503 and answer.json()["error"]["code"] == "shutting_down", answer.text
    assert int(answer.headers["retry-after"]) >= 1


def test_kill_9_and_restart_keep_runs_and_calibrations(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"

    def start() -> subprocess.Popen[bytes]:
        return serve_process(tmp_path, port)

    process = start()
    try:
        for step in (1, 2):
            answer = httpx.post(f"{url}/v1/rewards", json={**REWARD, "run": "kept", "step": step}, timeout=60)
            assert answer.status_code == 200
        items = [{"prompt": "Say hi.", "response": r, "label": r.startswith("H")}
                 for r in ("Hello!", "Hi, friend.", "Go away.", "Shut up.") * 2]  # fmt: skip
        fitted = httpx.post(
            f"{url}/v1/calibrations", json={"items": items, "questions": QUESTIONS}, timeout=60
        )
        assert fitted.status_code == 200, fitted.text
        kept = [f for f in fitted.json()["calibrations"] if f["accepted"]]
        assert kept
        # The same items labelled the other way round: a fit that turns p_yes around is
        # answered (200, refused, with its reason) and never replaces the kept one.
        inverted = [{**item, "label": not item["label"]} for item in items]
        refused = httpx.post(
            f"{url}/v1/calibrations", json={"items": inverted, "questions": QUESTIONS}, timeout=60
        )
        assert refused.status_code == 200, refused.text
        [fit] = refused.json()["calibrations"]
        assert not fit["accepted"] and fit["a"] < 0 and "not positive" in fit["warning"], fit
        assert httpx.get(f"{url}/v1/calibrations").json()["calibrations"] == kept
        before = httpx.get(f"{url}/v1/runs/kept").json()
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        process = start()
        assert httpx.get(f"{url}/v1/runs/kept").json()["steps"] == before["steps"]
        assert httpx.get(f"{url}/v1/calibrations").json()["calibrations"] == kept
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


def test_a_judge_stops_at_its_deadline_and_at_shutdown(app: Any) -> None:
    backend = app.state.pool.evaluators["default"].backend
    turn = backend.tokenizer.apply_chat_template(
        [{"role": "user", "content": "Write a long story about a cat, in many paragraphs."}],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=False,
    )
    sampling = SamplingSettings(max_tokens=400)
    started = time.monotonic()
    [result] = backend.generate([GenerationTask(tuple(turn), 1, sampling, deadline=time.monotonic() + 0.5)])
    assert time.monotonic() - started < 3 and result.samples[0].tokens < 400
    aborting = threading.Timer(0.5, backend.abort)
    aborting.start()
    started = time.monotonic()
    try:
        with pytest.raises(ServiceStopping):
            backend.generate([GenerationTask(tuple(turn), 1, sampling)])
        assert time.monotonic() - started < 3
    finally:
        aborting.join()
        backend._abort.clear()  # the session's app keeps serving the other tests


def _score(p_yes: float) -> ItemResult:
    score = QuestionScore(
        evaluator="default", question="polite", p_yes=p_yes, logp_yes=-1, logp_no=-1, weight=1
    )
    return ItemResult(id=None, reward=0.0, scores=[score])


def test_a_fit_that_turns_p_yes_around_is_refused_with_its_reason() -> None:
    labels = [i % 2 == 0 for i in range(16)]
    inverted = [_score(0.2 if y else 0.8) for y in labels]  # the evaluator says yes to the "no" items
    [fit] = fit_calibrations(inverted, labels, {"polite": "Is it polite?"}, {"default": "m"}, 0.25)
    assert fit.a < 0 and not fit.accepted and "not positive" in (fit.warning or "")
    honest = [_score(0.7 if y else 0.4) for y in labels]
    [fit] = fit_calibrations(honest, labels, {"polite": "Is it polite?"}, {"default": "m"}, 0.25)
    assert fit.a > 0 and fit.accepted and fit.warning is None
    assert json.loads(fit.model_dump_json())["accepted"] is True


def remote_evaluator(urls: list[str]) -> dict[str, Any]:
    remote = {"urls": urls, "served_model": "evaluator", "timeout_s": 1.5, "health_interval_s": 60,
              "failover_wait_s": 5, "request_shape": "batched"}  # fmt: skip
    return {"name": "default", "backend": "remote", "model": "embedded", "remote": remote}


@pytest.mark.parametrize("fault", ["hang", "garbage", "cut"])
def test_a_remote_replica_that_hangs_answers_garbage_or_cuts_its_body_is_worked_around(fault: str) -> None:
    """Through the real server, two replicas on real sockets (tests/replica_double.py), one
    faulty only once given work: every answer is right, the faulty one is taken out."""
    from transformers import AutoTokenizer

    from rlme.service.model_store import EMBEDDED, resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(EMBEDDED, service_settings().cache_dir))
    good, bad = ReplicaDouble(tokenizer), ReplicaDouble(tokenizer, fault)
    items = [{"prompt": f"Question {i}?", "response": f"Answer {i}."} for i in range(12)]
    body = {"items": items, "questions": QUESTIONS}
    try:
        with ThreadedServer(evaluators=[remote_evaluator([good.url])]) as alone:
            expected = httpx.post(f"{alone.url}/v1/rewards", json=body, timeout=60).json()["rewards"]
        with ThreadedServer(evaluators=[remote_evaluator([good.url, bad.url])]) as server:
            started = time.monotonic()
            answer = httpx.post(f"{server.url}/v1/rewards", json=body, timeout=60)
            took = time.monotonic() - started
            replicas = {r.url: r for r in server.backend.replicas}
            assert answer.status_code == 200, answer.text
            assert answer.json()["rewards"] == expected  # the good replica's numbers, every item
            assert bad.completions >= 1 and not replicas[bad.url].up and replicas[good.url].up
            assert took < 1.5 + 3, took  # a hang costs remote.timeout_s, not more
            assert fault in ("hang",) or replicas[bad.url].problem, replicas[bad.url].problem
    finally:
        good.close()
        bad.close()


def test_an_evaluator_that_fails_to_load_is_reported_and_refused_as_json(tmp_path: Path) -> None:
    """`rlme serve` with a model folder that is not a model: alive, not ready, and every
    request a JSON 503 that names the folder and the fix, never a 500 or a hang."""
    bogus = tmp_path / "bogus-model"
    bogus.mkdir()
    (bogus / "config.json").write_text('{"model_type": "no-such-architecture"}')
    evaluators = json.dumps([{"name": "default", "model": str(bogus)}])
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "RLME_LOG_LEVEL": "warning", "RLME_EVALUATORS": evaluators,
           "RLME_MONITORING__DB_PATH": str(tmp_path / "runs.sqlite")}  # fmt: skip
    command = [sys.executable, "-m", "rlme.trainer.cli", "serve", "--port", str(port)]
    with (tmp_path / "server.log").open("wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        health: dict[str, Any] = {}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and health.get("status") != "error":
            assert process.poll() is None, (tmp_path / "server.log").read_text()[-2000:]
            with contextlib.suppress(httpx.TransportError):
                health = httpx.get(f"{url}/health", timeout=2).json()
            time.sleep(0.3)
        assert (
            health["status"] == "error"
            and f"failed to load {str(bogus)!r}" in health["evaluators"]["default"]
        )
        assert httpx.get(f"{url}/health/live").status_code == 200
        asked = httpx.post(f"{url}/v1/rewards", json=REWARD, timeout=30)
        assert asked.status_code == 503 and asked.headers["content-type"].startswith("application/json")
        error = asked.json()["error"]
        assert error["retryable"] is False and str(bogus) in error["message"] and "reload" in error["message"]
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
