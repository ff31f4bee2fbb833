"""The judge routes with the real embedded evaluator, checked against direct model calls."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlme.service.judging.templates import ADDITIVE_5, PAIRWISE, fill, split_verdict
from rlme.service.prompting import render_turn

pytestmark = pytest.mark.model

ITEM = {"prompt": "What is the capital of France?", "response": "The capital of France is Paris."}
TOKENS = 12  # a few words of rationale: enough to compare, quick on a CPU


@pytest.fixture(scope="module")
def direct(model_path: Path) -> tuple[Any, Any]:
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    return tokenizer, model


async def judge(client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    answer = await client.post("/v1/judgments", json={"items": [ITEM], "max_tokens": TOKENS, **body})
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


async def test_greedy_judgment_equals_direct_generate_and_forward(
    client: httpx.AsyncClient, direct: tuple[Any, Any]
) -> None:
    tokenizer, model = direct
    body = await judge(client)
    [judgment] = body["results"][0]["judgments"]
    # Written here, independently: render the judge prompt, generate greedily, decode.
    text = render_turn(tokenizer, ADDITIVE_5.system_prompt, fill(ADDITIVE_5, {**ITEM, "reference": None}))
    prompt = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
    with torch.inference_mode():
        out = model.generate(
            prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=TOKENS, do_sample=False
        )
    written = tokenizer.decode(out[0, prompt.shape[1] :], skip_special_tokens=True)
    rationale, parsed, error = split_verdict(written, "Score:", ADDITIVE_5.labels)
    assert judgment["rationale"] == rationale
    assert judgment["generated_tokens"] == out.shape[1] - prompt.shape[1]
    # 12 tokens never reach "Score: k": no number is made up from the text...
    assert (judgment["parsed_score"], judgment["parse_error"]) == (None, error) and parsed is None
    # ...the verdict is read after "<rationale>\nScore: " (SmolLM2 writes the space alone).
    read = tokenizer(rationale.rstrip() + "\nScore: ", add_special_tokens=False).input_ids
    with torch.inference_mode():
        logprobs = torch.log_softmax(model(torch.cat([prompt, torch.tensor([read])], 1)).logits[0, -1], -1)
    label_logps = logprobs[tokenizer.convert_tokens_to_ids(ADDITIVE_5.labels)]
    probs = label_logps.softmax(0).tolist()
    assert list(judgment["verdict_probs"].values()) == pytest.approx(probs, abs=1e-4)
    assert judgment["label_mass"] == pytest.approx(label_logps.exp().sum().item(), abs=1e-4)
    expected = sum(p * v for p, v in zip(probs, [0, 1, 2, 3, 4, 5], strict=True))  # the papers' 0-5 scale
    assert judgment["expected_score"] == pytest.approx(expected, abs=1e-4)
    result = body["results"][0]
    assert result["score"] == pytest.approx(expected, abs=1e-4) and result["status"] == "parse_failed"
    assert result["mask"] is False and body["rewards"] == [result["reward"]]
    assert body["provenance"]["judge"] == "additive_5" and len(body["provenance"]["template_sha256"]) == 64
    assert body["usage"]["generated_tokens"] == judgment["generated_tokens"]


async def test_normalized_reward_maps_the_score_to_0_1(client: httpx.AsyncClient) -> None:
    result = (await judge(client, reward="normalized"))["results"][0]
    assert result["reward"] == pytest.approx(result["score"] / 5)  # 0..5 -> 0..1


async def test_seeded_samples_are_reproducible(client: httpx.AsyncClient) -> None:
    sampled = {"samples": 3, "temperature": 1.0, "seed": 7}
    first, again = await judge(client, **sampled), await judge(client, **sampled)
    other = await judge(client, **{**sampled, "seed": 8})

    def texts(body: dict[str, Any]) -> list[str]:
        return [j["rationale"] for j in body["results"][0]["judgments"]]

    assert texts(first) == texts(again) and len(texts(first)) == 3
    assert texts(first) != texts(other)


async def test_swapping_a_and_b_swaps_the_orders(client: httpx.AsyncClient) -> None:
    pair = {"prompt": "What is 2+2?", "response_a": "2+2 = 4.", "response_b": "2+2 = 5."}
    swapped = {**pair, "response_a": pair["response_b"], "response_b": pair["response_a"]}
    answer = await client.post("/v1/comparisons", json={"pairs": [pair, swapped], "max_tokens": TOKENS})
    assert answer.status_code == 200, answer.text
    one, two = answer.json()["results"]
    assert [o["order"] for o in one["orders"]] == ["ab", "ba"]
    # The same prompt is shown in one's "ab" and two's "ba": same text, same verdict.
    assert one["orders"][0]["judgments"] == two["orders"][1]["judgments"]
    assert one["orders"][1]["judgments"] == two["orders"][0]["judgments"]
    assert two["p_a_better"] == pytest.approx(1 - one["p_a_better"], abs=1e-9)
    assert one["orders_agree"] == (
        (one["orders"][0]["p_a_better"] > 0.5) == (one["orders"][1]["p_a_better"] > 0.5)
    )


async def test_meta_judge_ranks_judgments_in_both_orders(client: httpx.AsyncClient) -> None:
    judgments = ["Relevant, correct and brief.\nScore: 5", "Off-topic.\nScore: 1"]
    body = {"prompt": ITEM["prompt"], "response": ITEM["response"], "judgments": judgments, "max_tokens": 4}
    answer = await client.post("/v1/meta-judgments", json=body)
    assert answer.status_code == 200, answer.text
    meta = answer.json()
    assert [(b["first"], b["second"]) for b in meta["battles"]] == [(0, 1), (1, 0)]
    p01, p10 = (b["p_first_better"] for b in meta["battles"])
    assert meta["p_a_better"] == pytest.approx((p01 + 1 - p10) / 2)
    assert meta["position_bias"] == pytest.approx((p01 + p10) / 2)
    assert meta["score_bias"] == pytest.approx((p01 + 1 - p10) / 2)  # judgment 0 has the higher score
    assert {meta["chosen"], meta["rejected"]} == {0, 1}
    assert meta["scores"][meta["chosen"]] > meta["scores"][meta["rejected"]]


async def test_concurrent_requests_each_get_their_single_call_result(client: httpx.AsyncClient) -> None:
    items = [ITEM, {"prompt": "Say hi.", "response": "Hi there!"}, {"prompt": "2+2?", "response": "5"}]

    async def one(item: dict[str, str]) -> list[dict[str, Any]]:
        answer = await client.post("/v1/judgments", json={"items": [item], "max_tokens": 6})
        assert answer.status_code == 200, answer.text
        return list(answer.json()["results"][0]["judgments"])

    alone = [await one(item) for item in items]
    together = await asyncio.gather(*(one(items[i % 3]) for i in range(30)))
    for i, judgments in enumerate(together):
        expected = alone[i % 3]
        assert [j["rationale"] for j in judgments] == [j["rationale"] for j in expected]
        for got, want in zip(judgments, expected):
            assert got["verdict_probs"] == pytest.approx(want["verdict_probs"], abs=1e-4)


@pytest.mark.parametrize(
    ("body", "status", "fix"),
    [
        ({"judge": "nope"}, 422, "unknown judge"),
        ({"judge": "pairwise"}, 422, "pairwise judge"),
        ({"template": {"system_prompt": "s", "template": "Rate {prompt}"}}, 422, "must use"),
        (
            {
                "template": {
                    "system_prompt": "s",
                    "template": "{prompt} {response}",
                    "labels": ["Superb!!", "Bad"],
                    "label_values": [1, 0],
                }
            },
            422,
            "single tokens",
        ),
        ({"template": {"system_prompt": "s", "template": "{prompt:d} {response}"}}, 422, "format spec"),
        (
            {
                "template": {
                    "system_prompt": "s",
                    "template": "{prompt} {response}",
                    "labels": ["1", "2"],
                    "label_values": [3, 3],
                }
            },
            422,
            "must not all be equal",
        ),
        ({"samples": 0}, 422, "samples"),
        ({"samples": 5}, 422, "at most 4"),
        ({"max_tokens": 25}, 422, "at most 24"),
        ({"items": [{"prompt": "x" * 6001, "response": "y"}]}, 413, "items.0.prompt"),
        ({"items": []}, 422, "items"),
        ({"judge": "additive_5", "template": PAIRWISE.model_dump()}, 422, "not both"),
    ],
)
async def test_bad_judge_requests_get_a_4xx_that_says_what_to_fix(
    client: httpx.AsyncClient, body: dict[str, Any], status: int, fix: str
) -> None:
    answer = await client.post("/v1/judgments", json={"items": [ITEM], **body})
    assert answer.status_code == status, answer.text
    assert fix in answer.json()["error"]["message"]


async def test_judges_are_listed(client: httpx.AsyncClient) -> None:
    answer = await client.get("/v1/judges")
    assert answer.status_code == 200
    judges = {j["name"]: j for j in answer.json()["judges"]}
    assert set(judges) >= {"additive_5", "pairwise", "meta"}
    assert judges["pairwise"]["template"]["labels"] == ["A", "B"]
