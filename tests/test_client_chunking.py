"""Big reward requests are split into chunks, sent concurrently and put back in order."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest

from rlme.client import (
    AsyncRewardClient,
    BadRequestError,
    RewardClient,
    RewardResponse,
    ServiceUnavailableError,
)
from rlme.client.testing import FakeRewardService
from rlme.client.wire import Item, ItemResult, RewardRequest, Usage


def numbered_items(count: int) -> list[dict[str, str]]:
    return [{"prompt": f"q{i}", "response": str(i), "id": f"item-{i}"} for i in range(count)]


def by_number(item: Item) -> float:
    return float(item.response)


def answer_for(body: RewardRequest) -> httpx.Response:
    rewards = [float(item.response) for item in body.items]
    results = [ItemResult(id=item.id, reward=r, scores=[]) for item, r in zip(body.items, rewards)]
    usage = Usage(evaluations=len(rewards), prompt_tokens=10 * len(rewards), cached_prompt_tokens=1)
    answer = RewardResponse(rewards=rewards, results=results, usage=usage)
    return httpx.Response(200, content=answer.model_dump_json())


def test_sync_chunks_preserve_order_and_sum_usage() -> None:
    fake = FakeRewardService(reward=by_number)
    with fake.client(chunk_size=7, max_concurrency=4) as client:
        answer = client.rewards(numbered_items(100), rubric="correctness")
    assert answer.rewards == [float(i) for i in range(100)]
    assert [result.id for result in answer.results] == [f"item-{i}" for i in range(100)]
    assert len(fake.requests) == 15  # ceil(100 / 7)
    assert sorted(len(r.items) for r in fake.requests) == [2] + [7] * 14
    assert answer.usage.evaluations == 100
    assert answer.usage.prompt_tokens == sum(len(str(i)) for i in range(100))


def test_sync_chunks_run_concurrently_and_in_order_when_finishing_out_of_order() -> None:
    lock = threading.Lock()
    in_flight = peak = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak
        body = RewardRequest.model_validate_json(request.content)
        with lock:
            in_flight += 1
            peak = max(peak, in_flight)
        time.sleep(0.02 * (5 - int(body.items[0].response) // 4))  # early chunks finish last
        with lock:
            in_flight -= 1
        return answer_for(body)

    http = httpx.Client(transport=httpx.MockTransport(handler))
    client = RewardClient(chunk_size=4, max_concurrency=3, http_client=http)
    answer = client.rewards(numbered_items(20), rubric="correctness")
    assert answer.rewards == [float(i) for i in range(20)]
    assert answer.usage.cached_prompt_tokens == 5
    assert 1 < peak <= 3


async def test_async_chunks_preserve_order_under_out_of_order_completion() -> None:
    in_flight = peak = 0
    finished: list[int] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak
        body = RewardRequest.model_validate_json(request.content)
        first = int(body.items[0].response)
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.01 * (10 - first // 3))  # early chunks finish last
        in_flight -= 1
        finished.append(first)
        return answer_for(body)

    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    async with AsyncRewardClient(chunk_size=3, max_concurrency=4, http_client=http) as client:
        answer = await client.rewards(numbered_items(25), rubric="correctness")
    await http.aclose()
    assert answer.rewards == [float(i) for i in range(25)]
    assert answer.usage.evaluations == 25
    assert finished != sorted(finished)  # the server really answered out of order
    assert peak == 4  # the semaphore capped concurrency


async def test_async_fake_service_chunks() -> None:
    fake = FakeRewardService(reward=by_number)
    async with fake.async_client(chunk_size=10) as client:
        answer = await client.rewards(numbered_items(35), questions=[{"id": "q", "text": "Ok?"}])
    assert answer.rewards == [float(i) for i in range(35)]
    assert sorted(len(r.items) for r in fake.requests) == [5, 10, 10, 10]
    assert all(r.questions and r.questions[0].id == "q" for r in fake.requests)


def test_small_request_is_one_call_and_empty_is_none() -> None:
    fake = FakeRewardService(reward=by_number)
    with fake.client() as client:
        assert client.rewards(numbered_items(64), rubric="correctness").rewards[-1] == 63.0
        assert len(fake.requests) == 1
        empty = client.rewards([], rubric="correctness")
    assert (empty.rewards, empty.usage.evaluations, len(fake.requests)) == ([], 0, 1)


def test_one_failed_chunk_fails_the_call() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        body = RewardRequest.model_validate_json(request.content)
        if body.items[0].response == "4":
            return httpx.Response(503, json={"error": {"code": "overloaded", "message": "busy",
                                                       "retryable": True}})  # fmt: skip
        return answer_for(body)

    client = RewardClient(
        chunk_size=2, max_retries=0, http_client=httpx.Client(transport=httpx.MockTransport(handler))
    )
    with pytest.raises(ServiceUnavailableError, match="busy"):
        client.rewards(numbered_items(8), rubric="correctness")


async def test_async_failed_chunk_cancels_the_rest() -> None:
    started: list[int] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        body = RewardRequest.model_validate_json(request.content)
        first = int(body.items[0].response)
        started.append(first)
        if first == 0:
            return httpx.Response(400, json={"error": {"code": "bad", "message": "fix it",
                                                       "retryable": False}})  # fmt: skip
        await asyncio.sleep(10)  # would hang the test if not cancelled
        return answer_for(body)

    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    client = AsyncRewardClient(chunk_size=1, max_concurrency=8, http_client=http)
    with pytest.raises(BadRequestError, match="fix it"):
        await asyncio.wait_for(client.rewards(numbered_items(4), rubric="correctness"), 5)
    await http.aclose()
    assert sorted(started) == [0, 1, 2, 3]
