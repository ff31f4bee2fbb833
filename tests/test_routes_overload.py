"""Overload and deadlines over HTTP: 429 and 504 with JSON bodies, never a made-up reward."""

from __future__ import annotations

import httpx
from fastapi import FastAPI

from rlme.service.settings import BatchingConfig

BODY = {"items": [{"prompt": "p", "response": "r"}], "rubric": "polite"}  # 2 questions


async def test_full_queue_gets_429_with_retry_after(app: FastAPI, client: httpx.AsyncClient) -> None:
    batcher = app.state.pool.evaluators["default"].batcher
    saved = batcher.config
    batcher.config = BatchingConfig(max_queue_evaluations=1)
    try:
        answer = await client.post("/v1/rewards", json=BODY)
    finally:
        batcher.config = saved
    assert answer.status_code == 429
    assert int(answer.headers["retry-after"]) >= 1
    error = answer.json()["error"]
    assert error["code"] == "overloaded" and error["retryable"] is True
    assert (await client.post("/v1/rewards", json=BODY)).status_code == 200  # and it recovers


async def test_work_past_its_deadline_gets_504(app: FastAPI, client: httpx.AsyncClient) -> None:
    limits = app.state.settings.limits
    saved = limits.request_timeout_s
    limits.request_timeout_s = 1e-9
    try:
        answer = await client.post("/v1/rewards", json=BODY)
    finally:
        limits.request_timeout_s = saved
    assert answer.status_code == 504
    assert answer.json()["error"]["code"] == "deadline_exceeded"
    assert "rewards" not in answer.json()
