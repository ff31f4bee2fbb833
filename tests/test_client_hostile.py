"""What the client does with input it cannot send and answers it must not pass on (issue 21):
lone surrogates, Retry-After past the call's total deadline, bodies dripped a byte at a time,
NaN and Infinity in a 200 answer. Without a network: httpx.MockTransport and a fake clock."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import httpx
import pytest

from rlme.client import (
    APIResponseValidationError,
    APITimeoutError,
    AsyncRewardClient,
    InternalServerError,
    InvalidInputError,
    RateLimitError,
    RewardClient,
    RLMEError,
)
from rlme.client._core import DEFAULT_TOTAL_TIMEOUT, total_timeout_for

OK_BODY = {
    "rewards": [-0.2],
    "results": [{"id": None, "reward": -0.2, "scores": []}],
    "usage": {"evaluations": 1, "prompt_tokens": 10, "cached_prompt_tokens": 0},
}


class FakeClock:
    """The client's deadline clock; sleeping advances it instead of waiting."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def client_for(handler, clock: FakeClock, **kwargs) -> RewardClient:  # type: ignore[no-untyped-def]
    client = RewardClient(
        base_url="http://rlme.test",
        http_client=httpx.Client(transport=httpx.MockTransport(handler)),
        **kwargs,
    )
    client._clock = clock
    client._sleep = clock.sleep
    client._random = lambda: 0.0
    return client


def test_a_lone_surrogate_is_a_typed_error_naming_its_field_and_nothing_is_sent() -> None:
    sent: list[httpx.Request] = []
    client = client_for(lambda r: sent.append(r) or httpx.Response(200, json=OK_BODY), FakeClock())
    items = [{"prompt": "fine", "response": "ok"}, {"prompt": "fine", "response": "bad \ud800 text"}]
    with pytest.raises(InvalidInputError) as caught:
        client.rewards(items, questions=[{"id": "q", "text": "Is it fine?"}])
    assert caught.value.field == "items[1].response"
    assert isinstance(caught.value, RLMEError) and isinstance(caught.value, ValueError)
    assert "U+D800" in str(caught.value)
    with pytest.raises(InvalidInputError, match="items"):
        client.judgments([{"prompt": "p", "response": "\udfff"}], judge="additive_5")
    assert sent == []


def test_the_async_client_refuses_a_surrogate_the_same_way() -> None:
    client = AsyncRewardClient(
        base_url="http://rlme.test",
        http_client=httpx.AsyncClient(
            transport=httpx.MockTransport(lambda r: httpx.Response(200, json=OK_BODY))
        ),
    )
    with pytest.raises(InvalidInputError) as caught:
        asyncio.run(client.rewards([{"prompt": "\ud83d", "response": "x"}], rubric="polite"))
    assert caught.value.field == "items[0].prompt"


def test_retry_after_past_the_total_deadline_fails_at_once_as_the_servers_own_error() -> None:
    clock = FakeClock()
    answer = httpx.Response(
        429, headers={"Retry-After": "99999"}, json={"error": {"code": "x", "message": "m"}}
    )
    client = client_for(lambda r: answer, clock, timeout=2)
    with pytest.raises(RateLimitError, match="total_timeout of 2 s") as caught:
        client.rewards([{"prompt": "p", "response": "r"}], rubric="polite")
    assert caught.value.status_code == 429  # still the server's answer, typed
    assert clock.now < 2  # it never slept the 60 s cap, let alone 5 retries of it


def test_retries_stop_when_the_total_deadline_is_spent() -> None:
    clock = FakeClock()
    client = client_for(lambda r: httpx.Response(502, json={}), clock, total_timeout=3)
    with pytest.raises(InternalServerError, match="not retried"):
        client.rewards([{"prompt": "p", "response": "r"}], rubric="polite")
    assert sum(clock.slept) < 3 and len(clock.slept) >= 1


def test_the_deadline_is_one_for_the_whole_call_not_one_per_chunk() -> None:
    clock = FakeClock()
    two = {**OK_BODY, "rewards": [-0.2] * 2, "results": OK_BODY["results"] * 2}

    def slow(request: httpx.Request) -> httpx.Response:
        clock.now += 1.5  # each chunk takes 1.5 s; four chunks, one at a time
        return httpx.Response(200, json=two)

    client = client_for(slow, clock, total_timeout=4, chunk_size=2, max_concurrency=1)
    with pytest.raises(APITimeoutError, match="total_timeout of 4 s"):
        client.rewards([{"prompt": "p", "response": f"r{i}"} for i in range(8)], rubric="polite")


