"""The serving base both route families share (service/serving.py): judge work counts in the
tenant's queue gauge and evaluations like reward work does."""

from __future__ import annotations

import asyncio

import httpx
from fastapi import FastAPI

JUDGMENT = {"items": [{"prompt": "Say hi.", "response": "Hello!"}], "judge": "additive_5", "max_tokens": 4}
REWARD = {"items": [{"prompt": "p", "response": "r"}], "rubric": "polite"}  # 2 questions


def gauge(app: FastAPI, name: str, tenant: str = "anonymous") -> float:
    value = app.state.metrics.registry.get_sample_value(name, {"tenant": tenant})
    return 0.0 if value is None else value


async def queued_while(app: FastAPI, client: httpx.AsyncClient, path: str, body: dict[str, object]) -> float:
    """The most rlme_tenant_queued_evaluations showed while one request of `body` ran."""
    request = asyncio.ensure_future(client.post(path, json=body))
    seen = 0.0
    while not request.done():
        seen = max(seen, gauge(app, "rlme_tenant_queued_evaluations"))
        await asyncio.sleep(0.001)
    assert (await request).status_code == 200
    return seen


async def test_judge_work_shows_in_the_tenant_queue_gauge_like_reward_work(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    counted = gauge(app, "rlme_tenant_evaluations_total")
    assert await queued_while(app, client, "/v1/rewards", REWARD) == 2
    # One judgment: a generation and a verdict read.
    assert await queued_while(app, client, "/v1/judgments", JUDGMENT) == 2
    assert gauge(app, "rlme_tenant_queued_evaluations") == 0
    assert gauge(app, "rlme_tenant_evaluations_total") == counted + 4
