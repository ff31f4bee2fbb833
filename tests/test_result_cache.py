"""No evaluation computed twice (service/result_cache.py): identical evaluations in a request
are computed once; with the cache on, a repeated request is served exactly what was computed
(the same bytes), any change of question, template or weights misses, memory stays bounded,
and a Redis cache is shared by two replicas and is a miss while it does not answer."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from rlme.service.backends.base import LabelLogprobs, ScoringTask, TaskResult
from rlme.service.metrics import Metrics
from rlme.service.model_store import EMBEDDED, resolve_model
from rlme.service.result_cache import ResultCache, decode, task_key
from rlme.service.settings import CacheConfig

from support import Redis, loaded_app, service_settings

pytestmark = pytest.mark.model

QUESTIONS = [{"id": "q", "text": "Is the answer correct?"}, {"id": "k", "text": "Is the answer kind?"}]
ITEMS = [{"prompt": "2+2?", "response": "4"}, {"prompt": "2+3?", "response": "5"}]


@pytest.fixture(scope="module")
async def client() -> AsyncIterator[httpx.AsyncClient]:
    settings = service_settings(cache={"enabled": True, "max_bytes": 1 << 20})
    async with (
        loaded_app(settings) as app,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t", timeout=600) as c,
    ):
        yield c


def scores(answer: httpx.Response) -> str:
    return json.dumps([r["scores"] for r in answer.json()["results"]], sort_keys=True)


async def metric(client: httpx.AsyncClient, name: str) -> float:
    text = (await client.get("/metrics")).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


async def test_identical_evaluations_in_a_request_are_computed_once(client: httpx.AsyncClient) -> None:
    body = {"items": [ITEMS[0], {"prompt": "7*6?", "response": "42"}, ITEMS[0]], "questions": QUESTIONS}
    answer = await client.post("/v1/rewards", json=body)
    assert answer.status_code == 200, answer.text
    usage, results = answer.json()["usage"], answer.json()["results"]
    assert usage["evaluations"] == 6 and usage["deduplicated_evaluations"] == 2
    assert results[0]["scores"] == results[2]["scores"] and results[0]["reward"] == results[2]["reward"]


async def test_a_repeated_request_is_served_the_same_bytes_and_changes_miss(
    client: httpx.AsyncClient,
) -> None:
    body = {"items": ITEMS, "questions": QUESTIONS}
    first = await client.post("/v1/rewards", json={**body, "items": [{**i, "id": "x"} for i in ITEMS]})
    hits = await metric(client, 'rlme_cache_lookups_total{result="hit"}')
    again = await client.post("/v1/rewards", json=body)
    assert first.status_code == again.status_code == 200
    assert again.json()["usage"]["cached_evaluations"] == 4
    assert scores(again) == scores(first)  # exactly what was computed, not a recomputation
    assert again.json()["rewards"] == first.json()["rewards"]
    assert await metric(client, 'rlme_cache_lookups_total{result="hit"}') == hits + 2  # one per task
    reworded = {**body, "questions": [{"id": "q", "text": "Is the answer right?"}]}
    assert (await client.post("/v1/rewards", json=reworded)).json()["usage"]["cached_evaluations"] == 0
    anchored = {**body, "items": [{**ITEMS[0], "reference": "4"}]}
    assert (await client.post("/v1/rewards", json=anchored)).json()["usage"]["cached_evaluations"] == 0


async def test_a_reload_of_the_evaluator_misses(client: httpx.AsyncClient) -> None:
    body = {"items": [{"prompt": "3+3?", "response": "6"}], "questions": QUESTIONS}
    await client.post("/v1/rewards", json=body)
    assert (await client.post("/v1/rewards", json=body)).json()["usage"]["cached_evaluations"] == 2
    path = str(resolve_model(EMBEDDED, service_settings().cache_dir))
    reload = await client.post("/admin/evaluators/default/reload", json={"model": path})
    assert reload.status_code == 200, reload.text
    after = await client.post("/v1/rewards", json=body)
    assert after.json()["usage"]["cached_evaluations"] == 0  # same files, but reloaded: computed again


def result(value: float) -> TaskResult:
    return TaskResult(scores=(LabelLogprobs((value, -2.0)),), cached_prompt_tokens=0)


async def test_memory_is_bounded_and_evictions_counted() -> None:
    metrics = Metrics()
    cache = ResultCache(CacheConfig(enabled=True, max_bytes=1024), metrics)
    for n in range(40):
        await cache.put(f"key-{n:03d}" + "x" * 50, result(-0.1 * n))
    assert cache._bytes <= 1024
    assert metrics.cache_evictions._value.get() > 0  # type: ignore[attr-defined]
    assert await cache.get("key-000" + "x" * 50) is None  # the oldest went first
    kept = await cache.get("key-039" + "x" * 50)
    assert kept is not None and float(json.loads(kept)[0][0]) == pytest.approx(-3.9)
    verdict = ScoringTask(sequences=((1, 2, 3),), prefix_len=1, label_ids=((7,), (8,)))
    other = ScoringTask(sequences=((1, 2, 3),), prefix_len=1, label_ids=((7,), (9,)))
    longer = ScoringTask(sequences=((1, 2, 3, 4),), prefix_len=1, label_ids=((7,), (8,)))
    assert task_key("a", verdict, None) != task_key("b", verdict, None)  # the evaluator's identity counts
    assert task_key("a", verdict, None) != task_key("a", other, None)  # the labels count
    assert task_key("a", verdict, None) != task_key("a", longer, None)  # every token counts
    assert task_key("a", verdict, None) == task_key("a", ScoringTask(((1, 2, 3),), 1, ((7,), (8,))), None)
    assert task_key("a", verdict, None, "team-a") != task_key("a", verdict, None, "team-b")  # tenants apart
    assert decode(b"not json", verdict, None) is None  # a value that does not fit is a miss
    assert decode(b"[[-0.1, -2.0], [-0.3, -1.0]]", verdict, None) is None  # two scores for one sequence
    assert decode(b"[[-0.1, -2.0]]", verdict, None) is not None


async def test_a_cancelled_computation_never_fails_the_request_sharing_it() -> None:
    cache = ResultCache(CacheConfig(), Metrics())
    owner = cache.start("k")
    cache.finish("k", asyncio.CancelledError())  # the request computing it was cancelled
    with pytest.raises(RuntimeError, match="did not finish"):  # sharers catch this and compute
        await owner


async def test_a_redis_cache_is_shared_and_a_miss_while_down(tmp_path: Path) -> None:
    server = Redis(tmp_path)
    server.start()
    config = CacheConfig(enabled=True, backend="redis", redis_url=server.url)
    one, two = ResultCache(config, Metrics()), ResultCache(config, Metrics())
    try:
        await one.put("k", result(-0.25))
        value = await two.get("k")
        assert value is not None and json.loads(value) == [[-0.25, -2.0]]
        server.stop()
        assert await two.get("k") is None  # a miss, not an error: the evaluation is computed
        assert two.metrics.state_store_errors.labels("cache")._value.get() == 1  # type: ignore[attr-defined]
    finally:
        server.stop()
        await one.aclose()
        await two.aclose()
