"""`RewardClient` (sync) and `AsyncRewardClient`: the two ways to call the rlme service.

Both inherit request building and the retry policy from `BaseClient`; each adds only
how to send a request and how to sleep between attempts.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Any

import httpx

from ._core import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_TIMEOUT,
    MAX_RETRIES,
    BaseClient,
    EvaluatorLike,
    ItemLike,
    QuestionLike,
)
from .errors import NotReadyError, RLMEError
from .wire import (
    CalibrationList,
    CalibrationRequest,
    ComparisonRequest,
    ComparisonResponse,
    EvaluatorList,
    Health,
    JudgeList,
    JudgmentRequest,
    JudgmentResponse,
    MetaJudgmentRequest,
    MetaJudgmentResponse,
    ReloadRequest,
    ReloadResponse,
    RewardRequest,
    RewardResponse,
    RubricList,
    RunReport,
)

__all__ = ["RewardClient", "AsyncRewardClient"]


class RewardClient(BaseClient):
    """Blocking client. Thread-safe; big `rewards()` calls fan out over a thread pool.

    `base_url` falls back to $RLME_BASE_URL, then http://127.0.0.1:8000; `api_key` to
    $RLME_API_KEY. An injected `http_client` is not closed by `close()`: its owner closes it.
    """

    def __init__(
        self,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float | httpx.Timeout | None = None,
        total_timeout: float | None = None,
        max_retries: int = MAX_RETRIES,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        http_client: httpx.Client | None = None,
    ) -> None:
        super().__init__(
            base_url=base_url,
            api_key=api_key,
            timeout=timeout,
            total_timeout=total_timeout,
            max_retries=max_retries,
            chunk_size=chunk_size,
            max_concurrency=max_concurrency,
        )
        self._owns_http = http_client is None
        self._http: httpx.Client = http_client or httpx.Client(timeout=timeout or DEFAULT_TIMEOUT)
        self._sleep: Callable[[float], None] = time.sleep

    def __enter__(self) -> RewardClient:
        self._check_open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if not self._closed and self._owns_http:
            self._http.close()
        self._closed = True

    def rewards(
        self,
        items: Sequence[ItemLike],
        *,
        questions: Sequence[QuestionLike] | None = None,
        rubric: str | None = None,
        evaluators: Sequence[EvaluatorLike] | None = None,
        run: str | None = None,
        step: int | None = None,
        calibrated: bool = False,
    ) -> RewardResponse:
        """Score `items`; one reward per item, in order. Give `questions` or `rubric`.
        `run`/`step` tag the request for the service's run monitor (GET /v1/runs/{run});
        `calibrated` adds `p_yes_calibrated` to each score (see `calibrate`)."""
        requests = self._reward_requests(items, questions, rubric, evaluators, run, step, calibrated)
        deadline = self._deadline()  # one for the whole call, every chunk included

        def post(request: RewardRequest) -> RewardResponse:
            return self._post_rewards(request, deadline)

        if len(requests) <= 1:
            return self._merge([post(request) for request in requests])
        pool = ThreadPoolExecutor(min(self.max_concurrency, len(requests)), "rlme-client")
        try:
            return self._merge(list(pool.map(post, requests)))
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def score(
        self,
        prompt: str | list[Any],
        response: str,
        *,
        reference: str | None = None,
        questions: Sequence[QuestionLike] | None = None,
        rubric: str | None = None,
        evaluators: Sequence[EvaluatorLike] | None = None,
    ) -> float:
        """The reward of one (prompt, response) pair."""
        item = {"prompt": prompt, "response": response, "reference": reference}
        answer = self.rewards([item], questions=questions, rubric=rubric, evaluators=evaluators)
        return answer.rewards[0]

    def judgments(self, items: Sequence[Any], **options: Any) -> JudgmentResponse:
        """POST /v1/judgments: N written judgments per item (`judge`, `samples`, `temperature`,
        `max_tokens`, `seed`, `reward`, ... as in `JudgmentRequest`)."""
        request = self._model_request(JudgmentRequest, items=list(items), **options)
        return self._parse(JudgmentResponse, self._send(self._post_model("/v1/judgments", request)))

    def compare(self, pairs: Sequence[Any], **options: Any) -> ComparisonResponse:
        """POST /v1/comparisons: each (prompt, response_a, response_b) judged in both orders."""
        request = self._model_request(ComparisonRequest, pairs=list(pairs), **options)
        return self._parse(ComparisonResponse, self._send(self._post_model("/v1/comparisons", request)))

    def meta_judge(
        self, prompt: str, response: str, judgments: Sequence[str], **options: Any
    ) -> MetaJudgmentResponse:
        """POST /v1/meta-judgments: rank judgments of one response by meta-judge battles."""
        request = self._model_request(
            MetaJudgmentRequest, prompt=prompt, response=response, judgments=list(judgments), **options
        )
        return self._parse(MetaJudgmentResponse, self._send(self._post_model("/v1/meta-judgments", request)))

    def judges(self) -> JudgeList:
        """The server's named judge templates."""
        return self._parse(JudgeList, self._send(self._get("/v1/judges")))

    def evaluators(self) -> EvaluatorList:
        """The evaluators the server has configured, and which one is the default."""
        return self._parse(EvaluatorList, self._send(self._get("/v1/evaluators")))

    def rubrics(self) -> RubricList:
        """The server's named rubrics with their meta-questions and weights."""
        return self._parse(RubricList, self._send(self._get("/v1/rubrics")))

    def run_report(self, run: str) -> RunReport:
        """GET /v1/runs/{run}: the run monitor's per-step statistics, signals and alarm."""
        return self._parse(RunReport, self._send(self._get(f"/v1/runs/{run}")))

    def calibrate(self, items: Sequence[Any], **options: Any) -> CalibrationList:
        """POST /v1/calibrations (admin key): fit p_yes calibrations from labelled items (each
        with `label`), with `questions` or `rubric`, `evaluator`, `held_out_fraction`."""
        request = self._model_request(CalibrationRequest, items=list(items), **options)
        return self._parse(CalibrationList, self._send(self._post_model("/v1/calibrations", request)))

    def calibrations(self) -> CalibrationList:
        """GET /v1/calibrations: the fitted calibrations and their held-out ECE."""
        return self._parse(CalibrationList, self._send(self._get("/v1/calibrations")))

    def reload_evaluator(self, name: str, model: str | None = None) -> ReloadResponse:
        """POST /admin/evaluators/{name}/reload (admin key): the evaluator loads `model` (a
        folder or .gguf the service can read; None: its configured path again) beside its
        current weights and swaps between two batches (RLME's live self)."""
        request = self._model_request(ReloadRequest, model=model)
        return self._parse(ReloadResponse, self._send(self._post_model(self._reload_path(name), request)))

    def health(self) -> Health:
        """One GET /health, without retries: a 503 "loading" report is returned, not raised."""
        request = self._get("/health")
        try:
            return self._parse_health(self._http.send(request))
        except httpx.TransportError as exc:
            raise self._connection_error(exc) from exc

    def wait_until_ready(self, timeout: float = 300.0, *, poll_interval: float = 1.0) -> Health:
        """Poll /health until every evaluator is loaded; NotReadyError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                health = self.health()
                if self._is_ready(health):
                    return health
                last = f"status {health.status!r}, evaluators {health.evaluators}"
            except RLMEError as exc:
                if not self._is_startup_error(exc):
                    raise
                last = str(exc)
            if time.monotonic() >= deadline:
                raise NotReadyError(f"{self.base_url} not ready after {timeout:g} s; last: {last}")
            self._sleep(poll_interval)

    def _post_rewards(self, request: RewardRequest, deadline: float) -> RewardResponse:
        http_request = self._post_rewards_request(request)
        return self._parse_rewards(request, self._send(http_request, deadline))

    def _send(self, request: httpx.Request, deadline: float | None = None) -> httpx.Response:
        """Send with retries, all before `deadline` (default: `total_timeout` from now);
        returns the last response, whatever its status."""
        deadline = self._deadline() if deadline is None else deadline
        attempt = 0
        while True:
            self._time_left(request, deadline)
            last: httpx.Response | httpx.TransportError
            try:
                last = self._read_within(self._http.send(request, stream=True), deadline)
            except httpx.TransportError as exc:
                delay, last = self._retry_delay(attempt, None), exc
                if delay is None:
                    raise self._connection_error(exc) from exc
            else:
                delay = self._retry_delay(attempt, last)
                if delay is None:
                    return last
            self._sleep(self._delay_within(request, delay, deadline, last))
            attempt += 1

    def _read_within(self, response: httpx.Response, deadline: float) -> httpx.Response:
        """The whole body, or APITimeoutError once the deadline passes (each read is cut to
        the time left, so a body dripped a byte at a time cannot outlive the call)."""
        body = bytearray()
        try:
            for chunk in response.iter_bytes():
                body += chunk
                if self._clock() > deadline:
                    raise self._past_deadline(response.request, "the answer was still arriving")
        finally:
            response.close()
        return self._buffered(response, bytes(body))


class AsyncRewardClient(BaseClient):
    """Asyncio client; big `rewards()` calls fan out as concurrent requests.

    Same arguments and fallbacks as `RewardClient`. Use it from one event loop.
    """

    def __init__(
        self,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float | httpx.Timeout | None = None,
        total_timeout: float | None = None,
        max_retries: int = MAX_RETRIES,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        super().__init__(
            base_url=base_url,
            api_key=api_key,
            timeout=timeout,
            total_timeout=total_timeout,
            max_retries=max_retries,
            chunk_size=chunk_size,
            max_concurrency=max_concurrency,
        )
        self._owns_http = http_client is None
        self._http: httpx.AsyncClient = http_client or httpx.AsyncClient(timeout=timeout or DEFAULT_TIMEOUT)
        self._sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    async def __aenter__(self) -> AsyncRewardClient:
        self._check_open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if not self._closed and self._owns_http:
            await self._http.aclose()
        self._closed = True

    async def rewards(
        self,
        items: Sequence[ItemLike],
        *,
        questions: Sequence[QuestionLike] | None = None,
        rubric: str | None = None,
        evaluators: Sequence[EvaluatorLike] | None = None,
        run: str | None = None,
        step: int | None = None,
        calibrated: bool = False,
    ) -> RewardResponse:
        """Score `items`; one reward per item, in order. Give `questions` or `rubric`.
        `run`/`step` tag the request for the service's run monitor (GET /v1/runs/{run});
        `calibrated` adds `p_yes_calibrated` to each score (see `calibrate`)."""
        requests = self._reward_requests(items, questions, rubric, evaluators, run, step, calibrated)
        semaphore = asyncio.Semaphore(self.max_concurrency)
        deadline = self._deadline()  # one for the whole call, every chunk included

        async def post(request: RewardRequest) -> RewardResponse:
            async with semaphore:
                return await self._post_rewards(request, deadline)

        tasks = [asyncio.ensure_future(post(request)) for request in requests]
        try:
            return self._merge(await asyncio.gather(*tasks))
        except BaseException:
            for task in tasks:  # one chunk failed: the others' rewards would be thrown away
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    async def score(
        self,
        prompt: str | list[Any],
        response: str,
        *,
        reference: str | None = None,
        questions: Sequence[QuestionLike] | None = None,
        rubric: str | None = None,
        evaluators: Sequence[EvaluatorLike] | None = None,
    ) -> float:
        """The reward of one (prompt, response) pair."""
        item = {"prompt": prompt, "response": response, "reference": reference}
        answer = await self.rewards([item], questions=questions, rubric=rubric, evaluators=evaluators)
        return answer.rewards[0]

    async def judgments(self, items: Sequence[Any], **options: Any) -> JudgmentResponse:
        """POST /v1/judgments (see `RewardClient.judgments`)."""
        request = self._model_request(JudgmentRequest, items=list(items), **options)
        return self._parse(JudgmentResponse, await self._send(self._post_model("/v1/judgments", request)))

    async def compare(self, pairs: Sequence[Any], **options: Any) -> ComparisonResponse:
        """POST /v1/comparisons (see `RewardClient.compare`)."""
        request = self._model_request(ComparisonRequest, pairs=list(pairs), **options)
        return self._parse(ComparisonResponse, await self._send(self._post_model("/v1/comparisons", request)))

    async def meta_judge(
        self, prompt: str, response: str, judgments: Sequence[str], **options: Any
    ) -> MetaJudgmentResponse:
        """POST /v1/meta-judgments (see `RewardClient.meta_judge`)."""
        request = self._model_request(
            MetaJudgmentRequest, prompt=prompt, response=response, judgments=list(judgments), **options
        )
        return self._parse(
            MetaJudgmentResponse, await self._send(self._post_model("/v1/meta-judgments", request))
        )

    async def judges(self) -> JudgeList:
        return self._parse(JudgeList, await self._send(self._get("/v1/judges")))

    async def evaluators(self) -> EvaluatorList:
        """The evaluators the server has configured, and which one is the default."""
        return self._parse(EvaluatorList, await self._send(self._get("/v1/evaluators")))

    async def rubrics(self) -> RubricList:
        """The server's named rubrics with their meta-questions and weights."""
        return self._parse(RubricList, await self._send(self._get("/v1/rubrics")))

    async def run_report(self, run: str) -> RunReport:
        """GET /v1/runs/{run} (see `RewardClient.run_report`)."""
        return self._parse(RunReport, await self._send(self._get(f"/v1/runs/{run}")))

    async def calibrate(self, items: Sequence[Any], **options: Any) -> CalibrationList:
        """POST /v1/calibrations (see `RewardClient.calibrate`)."""
        request = self._model_request(CalibrationRequest, items=list(items), **options)
        return self._parse(CalibrationList, await self._send(self._post_model("/v1/calibrations", request)))

    async def calibrations(self) -> CalibrationList:
        """GET /v1/calibrations (see `RewardClient.calibrations`)."""
        return self._parse(CalibrationList, await self._send(self._get("/v1/calibrations")))

    async def reload_evaluator(self, name: str, model: str | None = None) -> ReloadResponse:
        """POST /admin/evaluators/{name}/reload (see `RewardClient.reload_evaluator`)."""
        request = self._model_request(ReloadRequest, model=model)
        return self._parse(
            ReloadResponse, await self._send(self._post_model(self._reload_path(name), request))
        )

    async def health(self) -> Health:
        """One GET /health, without retries: a 503 "loading" report is returned, not raised."""
        request = self._get("/health")
        try:
            return self._parse_health(await self._http.send(request))
        except httpx.TransportError as exc:
            raise self._connection_error(exc) from exc

    async def wait_until_ready(self, timeout: float = 300.0, *, poll_interval: float = 1.0) -> Health:
        """Poll /health until every evaluator is loaded; NotReadyError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                health = await self.health()
                if self._is_ready(health):
                    return health
                last = f"status {health.status!r}, evaluators {health.evaluators}"
            except RLMEError as exc:
                if not self._is_startup_error(exc):
                    raise
                last = str(exc)
            if time.monotonic() >= deadline:
                raise NotReadyError(f"{self.base_url} not ready after {timeout:g} s; last: {last}")
            await self._sleep(poll_interval)

    async def _post_rewards(self, request: RewardRequest, deadline: float) -> RewardResponse:
        http_request = self._post_rewards_request(request)
        return self._parse_rewards(request, await self._send(http_request, deadline))

    async def _send(self, request: httpx.Request, deadline: float | None = None) -> httpx.Response:
        """Send with retries, all before `deadline` (default: `total_timeout` from now);
        returns the last response, whatever its status."""
        deadline = self._deadline() if deadline is None else deadline
        attempt = 0
        while True:
            left = self._time_left(request, deadline)
            last: httpx.Response | httpx.TransportError
            try:
                last = await asyncio.wait_for(self._read(request), timeout=left)
            except (TimeoutError, asyncio.TimeoutError):  # one class from Python 3.11
                raise self._past_deadline(request, "the answer was still arriving") from None
            except httpx.TransportError as exc:
                delay, last = self._retry_delay(attempt, None), exc
                if delay is None:
                    raise self._connection_error(exc) from exc
            else:
                delay = self._retry_delay(attempt, last)
                if delay is None:
                    return last
            await self._sleep(self._delay_within(request, delay, deadline, last))
            attempt += 1

    async def _read(self, request: httpx.Request) -> httpx.Response:
        response = await self._http.send(request, stream=True)
        try:
            body = b"".join([chunk async for chunk in response.aiter_bytes()])
        finally:
            await response.aclose()
        return self._buffered(response, body)
