"""Error bodies, closed clients, environment fallbacks, health polling."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from rlme.client import (
    APIResponseValidationError,
    APIStatusError,
    AsyncRewardClient,
    BadRequestError,
    ClientClosedError,
    InternalServerError,
    NotFoundError,
    NotReadyError,
    RewardClient,
    RLMEError,
    ServiceUnavailableError,
)
from rlme.client.errors import status_error
from rlme.client.testing import FakeRewardService

ITEMS = [{"prompt": "What is 2+2?", "response": "4", "reference": "4"}]


def response(status: int, **kwargs) -> httpx.Response:
    return httpx.Response(status, request=httpx.Request("POST", "http://x/v1/rewards"), **kwargs)


def test_our_error_body_is_parsed() -> None:
    body = {"error": {"code": "invalid_request", "message": "items[0].response is empty",
                      "retryable": False, "request_id": "abc"}}  # fmt: skip
    error = status_error(response(422, json=body), retryable_default=True)
    assert type(error) is BadRequestError
    assert (error.status_code, error.code, error.retryable, error.request_id) == (
        422, "invalid_request", False, "abc",
    )  # fmt: skip
    assert error.message == "items[0].response is empty"
    assert str(error) == "422 invalid_request: items[0].response is empty (request_id=abc)"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"text": "<html>Bad Gateway</html>"}, "<html>Bad Gateway</html>"),  # a proxy's page
        ({"content": b""}, "Bad Gateway"),  # empty: the reason phrase
        ({"json": [1, 2]}, "[1,2]"),  # JSON, but not an object
        ({"json": {"error": "boom"}}, '{"error":"boom"}'),  # `error` not an object
        ({"json": {"detail": "Not Found"}}, "Not Found"),  # FastAPI's own shape
        ({"content": b"\xff\xfe\x00garbage"}, None),  # not even UTF-8
    ],
)
def test_odd_bodies_still_give_a_typed_error(kwargs: dict, message: str | None) -> None:
    error = status_error(response(502, headers={"x-request-id": "h1"}, **kwargs), retryable_default=True)
    assert type(error) is InternalServerError
    assert error.code == "bad_gateway"
    assert error.retryable is True
    assert error.request_id == "h1"
    if message is not None:
        assert error.message == message


def test_status_classes_and_tree() -> None:
    assert type(status_error(response(404, json={}), retryable_default=False)) is NotFoundError
    assert type(status_error(response(418, json={}), retryable_default=False)) is APIStatusError
    assert type(status_error(response(599, json={}), retryable_default=False)) is InternalServerError
    assert issubclass(ServiceUnavailableError, APIStatusError)
    assert issubclass(APIStatusError, RLMEError) and issubclass(ClientClosedError, RLMEError)


def test_closed_client_refuses_use() -> None:
    fake = FakeRewardService()
    with fake.client() as client:
        client.rewards(ITEMS, rubric="correctness")
    assert client.is_closed
    with pytest.raises(ClientClosedError, match="closed"):
        client.rewards(ITEMS, rubric="correctness")
    with pytest.raises(ClientClosedError):
        client.health()
    with pytest.raises(ClientClosedError), client:
        pass
    assert len(fake.requests) == 1


def test_injected_http_client_is_left_open() -> None:
    http = httpx.Client(transport=httpx.MockTransport(FakeRewardService()))
    with RewardClient(http_client=http) as client:
        client.health()
    assert client.is_closed and not http.is_closed
    http.close()


async def test_closed_async_client_refuses_use() -> None:
    fake = FakeRewardService()
    async with fake.async_client() as client:
        await client.rewards(ITEMS, rubric="correctness")
    with pytest.raises(ClientClosedError):
        await client.rewards(ITEMS, rubric="correctness")
    with pytest.raises(ClientClosedError):
        async with client:
            pass


def test_env_fallbacks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RLME_BASE_URL", "http://from-env:9000/")
    monkeypatch.setenv("RLME_API_KEY", "sk-env")
    fake = FakeRewardService()
    with fake.client() as client:
        assert client.base_url == "http://from-env:9000"
        client.rewards(ITEMS, rubric="correctness")
    sent = fake.http_requests[0]
    assert str(sent.url) == "http://from-env:9000/v1/rewards"
    assert sent.headers["authorization"] == "Bearer sk-env"
    with fake.client(base_url="http://arg:1", api_key="sk-arg") as client:
        client.rewards(ITEMS, rubric="correctness")
    assert str(fake.http_requests[1].url) == "http://arg:1/v1/rewards"
    assert fake.http_requests[1].headers["authorization"] == "Bearer sk-arg"


def test_defaults_without_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RLME_BASE_URL", raising=False)
    monkeypatch.delenv("RLME_API_KEY", raising=False)
    fake = FakeRewardService()
    with fake.client() as client:
        client.rewards(ITEMS, rubric="correctness")
    sent = fake.http_requests[0]
    assert str(sent.url) == "http://127.0.0.1:8000/v1/rewards"
    assert "authorization" not in sent.headers
    assert sent.headers["content-type"] == "application/json"


def test_bad_base_url_names_the_env_var(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RLME_BASE_URL", "localhost:8000")
    with pytest.raises(ValueError, match="RLME_BASE_URL"):
        RewardClient()


def test_request_body_is_the_wire_contract() -> None:
    fake = FakeRewardService()
    with fake.client() as client:
        client.rewards(
            [{"prompt": [{"role": "user", "content": "Hi"}], "response": "Hello"}],
            questions=[{"id": "polite", "text": "Is it polite?", "weight": 2.0}],
            evaluators=[{"name": "default", "weight": 0.5}],
        )
    body = fake.http_requests[0].read()
    assert body.startswith(b'{"items":[{"prompt":[{"role":"user","content":"Hi"}],"response":"Hello"}]')
    assert b'"rubric"' not in body  # unset fields are left out, not sent as null
    assert fake.requests[0].evaluators is not None and fake.requests[0].evaluators[0].weight == 0.5


def test_invalid_input_fails_before_sending() -> None:
    fake = FakeRewardService()
    with fake.client() as client, pytest.raises(ValueError, match="not both"):
        client.rewards(ITEMS, rubric="correctness", questions=[{"id": "a", "text": "b"}])
    assert fake.http_requests == []


def test_bad_success_body_is_a_validation_error() -> None:
    wrong_count = {"rewards": [1.0, 2.0], "results": [],
                   "usage": {"evaluations": 0, "prompt_tokens": 0, "cached_prompt_tokens": 0}}  # fmt: skip
    for body in ({"nope": 1}, wrong_count):
        http = httpx.Client(transport=httpx.MockTransport(lambda r, b=body: httpx.Response(200, json=b)))
        with RewardClient(http_client=http) as client, pytest.raises(APIResponseValidationError):
            client.rewards(ITEMS, rubric="correctness")


def health_server(statuses: list[int]) -> Callable[[httpx.Request], httpx.Response]:
    """Answers /health with `statuses` in turn (the last repeats), as the service does."""

    def handler(request: httpx.Request) -> httpx.Response:
        status = statuses.pop(0) if len(statuses) > 1 else statuses[0]
        state = {200: "ok", 503: "loading"}.get(status, "error")
        return httpx.Response(status, json={"status": state, "evaluators": {"default": state}})

    return handler


def test_wait_until_ready_polls_through_loading() -> None:
    statuses = [503, 503, 200]
    http = httpx.Client(transport=httpx.MockTransport(health_server(statuses)))
    client = RewardClient(http_client=http)
    sleeps: list[float] = []
    client._sleep = sleeps.append
    assert client.health().status == "loading"  # a 503 report is an answer, not an error
    assert client.wait_until_ready(timeout=60, poll_interval=0.25).status == "ok"
    assert sleeps == [0.25]
    assert statuses == [200]  # all three answers were used


def test_wait_until_ready_times_out_typed() -> None:
    http = httpx.Client(transport=httpx.MockTransport(health_server([503])))
    client = RewardClient(http_client=http)
    client._sleep = lambda seconds: None
    with pytest.raises(NotReadyError, match="loading"):
        client.wait_until_ready(timeout=0)


def test_wait_until_ready_keeps_trying_while_nothing_listens() -> None:
    attempts: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        attempts.append(1)
        if len(attempts) < 3:
            raise httpx.ConnectError("refused")
        return httpx.Response(200, json={"status": "ok", "evaluators": {}})

    client = RewardClient(http_client=httpx.Client(transport=httpx.MockTransport(handler)))
    client._sleep = lambda seconds: None
    assert client.wait_until_ready(timeout=60).status == "ok"
    assert len(attempts) == 3


def test_wait_until_ready_fails_fast_on_wrong_url_or_broken_evaluator() -> None:
    http = httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(404, text="nope")))
    with pytest.raises(NotFoundError, match="nope"):
        RewardClient(http_client=http).wait_until_ready(timeout=60)
    broken = httpx.Client(transport=httpx.MockTransport(health_server([500])))
    client = RewardClient(http_client=broken)
    sleeps: list[float] = []
    client._sleep = sleeps.append
    with pytest.raises(NotReadyError, match="reports an error"):
        client.wait_until_ready(timeout=60)
    assert sleeps == []


async def test_async_wait_until_ready() -> None:
    http = httpx.AsyncClient(transport=httpx.MockTransport(health_server([503, 200])))
    client = AsyncRewardClient(http_client=http)

    async def no_sleep(seconds: float) -> None:
        pass

    client._sleep = no_sleep
    assert (await client.wait_until_ready(timeout=60)).status == "ok"
    await http.aclose()


def test_listing_routes() -> None:
    with FakeRewardService().client() as client:
        assert client.evaluators().default == "default"
        assert client.rubrics().rubrics == []
        assert client.score("What is 2+2?", "4", rubric="correctness") == 0.0
