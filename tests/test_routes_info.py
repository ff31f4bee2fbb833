"""GET /health, /metrics, /v1/evaluators, /v1/rubrics, /docs."""

from __future__ import annotations

import httpx
import pytest

from rlme.service.app import create_app

from support import service_settings


async def test_health_is_503_while_loading_then_200() -> None:
    app = create_app(service_settings())
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://t") as c,
    ):
        loading = await c.get("/health")
        assert loading.status_code == 503
        assert loading.json()["status"] == "loading"
        assert loading.headers["retry-after"]
        early = await c.post(
            "/v1/rewards", json={"items": [{"prompt": "p", "response": "r"}], "rubric": "polite"}
        )
        assert early.status_code == 503 and early.json()["error"]["retryable"] is True
        assert (await c.get("/health/live")).status_code == 200  # alive while loading
        assert (await c.get("/health/ready")).status_code == 503
        await app.state.loading
        for path in ("/health", "/health/ready"):
            ready = await c.get(path)
            assert ready.status_code == 200
            assert ready.json() == {
                "status": "ok",
                "evaluators": {"default": "ok"},
                "stores": {"calibrations": "ok", "runs": "ok"},
            }


async def test_health_reports_an_evaluator_that_failed_to_load(tmp_path: object) -> None:
    settings = service_settings(evaluators=[{"name": "broken", "model": "/no/such/model"}])
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://t") as c,
    ):
        await app.state.loading
        health = await c.get("/health")
        assert health.status_code == 503
        assert health.json()["status"] == "error"
        # A folder that is not there does not appear by retrying: say so, and what to do.
        asked = await c.post(
            "/v1/rewards",
            json={"items": [{"prompt": "p", "response": "r"}], "questions": [{"id": "q", "text": "Ok?"}]},
        )
        assert asked.status_code == 503
        error = asked.json()["error"]
        assert error["retryable"] is False and "retry-after" not in asked.headers
        assert "/no/such/model" in error["message"] and "reload" in error["message"]
        assert (await c.get("/health/live")).status_code == 200
        assert "neither 'embedded'" in health.json()["evaluators"]["broken"]


async def test_evaluators_and_rubrics(client: httpx.AsyncClient) -> None:
    evaluators = (await client.get("/v1/evaluators")).json()
    assert evaluators["default"] == "default"
    assert evaluators["evaluators"][0]["yes_tokens"] == ["Yes", "ĠYes", "yes", "Ġyes"]
    rubrics = {r["name"]: r for r in (await client.get("/v1/rubrics")).json()["rubrics"]}
    assert {"correctness", "rlme_math", "correct_and_length", "grounded", "polite"} <= set(rubrics)
    texts = [q["text"] for q in rubrics["rlme_math"]["questions"]]
    assert "Does the whole solution logically lead from the question to an answer?" in texts


async def test_metrics_after_a_request(client: httpx.AsyncClient) -> None:
    await client.post("/v1/rewards", json={"items": [{"prompt": "p", "response": "r"}], "rubric": "polite"})
    text = (await client.get("/metrics")).text
    for name in (
        "rlme_request_latency_seconds_bucket",
        'rlme_queue_evaluations{evaluator="default"}',
        "rlme_batch_evaluations_bucket",
        'rlme_evaluations_total{evaluator="default"}',
        "rlme_prompt_tokens_total",
        "rlme_cached_prompt_tokens_total",
    ):
        assert name in text


@pytest.mark.parametrize("path", ["/docs", "/openapi.json"])
async def test_api_reference_is_served(client: httpx.AsyncClient, path: str) -> None:
    assert (await client.get(path)).status_code == 200
