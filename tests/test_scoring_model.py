"""Scores from the real embedded evaluator, checked against an independent forward pass."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
import torch
from fastapi import FastAPI
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlme.client.wire import Item, MetaQuestion
from rlme.service.backends.base import ScoringTask
from rlme.service.backends.transformers_backend import TransformersBackend
from rlme.service.prompting import render
from rlme.service.settings import DEFAULT_SYSTEM_PROMPT, EvaluatorConfig, Settings

from support import ITEMS, QUESTIONS

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def direct(model_path: Path) -> tuple[AutoTokenizer, AutoModelForCausalLM]:
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    return tokenizer, model


def direct_logps(direct: tuple, item: dict, question: dict) -> tuple[float, float]:
    """One plain forward pass over the full text; written here, independent of the backend."""
    tokenizer, model = direct
    text = render(tokenizer, DEFAULT_SYSTEM_PROMPT, Item(**item), MetaQuestion(**question))
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
    with torch.inference_mode():
        logprobs = torch.log_softmax(model(ids).logits[0, -1].float(), dim=-1)
    yes = tokenizer.convert_tokens_to_ids(["Yes", "ĠYes", "yes", "Ġyes"])
    no = tokenizer.convert_tokens_to_ids(["No", "ĠNo", "no", "Ġno"])
    return torch.logsumexp(logprobs[yes], 0).item(), torch.logsumexp(logprobs[no], 0).item()


async def test_service_p_yes_equals_a_direct_forward_pass(client: httpx.AsyncClient, direct: tuple) -> None:
    answer = await client.post("/v1/rewards", json={"items": ITEMS, "questions": QUESTIONS})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert len(body["results"]) == len(ITEMS)
    for item, result in zip(ITEMS, body["results"]):
        reward = 0.0
        for question, score in zip(QUESTIONS, result["scores"]):
            logp_yes, logp_no = direct_logps(direct, item, question)
            assert score["question"] == question["id"]
            assert score["logp_yes"] == pytest.approx(logp_yes, abs=1e-4)
            assert score["logp_no"] == pytest.approx(logp_no, abs=1e-4)
            p = torch.tensor([logp_yes, logp_no]).softmax(0)[0].item()
            assert score["p_yes"] == pytest.approx(p, abs=1e-4)
            reward += question.get("weight", 1.0) * torch.log(torch.tensor(p)).item()
        assert result["reward"] == pytest.approx(reward, abs=1e-4)
    assert body["rewards"] == [r["reward"] for r in body["results"]]
    usage = body["usage"]
    assert usage["evaluations"] == len(ITEMS) * len(QUESTIONS)
    assert 0 < usage["cached_prompt_tokens"] < usage["prompt_tokens"]


async def test_prefix_sharing_equals_scoring_from_scratch(app: FastAPI, settings: Settings) -> None:
    shared = app.state.pool.evaluators["default"].backend
    config = EvaluatorConfig(dtype="float32", prefix_sharing=False)
    scratch = TransformersBackend(config, settings.cache_dir)
    await asyncio.to_thread(scratch.setup)
    scorer = app.state.scorer
    questions = [MetaQuestion(**q) for q in QUESTIONS]
    tasks = scorer.tasks_for(app.state.pool.evaluators["default"], [Item(**i) for i in ITEMS], questions)
    assert all(t.prefix_len > 50 for t in tasks)  # the item really is shared
    with_sharing, without = shared.score(tasks), scratch.score(tasks)
    for task, a, b in zip(tasks, with_sharing, without):
        # Its own questions share the item (2 x prefix); items share the system text too.
        assert a.cached_prompt_tokens >= 2 * task.prefix_len
        assert b.cached_prompt_tokens == 0
        for x, y in zip(a.scores, b.scores):
            assert x.logp_yes == pytest.approx(y.logp_yes, abs=1e-4)
            assert x.logp_no == pytest.approx(y.logp_no, abs=1e-4)


async def test_batched_equals_unbatched(app: FastAPI) -> None:
    evaluator = app.state.pool.evaluators["default"]
    questions = [MetaQuestion(**q) for q in QUESTIONS[:2]]
    tasks: list[ScoringTask] = app.state.scorer.tasks_for(evaluator, [Item(**i) for i in ITEMS], questions)
    together = evaluator.backend.score(tasks)
    for task, batched in zip(tasks, together):
        alone = evaluator.backend.score([task])[0]
        for x, y in zip(batched.scores, alone.scores):
            assert x.logp_yes == pytest.approx(y.logp_yes, abs=1e-4)
            assert x.logp_no == pytest.approx(y.logp_no, abs=1e-4)


async def test_polite_reply_scores_higher_on_politeness(client: httpx.AsyncClient) -> None:
    polite, rude = ITEMS[1], ITEMS[2]
    answer = await client.post("/v1/rewards", json={"items": [polite, rude], "rubric": "polite"})
    scores = [r["scores"][0] for r in answer.json()["results"]]
    assert scores[0]["question"] == "polite"
    assert scores[0]["p_yes"] > scores[1]["p_yes"]


async def test_fifty_concurrent_requests_answered_correctly_in_order(client: httpx.AsyncClient) -> None:
    questions = QUESTIONS[:2]
    items = [
        [{"prompt": f"What is {i}+{j}?", "response": f"{i + j}", "id": f"{i}-{j}"} for j in range(2)]
        for i in range(50)
    ]
    solo = []
    for request_items in items[:5]:  # unbatched references, one request at a time
        solo.append(
            (await client.post("/v1/rewards", json={"items": request_items, "questions": questions})).json()
        )
    batches_before = app_metric(await client.get("/metrics"), "rlme_batch_evaluations_count")
    answers = await asyncio.gather(
        *(client.post("/v1/rewards", json={"items": its, "questions": questions}) for its in items)
    )
    assert all(a.status_code == 200 for a in answers)
    for request_items, answer in zip(items, answers):
        assert [r["id"] for r in answer.json()["results"]] == [it["id"] for it in request_items]
    for reference, answer in zip(solo, answers[:5]):
        assert answer.json()["rewards"] == pytest.approx(reference["rewards"], abs=1e-4)
    batches = app_metric(await client.get("/metrics"), "rlme_batch_evaluations_count") - batches_before
    assert 0 < batches < 25  # 50 requests met in far fewer engine batches


def app_metric(response: httpx.Response, name: str) -> float:
    for line in response.text.splitlines():
        if line.startswith(name):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")