class Drip(httpx.SyncByteStream):
    """A body that arrives one byte per (fake) second."""

    def __init__(self, body: bytes, clock: FakeClock) -> None:
        self.body, self.clock = body, clock

    def __iter__(self) -> Iterator[bytes]:
        for i in range(len(self.body)):
            self.clock.now += 1.0
            yield self.body[i : i + 1]


def test_a_dripped_body_cannot_outlive_the_call() -> None:
    clock = FakeClock()
    body = httpx.Response(200, json=OK_BODY).content
    client = client_for(lambda r: httpx.Response(200, stream=Drip(body, clock)), clock, timeout=2)
    with pytest.raises(APITimeoutError, match="still arriving"):
        client.rewards([{"prompt": "p", "response": "r"}], rubric="polite")
    assert clock.now <= 3  # the deadline (2 s) plus the one byte that crossed it


def test_a_dripped_body_ends_the_async_call_on_time() -> None:
    async def drip() -> httpx.Response:
        async def chunks():  # type: ignore[no-untyped-def]
            for byte in b'{"rewards": [':
                await asyncio.sleep(0.05)
                yield bytes([byte])

        return httpx.Response(200, content=chunks())

    async def handler(request: httpx.Request) -> httpx.Response:
        return await drip()

    async def call() -> None:
        client = AsyncRewardClient(
            base_url="http://rlme.test",
            total_timeout=0.3,
            http_client=httpx.AsyncClient(transport=httpx.MockTransport(handler)),
        )
        await client.rewards([{"prompt": "p", "response": "r"}], rubric="polite")

    started = time.monotonic()
    with pytest.raises(APITimeoutError):
        asyncio.run(call())
    assert time.monotonic() - started < 2


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity"])
def test_a_non_finite_reward_is_refused_never_passed_on(number: str) -> None:
    text = json.dumps(OK_BODY).replace("-0.2", number)  # Python's json writes NaN as a literal too
    answer = httpx.Response(200, content=text.encode(), headers={"content-type": "application/json"})
    client = client_for(lambda r: answer, FakeClock())
    with pytest.raises(APIResponseValidationError, match="finite"):
        client.rewards([{"prompt": "p", "response": "r"}], rubric="polite")


def test_the_total_deadline_defaults() -> None:
    assert total_timeout_for(None, None) == DEFAULT_TOTAL_TIMEOUT
    assert total_timeout_for(2, None) == 2.0
    assert total_timeout_for(httpx.Timeout(5.0), None) == DEFAULT_TOTAL_TIMEOUT
    assert total_timeout_for(2, 30) == 30
    with pytest.raises(ValueError, match="total_timeout"):
        total_timeout_for(None, float("nan"))


class RawServer:
    """A real HTTP/1.1 server on 127.0.0.1 (a socket, no framework) that answers every
    request with `head`, then `body` a byte every `drip_s` seconds: what a slow or hostile
    server does to the client's sockets, which MockTransport cannot show."""

    def __init__(self, head: bytes, body: bytes, drip_s: float = 0.0) -> None:
        import socketserver
        import threading

        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                received = b""
                while b"\r\n\r\n" not in received:
                    chunk = self.request.recv(65536)
                    if not chunk:  # the client went away
                        return
                    received += chunk
                headers, _, sent = received.partition(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in headers.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                )
                while len(sent) < length:
                    chunk = self.request.recv(65536)
                    if not chunk:
                        return
                    sent += chunk
                outer.requests += 1
                try:
                    self.request.sendall(head)
                    for i in range(len(body)):
                        time.sleep(drip_s)
                        self.request.sendall(body[i : i + 1])
                except OSError:  # the client gave up: as it should
                    return

        self.requests = 0
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_real_socket_dripping_its_body_ends_the_call_at_its_total_timeout() -> None:
    body = json.dumps(OK_BODY).encode()
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
    server = RawServer(head, body, drip_s=0.2)  # the body would take ~20 s; each read is 0.2 s
    try:
        client = RewardClient(base_url=server.url, timeout=2)
        started = time.monotonic()
        with pytest.raises(APITimeoutError):
            client.rewards([{"prompt": "p", "response": "r"}], rubric="polite")
        assert time.monotonic() - started < 3.5  # 2 s and one read past it, not 20 s
    finally:
        server.close()


def test_a_real_server_asking_to_retry_after_a_day_fails_the_call_at_once() -> None:
    body = b'{"error": {"code": "rate_limited", "message": "slow down"}}'
    head = (
        b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 99999\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    )
    server = RawServer(head, body)
    try:
        client = RewardClient(base_url=server.url, timeout=2)
        started = time.monotonic()
        with pytest.raises(RateLimitError, match="total_timeout of 2 s"):
            client.rewards([{"prompt": "p", "response": "r"}], rubric="polite")
        assert time.monotonic() - started < 1.5 and server.requests == 1  # asked once, never slept
    finally:
        server.close()
