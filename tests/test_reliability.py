"""Under load on 127.0.0.1: every request gets exactly one correct answer or a clear 429;
engine faults are survived; reloads and graceful shutdown lose nothing accepted.

The server runs in a thread of this process (real uvicorn, real HTTP) so a test can
reach into its engine and inject faults.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator, Sequence
from typing import Any

import httpx
import hypothesis
import pytest
import schemathesis

from rlme.service.backends.base import ScoringTask, TaskResult
from rlme.service.model_store import EMBEDDED, resolve_model

from support import ThreadedServer, service_settings

pytestmark = [pytest.mark.model, pytest.mark.e2e]

QUESTIONS = [{"id": "polite", "text": "Is the response polite?"}]
ITEMS = [
    {"prompt": "Say hi.", "response": text} for text in ("Hello!", "Hi there.", "Go away.", "Hey, friend!")
]


def reward_body(item: dict[str, str]) -> dict[str, Any]:
    return {"items": [item], "questions": QUESTIONS}


async def post_all(url: str, bodies: list[dict[str, Any]]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=httpx.Limits(max_connections=100)) as c:
        return await asyncio.gather(*(c.post("/v1/rewards", json=b) for b in bodies))


@pytest.fixture(scope="module")
def server() -> Iterator[ThreadedServer]:
    batching = {"max_batch_evaluations": 4, "max_queue_evaluations": 6, "max_wait_ms": 5}
    evaluator = {"name": "default", "dtype": "float32", "batching": batching}
    # The load below repeats 3 items: computed once each when de-duplicated, they would never
    # fill the queue this test overloads.
    with ThreadedServer(evaluators=[evaluator], cache={"deduplicate": False}) as server:
        yield server


@pytest.fixture(scope="module")
def expected(server: ThreadedServer) -> dict[str, float]:
    """Each item's reward, asked one at a time."""
    rewards = {}
    for item in ITEMS:
        answer = httpx.post(f"{server.url}/v1/rewards", json=reward_body(item), timeout=60)
        rewards[item["response"]] = answer.json()["rewards"][0]
    return rewards


def wrap_score(server: ThreadedServer, fail: Any) -> list[int]:
    """Make the engine raise when `fail(call_number, tasks)` says so; returns a call counter."""
    calls = [0]
    original = server.backend.score

    def score(tasks: Sequence[ScoringTask]) -> list[TaskResult]:
        calls[0] += 1
        if fail(calls[0], tasks):
            raise RuntimeError("injected engine fault")
        return original(tasks)

    server.backend.score = score
    return calls


def check_answers(
    answers: list[httpx.Response], items: list[dict[str, str]], expected: dict[str, float]
) -> None:
    for item, answer in zip(items, answers, strict=True):
        if answer.status_code == 200:
            assert answer.json()["rewards"][0] == pytest.approx(expected[item["response"]], abs=1e-4)
        else:
            assert answer.status_code == 429, answer.text
            assert answer.json()["error"]["code"] == "overloaded"
            assert int(answer.headers["retry-after"]) >= 1


async def test_load_gets_correct_answers_or_429_and_survives_a_fault(
    server: ThreadedServer, expected: dict[str, float]
) -> None:
    calls = wrap_score(server, lambda n, tasks: n == 2)  # one transient fault mid-load
    try:
        items = [ITEMS[i % len(ITEMS)] for i in range(40)]
        answers = await post_all(server.url, [reward_body(item) for item in items])
    finally:
        del server.backend.score
    assert len(answers) == 40  # none lost
    check_answers(answers, items, expected)
    statuses = [a.status_code for a in answers]
    assert 200 in statuses and 429 in statuses
    assert calls[0] >= 2  # the fault really happened, and was retried around


async def test_a_poisoned_item_fails_only_its_own_request(
    server: ThreadedServer, expected: dict[str, float]
) -> None:
    poison = {"prompt": "Say hi.", "response": "POISON " * 50}
    wrap_score(server, lambda n, tasks: any(t.prompt_tokens > 150 for t in tasks))
    try:
        items = [ITEMS[0], poison, ITEMS[1]]
        answers = await post_all(server.url, [reward_body(item) for item in items])
    finally:
        del server.backend.score
    assert answers[1].status_code == 500
    error = answers[1].json()["error"]
    assert error["code"] == "evaluator_failed" and error["retryable"] is True
    check_answers([answers[0], answers[2]], [ITEMS[0], ITEMS[1]], expected)
    again = httpx.post(f"{server.url}/v1/rewards", json=reward_body(ITEMS[2]), timeout=60)
    assert again.json()["rewards"][0] == pytest.approx(expected[ITEMS[2]["response"]], abs=1e-4)


async def test_reloading_weights_under_load_drops_nothing(
    server: ThreadedServer, expected: dict[str, float]
) -> None:
    path = str(resolve_model(EMBEDDED, service_settings().cache_dir))
    items = [ITEMS[i % len(ITEMS)] for i in range(6)]
    async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
        scoring = asyncio.gather(*(client.post("/v1/rewards", json=reward_body(i)) for i in items))
        await asyncio.sleep(0.2)
        reload = await client.post("/admin/evaluators/default/reload", json={"model": path})
        answers = await scoring
    assert reload.status_code == 200, reload.text
    assert reload.json()["generation"] >= 1
    assert all(a.status_code == 200 for a in answers)
    check_answers(answers, items, expected)  # same weights, same rewards


async def test_graceful_shutdown_answers_everything_accepted() -> None:
    with ThreadedServer() as server:
        items = [ITEMS[i % len(ITEMS)] for i in range(6)]
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
            scoring = asyncio.gather(*(client.post("/v1/rewards", json=reward_body(i)) for i in items))
            await asyncio.sleep(0.3)  # accepted and queued
            server.server.should_exit = True  # what SIGTERM does
            answers = await scoring
        assert [a.status_code for a in answers] == [200] * len(items)
        server.thread.join(timeout=60)
        assert not server.thread.is_alive()
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{server.url}/health", timeout=2)


# Fuzzing the OpenAPI schema: whatever the request, never a 5xx. (schemathesis's pytest
# plugin does not support pytest 9 yet, so its strategies are driven by hypothesis here.)
JUDGE_ROUTES = ("/v1/judgments", "/v1/comparisons", "/v1/meta-judgments")


def test_fuzzed_requests_never_get_a_5xx(server: ThreadedServer) -> None:
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    # /admin is left out: every fuzzed reload would load the model again (seconds each).
    operations = [op.ok() for op in schema.get_all_operations() if not op.ok().path.startswith("/admin")]
    # rewards, two framework routes, health (3), metrics, evaluators, rubrics; judgments,
    # comparisons, meta-judgments, judges; runs (JSON and page); calibrations (POST, GET)
    assert len(operations) == 17
    scale = int(os.environ.get("RLME_FUZZ_SCALE", "1"))  # a longer hunt by hand: RLME_FUZZ_SCALE=8
    for operation in operations:
        # A valid judge request writes text (seconds on a CPU, even with the test limits).
        writes = operation.method.upper() == "POST" and operation.path in JUDGE_ROUTES
        settings = hypothesis.settings(
            max_examples=(6 if writes else 25) * scale,
            deadline=None,
            suppress_health_check=list(hypothesis.HealthCheck),
            database=None,
        )

        @settings
        @hypothesis.given(case=operation.as_strategy())
        def no_server_error(case: schemathesis.Case) -> None:
            response = case.call(timeout=120)
            assert response.status_code < 500, (case.method, case.path, response.status_code, response.text)
            if response.status_code >= 400:
                assert "error" in response.json()

        no_server_error()
