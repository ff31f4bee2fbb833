"""Retry policy: which failures are retried, how long the client waits, what it raises."""

from __future__ import annotations

import email.utils
from collections.abc import Callable

import httpx
import pytest

from rlme.client import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AsyncRewardClient,
    AuthenticationError,
    BadRequestError,
    GatewayTimeoutError,
    InternalServerError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    RewardClient,
    ServiceUnavailableError,
)
from rlme.client._core import (
    INITIAL_RETRY_DELAY,
    MAX_RETRY_AFTER,
    MAX_RETRY_DELAY,
    RETRY_JITTER,
    backoff_delay,
    parse_retry_after,
)

NOW = 1_700_000_000.0
ITEMS = [{"prompt": "What is 2+2?", "response": "4"}]
OK_BODY = {
    "rewards": [-0.2],
    "results": [{"id": None, "reward": -0.2, "scores": []}],
    "usage": {"evaluations": 1, "prompt_tokens": 10, "cached_prompt_tokens": 0},
}

Handler = Callable[[httpx.Request], httpx.Response]


def scripted(*responses: httpx.Response | Exception) -> tuple[Handler, list[httpx.Request]]:
    """A handler answering with `responses` in turn (the last one repeats)."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = responses[min(len(seen), len(responses)) - 1]
        if isinstance(answer, Exception):
            raise answer
        return answer

    return handler, seen


def make_client(handler: Handler, *, jitter: float = 0.0, **kwargs) -> tuple[RewardClient, list]:
    client = RewardClient(
        base_url="http://rlme.test", http_client=httpx.Client(transport=httpx.MockTransport(handler)),
        **kwargs,
    )  # fmt: skip
    sleeps: list[float] = []
    client._sleep = sleeps.append
    client._random = lambda: jitter
    client._now = lambda: NOW
    return client, sleeps


def error(status: int, headers: dict[str, str] | None = None, **fields) -> httpx.Response:
    body = {"error": {"code": "x", "message": "m", "retryable": True, **fields}}
    return httpx.Response(status, json=body, headers=headers)


HTTP_DATE_IN_30S = email.utils.formatdate(NOW + 30, usegmt=True)
HTTP_DATE_PAST = email.utils.formatdate(NOW - 30, usegmt=True)


@pytest.mark.parametrize(
    ("retry_after", "delay"),
    [
        ("2", 2.0),
        ("0", 0.0),
        ("1.5", 1.5),
        ("abc", INITIAL_RETRY_DELAY),  # unusable: exponential backoff
        ("-3", INITIAL_RETRY_DELAY),
        ("nan", INITIAL_RETRY_DELAY),
        ("", INITIAL_RETRY_DELAY),
        (HTTP_DATE_IN_30S, 30.0),
        (HTTP_DATE_PAST, 0.0),
        (None, INITIAL_RETRY_DELAY),  # absent
        ("3600", MAX_RETRY_AFTER),  # huge: capped
        ("inf", MAX_RETRY_AFTER),
    ],
)
def test_retry_after_gives_delay(retry_after: str | None, delay: float) -> None:
    headers = {} if retry_after is None else {"retry-after": retry_after}
    handler, seen = scripted(error(503, headers), httpx.Response(200, json=OK_BODY))
    client, sleeps = make_client(handler)
    assert client.rewards(ITEMS, rubric="correctness").rewards == [-0.2]
    assert sleeps == [pytest.approx(delay)]
    assert len(seen) == 2


def test_parse_retry_after_directly() -> None:
    assert parse_retry_after("7", now=NOW) == 7.0
    assert parse_retry_after(HTTP_DATE_IN_30S, now=NOW) == pytest.approx(30.0)
    assert parse_retry_after("Tomorrow-ish", now=NOW) is None
    assert parse_retry_after(None, now=NOW) is None


def test_backoff_doubles_to_the_cap_then_fails_typed() -> None:
    handler, seen = scripted(error(500, request_id="req-123"))
    client, sleeps = make_client(handler, max_retries=5)
    with pytest.raises(InternalServerError) as info:
        client.rewards(ITEMS, rubric="correctness")
    assert sleeps == [0.5, 1.0, 2.0, 4.0, MAX_RETRY_DELAY]
    assert len(seen) == 6  # first try + max_retries
    assert info.value.status_code == 500
    assert info.value.request_id == "req-123"
    assert info.value.retryable is True


def test_jitter_shortens_backoff_by_at_most_its_fraction() -> None:
    assert backoff_delay(0, jitter=0.0) == INITIAL_RETRY_DELAY
    assert backoff_delay(1, jitter=0.999) == pytest.approx(1.0 * (1 - RETRY_JITTER * 0.999))
    assert backoff_delay(30, jitter=0.0) == MAX_RETRY_DELAY
    handler, _ = scripted(error(502), httpx.Response(200, json=OK_BODY))
    client, sleeps = make_client(handler, jitter=0.5)
    client.rewards(ITEMS, rubric="correctness")
    assert sleeps == [pytest.approx(INITIAL_RETRY_DELAY * (1 - RETRY_JITTER * 0.5))]


@pytest.mark.parametrize(
    ("status", "error_type"),
    [
        (408, APIStatusError),
        (429, RateLimitError),
        (500, InternalServerError),
        (502, InternalServerError),
        (503, ServiceUnavailableError),
        (504, GatewayTimeoutError),
    ],
)
def test_retryable_statuses_are_retried(status: int, error_type: type[APIStatusError]) -> None:
    handler, seen = scripted(error(status))
    client, sleeps = make_client(handler, max_retries=2)
    with pytest.raises(error_type) as info:
        client.rewards(ITEMS, rubric="correctness")
    assert type(info.value) is error_type
    assert len(seen) == 3
    assert len(sleeps) == 2


@pytest.mark.parametrize(
    ("status", "error_type"),
    [
        (400, BadRequestError),
        (401, AuthenticationError),
        (403, PermissionDeniedError),
        (404, NotFoundError),
        (409, APIStatusError),
        (413, BadRequestError),
        (422, BadRequestError),
    ],
)
def test_other_4xx_are_not_retried(status: int, error_type: type[APIStatusError]) -> None:
    handler, seen = scripted(error(status, {"retry-after": "1"}), httpx.Response(200, json=OK_BODY))
    client, sleeps = make_client(handler)
    with pytest.raises(error_type) as info:
        client.rewards(ITEMS, rubric="correctness")
    assert type(info.value) is error_type
    assert info.value.status_code == status
    assert len(seen) == 1
    assert sleeps == []


def test_connection_errors_are_retried_then_succeed() -> None:
    refused = httpx.ConnectError("connection refused")
    handler, seen = scripted(refused, httpx.ReadTimeout("slow"), httpx.Response(200, json=OK_BODY))
    client, sleeps = make_client(handler)
    assert client.rewards(ITEMS, rubric="correctness").rewards == [-0.2]
    assert len(seen) == 3
    assert sleeps == [0.5, 1.0]


@pytest.mark.parametrize(
    ("exc", "error_type"),
    [(httpx.ConnectError("refused"), APIConnectionError), (httpx.ReadTimeout("slow"), APITimeoutError)],
)
def test_connection_errors_exhaust_retries(exc: Exception, error_type: type[Exception]) -> None:
    handler, seen = scripted(exc)
    client, sleeps = make_client(handler, max_retries=3)
    with pytest.raises(error_type):
        client.rewards(ITEMS, rubric="correctness")
    assert len(seen) == 4
    assert len(sleeps) == 3


def test_max_retries_zero_sends_once() -> None:
    handler, seen = scripted(error(503))
    client, sleeps = make_client(handler, max_retries=0)
    with pytest.raises(ServiceUnavailableError):
        client.rewards(ITEMS, rubric="correctness")
    assert (len(seen), sleeps) == (1, [])


def test_request_id_falls_back_to_header() -> None:
    response = httpx.Response(400, json={"error": {"code": "bad", "message": "no"}},
                              headers={"x-request-id": "hdr-9"})  # fmt: skip
    handler, _ = scripted(response)
    client, _ = make_client(handler)
    with pytest.raises(BadRequestError) as info:
        client.rewards(ITEMS, rubric="correctness")
    assert info.value.request_id == "hdr-9"
    assert "hdr-9" in str(info.value)


def test_get_routes_retry_too() -> None:
    rubrics = httpx.Response(200, json={"rubrics": []})
    handler, seen = scripted(error(503, {"retry-after": "1"}), rubrics)
    client, sleeps = make_client(handler)
    assert client.rubrics().rubrics == []
    assert sleeps == [1.0]
    assert [r.url.path for r in seen] == ["/v1/rubrics", "/v1/rubrics"]


async def test_async_client_shares_the_policy() -> None:
    handler, seen = scripted(
        httpx.ConnectError("refused"),
        error(429, {"retry-after": "3"}),
        error(500),
        httpx.Response(200, json=OK_BODY),
    )
    client = AsyncRewardClient(
        base_url="http://rlme.test",
        http_client=httpx.AsyncClient(transport=httpx.MockTransport(handler)),
    )
    sleeps: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    client._sleep = fake_sleep
    client._random = lambda: 0.0
    answer = await client.rewards(ITEMS, rubric="correctness")
    assert answer.rewards == [-0.2]
    assert sleeps == [0.5, 3.0, 2.0]
    assert len(seen) == 4


async def test_async_client_raises_typed_after_retries() -> None:
    handler, seen = scripted(error(504, request_id="r-504"))
    client = AsyncRewardClient(
        base_url="http://rlme.test",
        max_retries=1,
        http_client=httpx.AsyncClient(transport=httpx.MockTransport(handler)),
    )

    async def fake_sleep(seconds: float) -> None:
        pass

    client._sleep = fake_sleep
    with pytest.raises(GatewayTimeoutError) as info:
        await client.rewards(ITEMS, rubric="correctness")
    assert (info.value.status_code, info.value.request_id, len(seen)) == (504, "r-504", 2)


def test_one_request_id_across_retries_and_a_new_one_per_call() -> None:
    handler, seen = scripted(error(503), httpx.Response(200, json=OK_BODY))
    client, _ = make_client(handler)
    client.rewards(ITEMS, rubric="correctness")
    client.rewards(ITEMS, rubric="correctness")
    ids = [request.headers["x-request-id"] for request in seen]
    assert ids[0] == ids[1] != ids[2]
    assert len(ids) == 3


def test_a_503_the_server_marks_not_retryable_is_not_retried() -> None:
    # An evaluator that failed to load (a wrong model folder): retrying cannot help.
    body = {"error": {"code": "evaluator_unavailable", "message": "fix the model", "retryable": False}}
    handler, seen = scripted(httpx.Response(503, json=body), httpx.Response(200, json=OK_BODY))
    client, sleeps = make_client(handler)
    with pytest.raises(ServiceUnavailableError) as info:
        client.rewards(ITEMS, rubric="correctness")
    assert info.value.retryable is False and "fix the model" in str(info.value)
    assert len(seen) == 1 and sleeps == []
