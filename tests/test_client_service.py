"""The client against the real service app, in process (the conftest `app`, real evaluator)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from rlme.client import AsyncRewardClient, BadRequestError, NotFoundError
from rlme.client.adapters.slime import reward_func
from rlme.client.adapters.trl import async_reward_func

pytestmark = pytest.mark.model


@pytest.fixture
async def rlme(app: FastAPI) -> AsyncIterator[AsyncRewardClient]:
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app))
    async with AsyncRewardClient(base_url="http://rlme", http_client=http, chunk_size=2) as client:
        yield client
    await http.aclose()


async def test_chunked_rewards_match_one_request(rlme: AsyncRewardClient) -> None:
    items = [{"prompt": "What is 2+2?", "response": str(n), "reference": "4"} for n in range(5)]
    chunked = await rlme.rewards(items, rubric="correctness")
    whole = [(await rlme.rewards([item], rubric="correctness")).rewards[0] for item in items]
    assert chunked.rewards == pytest.approx(whole, abs=1e-4)
    assert chunked.usage.evaluations == 5
    assert all(r <= 0.0 for r in chunked.rewards)  # sums of log-probabilities


async def test_server_errors_arrive_typed(rlme: AsyncRewardClient) -> None:
    with pytest.raises(BadRequestError) as info:
        await rlme.rewards([{"prompt": "x", "response": "y"}], rubric="grounded")
    assert info.value.status_code == 422
    assert info.value.retryable is False
    assert info.value.request_id


async def test_listing_and_health(rlme: AsyncRewardClient) -> None:
    assert (await rlme.wait_until_ready(timeout=5)).status == "ok"
    names = {rubric.name for rubric in (await rlme.rubrics()).rubrics}
    assert {"correctness", "rlme_math", "polite", "grounded"} <= names
    assert (await rlme.evaluators()).default == "default"


async def test_adapters_against_the_service(rlme: AsyncRewardClient) -> None:
    trl_reward = async_reward_func(rubric="rlme_math", client=rlme)
    rewards = await trl_reward(
        prompts=[[{"role": "user", "content": "What is 2+2?"}]] * 2,
        completions=[[{"role": "assistant", "content": "4"}], [{"role": "assistant", "content": "5"}]],
        reference=["4", "4"],
    )
    assert len(rewards) == 2 and all(r is not None and r < 0 for r in rewards)

    class Sample:
        prompt, response, label = "What is 2+2?", "4", 4

    assert await reward_func(None, Sample(), client=rlme, rubric="correctness") < 0


async def test_reload_evaluator_is_typed_and_refuses_what_the_service_refuses(
    rlme: AsyncRewardClient, app: FastAPI
) -> None:
    evaluator = app.state.pool.evaluators["default"]
    before = evaluator.generation
    with pytest.raises(BadRequestError, match="keeps serving"):
        await rlme.reload_evaluator("default", "/no/such/model")
    assert evaluator.generation == before
    with pytest.raises(NotFoundError, match="no evaluator 'nobody'"):
        await rlme.reload_evaluator("nobody")
