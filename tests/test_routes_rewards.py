"""POST /v1/rewards: every kind of bad input gets a 4xx JSON error that says what to fix."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from support import TEST_LIMITS

OK_ITEM = {"prompt": "What is 2+2?", "response": "4"}
OK_QUESTION = {"id": "correct", "text": "Is the answer correct?"}


def request(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"items": [OK_ITEM], "questions": [OK_QUESTION]}
    body.update(changes)
    return {k: v for k, v in body.items() if v is not None}


many = TEST_LIMITS["max_items"] + 1
too_long = "x" * (TEST_LIMITS["max_text_chars"] + 1)
# Under the character limit, over the evaluator's 1024-token limit.
too_many_tokens = " ".join(["word"] * 1100)

BAD_REQUESTS: list[tuple[str, Any, int, str]] = [
    ("empty items", request(items=[]), 422, "items"),
    ("missing response", request(items=[{"prompt": "p"}]), 422, "items.0.response"),
    ("missing prompt", request(items=[{"response": "r"}]), 422, "items.0.prompt"),
    ("items not a list", request(items="abc"), 422, "items"),
    ("empty chat prompt", request(items=[{"prompt": [], "response": "r"}]), 422, "at least one message"),
    (
        "bad chat role",
        request(items=[{"prompt": [{"role": "x", "content": "c"}], "response": "r"}]),
        422,
        "role",
    ),
    ("neither questions nor rubric", request(questions=None), 422, "either"),
    ("both questions and rubric", request(rubric="correctness"), 422, "not both"),
    ("empty questions", request(questions=[]), 422, "at least one"),
    ("duplicate question ids", request(questions=[OK_QUESTION, OK_QUESTION]), 422, "duplicate"),
    ("empty question text", request(questions=[{"id": "a", "text": ""}]), 422, "questions.0.text"),
    ("unknown rubric", request(questions=None, rubric="nope"), 422, "unknown rubric 'nope'"),
    ("unknown evaluator", request(evaluators=[{"name": "nope"}]), 422, "unknown evaluator 'nope'"),
    ("duplicate evaluators", request(evaluators=[{"name": "default"}] * 2), 422, "duplicate"),
    ("negative evaluator weight", request(evaluators=[{"name": "default", "weight": -1}]), 422, "weight"),
    ("all weights zero", request(questions=[{**OK_QUESTION, "weight": 0}]), 422, "zero"),
    ("unknown field", request(rubrik="x"), 422, "rubrik"),
    ("reference required", request(questions=None, rubric="grounded"), 422, "reference"),
    ("too many items", request(items=[OK_ITEM] * many), 413, "at most"),
    (
        "too many questions",
        request(questions=[{"id": f"q{i}", "text": "t"} for i in range(9)]),
        413,
        "at most",
    ),
    ("oversized text", request(items=[{"prompt": "p", "response": too_long}]), 413, "items.0.response"),
    ("too many tokens", request(items=[{"prompt": "p", "response": too_many_tokens}]), 413, "tokens"),
]


@pytest.mark.parametrize(("case", "body", "status", "says"), BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
async def test_bad_input_gets_a_clear_4xx(
    client: httpx.AsyncClient, case: str, body: Any, status: int, says: str
) -> None:
    answer = await client.post("/v1/rewards", json=body)
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert says in error["message"]
    assert error["retryable"] is False
    assert error["request_id"] == answer.headers["x-request-id"]
    assert "rewards" not in answer.json()


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity"])
async def test_non_finite_weights_are_rejected(client: httpx.AsyncClient, literal: bytes) -> None:
    body = b'{"items":[{"prompt":"p","response":"r"}],"questions":[{"id":"a","text":"t","weight":%s}]}'
    answer = await client.post(
        "/v1/rewards", content=body % literal, headers={"content-type": "application/json"}
    )
    assert answer.status_code == 422
    assert "finite" in answer.json()["error"]["message"]


async def test_malformed_json(client: httpx.AsyncClient) -> None:
    answer = await client.post(
        "/v1/rewards", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert answer.status_code == 422
    assert answer.json()["error"]["code"] == "invalid_request"


async def test_body_over_the_limit_gets_413(client: httpx.AsyncClient) -> None:
    body = b'{"items": [' + b'{"prompt":"p","response":"r"},' * 10_000 + b"]}"
    answer = await client.post("/v1/rewards", content=body, headers={"content-type": "application/json"})
    assert answer.status_code == 413
    assert answer.json()["error"]["code"] == "payload_too_large"


async def test_unknown_route_is_a_json_404(client: httpx.AsyncClient) -> None:
    answer = await client.get("/v1/nothing")
    assert answer.status_code == 404
    assert answer.json()["error"]["code"] == "not_found"


async def test_request_id_is_echoed(client: httpx.AsyncClient) -> None:
    answer = await client.post("/v1/rewards", json=request(items=[]), headers={"x-request-id": "abc123"})
    assert answer.json()["error"]["request_id"] == "abc123"


async def test_rubric_and_ensemble_of_one(client: httpx.AsyncClient) -> None:
    plain = (await client.post("/v1/rewards", json=request(questions=None, rubric="correctness"))).json()
    weighted = (
        await client.post(
            "/v1/rewards",
            json=request(
                questions=None, rubric="correctness", evaluators=[{"name": "default", "weight": 0.5}]
            ),
        )
    ).json()
    assert plain["results"][0]["scores"][0]["question"] == "correct"
    assert weighted["rewards"][0] == pytest.approx(0.5 * plain["rewards"][0], abs=1e-6)


async def test_framework_route_with_an_empty_chat_prompt_is_a_422(client: httpx.AsyncClient) -> None:
    # Found by the schema fuzzer: this once escaped as a 500.
    answer = await client.post("/slime/reward", json={"prompt": [], "response": "r"})
    assert answer.status_code == 422
    assert "at least one message" in answer.json()["error"]["message"]
