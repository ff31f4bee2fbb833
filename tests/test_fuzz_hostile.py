"""Property-based fuzzing with hostile values through the real HTTP server (issue 21).

Schemathesis (test_reliability.py) draws bodies from the OpenAPI schema, which never holds
a lone surrogate, 2**70, NaN or a body nested 5,000 deep. Here hypothesis takes a valid
body of every POST operation and puts one hostile value at one place in it (a leaf, a
list element, a new field), then checks what every request must get: no 5xx, a JSON
error body for a 4xx, and an answer within a bounded time.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import hypothesis
import pytest
from hypothesis import strategies as st

from support import ThreadedServer

pytestmark = [pytest.mark.model, pytest.mark.e2e]

ITEM = {"prompt": "Say hi.", "response": "Hello!"}
QUESTIONS = [{"id": "polite", "text": "Is the response polite?", "weight": 1.0}]
LABELLED = [{**ITEM, "response": f"Hello {i}!", "label": i % 2 == 0} for i in range(8)]
VALID: dict[str, dict[str, Any]] = {
    "/v1/rewards": {"items": [ITEM], "questions": QUESTIONS, "run": "fuzz", "step": 1},
    "/get_reward": {"query": ["Say hi. Hello!"], "prompts": ["Say hi."], "labels": ["x"]},
    "/slime/reward": {"prompt": "Say hi.", "response": "Hello!", "label": "x"},
    "/v1/judgments": {"items": [ITEM], "judge": "additive_5", "max_tokens": 2, "seed": 1, "stop": ["\n"]},
    "/v1/comparisons": {
        "pairs": [{"prompt": "p", "response_a": "a", "response_b": "b"}],
        "judge": "pairwise",
        "max_tokens": 2,
    },  # fmt: skip
    "/v1/meta-judgments": {"prompt": "p", "response": "r", "judgments": ["one", "two"], "max_tokens": 2},
    "/v1/calibrations": {"items": LABELLED, "questions": QUESTIONS},
}
DEEP = "__DEEP__"  # replaced by a nesting no JSON encoder writes, after encoding

hostile_text = st.one_of(
    st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=3),  # surrogates
    st.text(st.characters(codec=None), max_size=50),  # any code point, control characters included
    st.sampled_from(["<|im_end|>", "<|im_start|>system\n", "\x00", "\u202e", "A" * 200_000]),
)
hostile_number = st.one_of(
    st.sampled_from([2**63, 2**70, -(2**70), 10**30, float("nan"), float("inf"), -float("inf"), 1e308]),
    st.integers(),
    st.floats(),
)
hostile_value = st.one_of(
    hostile_text, hostile_number, st.just(DEEP), st.none(), st.booleans(), st.just([]), st.just({})
)


def places(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every path to a node of a JSON body, itself included."""
    yield path
    if isinstance(value, dict):
        for key, child in value.items():
            yield from places(child, (*path, key))
    elif isinstance(value, list):
        for i, child in enumerate(value):
            yield from places(child, (*path, i))


def put(body: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    copy = json.loads(json.dumps(body))
    node = copy
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return copy


def encode(body: Any) -> bytes:
    text = json.dumps(body)  # NaN/Infinity as literals, surrogates as \ud800 escapes
    return text.replace(json.dumps(DEEP), "[" * 5_000 + "]" * 5_000).encode()


@pytest.fixture(scope="module")
def server() -> Iterator[ThreadedServer]:
    with ThreadedServer(monitoring={"db_path": None, "canary_rate": 0, "anchor_rate": 0}) as server:
        yield server


@st.composite
def hostile_requests(draw: st.DrawFn) -> tuple[str, bytes]:
    path = draw(st.sampled_from(sorted(VALID)))
    body = VALID[path]
    where = draw(st.sampled_from(list(places(body))))
    value = draw(hostile_value)
    if draw(st.booleans()) and isinstance(body, dict):
        body = {**body, draw(st.sampled_from(["extra", "\ud800", "modle"])): value}  # an unknown field
    else:
        body = put(body, where, value)
    return path, encode(body)


@hypothesis.settings(
    max_examples=60, deadline=None, database=None, suppress_health_check=list(hypothesis.HealthCheck)
)
@hypothesis.given(request=hostile_requests())
def test_hostile_values_anywhere_never_get_a_5xx(server: ThreadedServer, request: tuple[str, bytes]) -> None:
    path, content = request
    started = time.monotonic()
    answer = httpx.post(
        f"{server.url}{path}", content=content, headers={"content-type": "application/json"}, timeout=60
    )
    took = time.monotonic() - started
    assert answer.status_code < 500, (path, content[:300], answer.status_code, answer.text[:500])
    assert took < 30, (path, content[:300], took)
    if answer.status_code >= 400:
        error = answer.json()["error"]
        assert error["code"] and error["message"] and error["retryable"] is False, error
