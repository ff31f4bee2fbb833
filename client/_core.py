"""The part of the client that does not care whether it is sync or async.

`BaseClient` builds requests, decides whether and how long to wait before a retry,
splits big reward requests into chunks and merges the answers. `RewardClient` and
`AsyncRewardClient` add only "send" and "sleep" (the httpx `BaseClient` /
openai-python `_base_client.py` split), so the retry policy lives in one place.

Hostile input is refused here too, once for both clients: text that UTF-8 cannot carry
(a lone surrogate) before anything is sent, a call that would outlive its total deadline
(retries, Retry-After sleeps and slow bodies together), and an answer with NaN or
Infinity where a number is promised.
"""

from __future__ import annotations

import email.utils
import json
import math
import os
import random
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ValidationError

from .errors import (
    APIConnectionError,
    APIResponseValidationError,
    APIStatusError,
    APITimeoutError,
    ClientClosedError,
    InvalidInputError,
    NotReadyError,
    RLMEError,
    _parse_error_body,
    status_error,
)
from .wire import (
    EvaluatorChoice,
    Health,
    Item,
    MetaQuestion,
    RewardRequest,
    RewardResponse,
    Usage,
)
from .wire.base import lone_surrogate_at

# Retry policy. Rewards are idempotent (the same items give the same scores), so
# retrying a POST is safe.
MAX_RETRIES = 5
INITIAL_RETRY_DELAY = 0.5  # seconds, doubled on each retry...
MAX_RETRY_DELAY = 8.0  # ...up to this
RETRY_JITTER = 0.25  # a backoff delay is shortened by up to this fraction, so callers spread out
MAX_RETRY_AFTER = 60.0  # a server's Retry-After is honoured up to this many seconds
RETRYABLE_STATUS_CODES = frozenset({408, 429, 500, 502, 503, 504})

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
# Scoring waits in the server's batcher queue; a long read timeout avoids giving up
# on a busy server (which answers 504 itself when a request waited too long).
DEFAULT_TIMEOUT = httpx.Timeout(600.0, connect=10.0)
# One call (every attempt, retry sleep and body read) ends by this many seconds. `timeout`
# bounds each network read; without a total, Retry-After and dripped bodies are unbounded.
DEFAULT_TOTAL_TIMEOUT = 900.0
DEFAULT_CHUNK_SIZE = 64
DEFAULT_MAX_CONCURRENCY = 8

ENV_BASE_URL = "RLME_BASE_URL"
ENV_API_KEY = "RLME_API_KEY"

ItemLike = Item | Mapping[str, Any]
QuestionLike = MetaQuestion | Mapping[str, Any]
EvaluatorLike = EvaluatorChoice | Mapping[str, Any]
ModelT = TypeVar("ModelT", bound=BaseModel)


def parse_retry_after(value: str | None, *, now: float) -> float | None:
    """Seconds to wait from a `Retry-After` value (delta-seconds or HTTP-date); None if unusable."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            date = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        return max(date.timestamp() - now, 0.0)  # a date already past: retry now
    if not seconds >= 0.0:  # negative or NaN: not a delay
        return None
    return seconds


def total_timeout_for(timeout: float | httpx.Timeout | None, total_timeout: float | None) -> float:
    """The per-call deadline in seconds: `total_timeout`, else a plain-number `timeout`, else 900 s."""
    if total_timeout is None:
        plain = isinstance(timeout, int | float) and timeout > 0
        total_timeout = float(timeout) if plain else DEFAULT_TOTAL_TIMEOUT  # type: ignore[arg-type]
    if not total_timeout > 0:  # also NaN
        raise ValueError(f"total_timeout must be > 0 seconds (float('inf') for none), not {total_timeout!r}")
    return total_timeout


def first_leaf(value: object, path: str, is_bad: Callable[[object], bool]) -> tuple[str, object] | None:
    """The path and value of the first leaf in nested models, mappings and lists where `is_bad` holds."""
    children: Iterable[tuple[str, object]]
    if isinstance(value, BaseModel):
        children = ((_join(path, name), child) for name, child in value)
    elif isinstance(value, Mapping):
        children = ((_join(path, str(key)), child) for key, child in value.items())
    elif isinstance(value, list | tuple):
        children = ((f"{path}[{i}]", child) for i, child in enumerate(value))
    else:
        return (path, value) if is_bad(value) else None
    for child_path, child in children:
        found = first_leaf(child, child_path, is_bad)
        if found is not None:
            return found
    return None


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _has_lone_surrogate(value: object) -> bool:
    return isinstance(value, str) and lone_surrogate_at(value) is not None


def reject_lone_surrogates(fields: Mapping[str, object]) -> None:
    """InvalidInputError naming the first string that holds a lone UTF-16 surrogate.

    Such a string is not text: no UTF-8 body can carry it, and the server could only
    score other text than the caller's, so the client refuses it instead of replacing it.
    """
    found = first_leaf(fields, "", _has_lone_surrogate)
    if found is None:
        return
    field, text = found
    index = lone_surrogate_at(str(text))
    at = "" if index is None else f" (U+{ord(str(text)[index]):04X} at character {index})"
    raise InvalidInputError(
        f"{field} holds a lone UTF-16 surrogate{at}, which is not text and cannot be sent as UTF-8; "
        "fix the text, or replace the surrogate with U+FFFD, e.g. "
        "re.sub('[\\ud800-\\udfff]', '\\ufffd', text)",
        field=field,
    )


def encode_json(body: object) -> bytes:
    """The request body as compact UTF-8 JSON (what httpx's `json=` sends), or InvalidInputError."""
    text = json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        reject_lone_surrogates({"": body} if not isinstance(body, Mapping) else body)
        raise InvalidInputError(f"the request body is not valid UTF-8: {exc}", field="") from exc


def _not_finite(value: object) -> bool:
    return isinstance(value, float) and not math.isfinite(value)


def backoff_delay(attempt: int, *, jitter: float) -> float:
    """Exponential backoff for retry number `attempt` (0-based); `jitter` in [0, 1)."""
    delay = min(INITIAL_RETRY_DELAY * 2.0**attempt, MAX_RETRY_DELAY)
    return delay * (1.0 - RETRY_JITTER * jitter)


class BaseClient:
    """Configuration, request building and the retry decision, shared by both clients."""

    _http: httpx.Client | httpx.AsyncClient  # set by the subclass

    def __init__(
        self,
        *,
        base_url: str | None,
        api_key: str | None,
        timeout: float | httpx.Timeout | None,
        total_timeout: float | None,
        max_retries: int,
        chunk_size: int,
        max_concurrency: int,
    ) -> None:
        base_url = base_url or os.environ.get(ENV_BASE_URL) or DEFAULT_BASE_URL
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(
                f"base_url {base_url!r} must start with http:// or https:// "
                f"(pass base_url= or set {ENV_BASE_URL})"
            )
        if max_retries < 0 or chunk_size < 1 or max_concurrency < 1:
            raise ValueError("max_retries must be >= 0; chunk_size and max_concurrency >= 1")
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get(ENV_API_KEY) or None
        self.timeout = timeout  # None: the http client's own timeout
        self.total_timeout = total_timeout_for(timeout, total_timeout)
        self.max_retries = max_retries
        self.chunk_size = chunk_size
        self.max_concurrency = max_concurrency
        self._closed = False
        # Seams for tests: the source of jitter, of the current time and of the deadline clock.
        self._random: Callable[[], float] = random.random
        self._now: Callable[[], float] = time.time
        self._clock: Callable[[], float] = time.monotonic

    @property
    def is_closed(self) -> bool:
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise ClientClosedError(
                f"this {type(self).__name__} is closed; create a new one to send more requests"
            )

    def _build_request(self, method: str, path: str, body: Any = None) -> httpx.Request:
        self._check_open()
        # One id per logical request, kept across its retries, so server logs tie them together.
        headers = {
            "Accept": "application/json",
            "User-Agent": "rlme-client",
            "x-request-id": uuid.uuid4().hex,
        }
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        content = None
        if body is not None:  # encoded here, not by httpx, to name a field UTF-8 cannot carry
            content = encode_json(body)
            headers["Content-Type"] = "application/json"
        timeout = httpx.USE_CLIENT_DEFAULT if self.timeout is None else self.timeout
        return self._http.build_request(
            method, self.base_url + path, content=content, headers=headers, timeout=timeout
        )

    def _model_request(self, wire_model: type[ModelT], /, **fields: Any) -> ModelT:
        """`wire_model(**fields)`, once no field holds text that cannot go over the wire."""
        reject_lone_surrogates(fields)
        return wire_model(**fields)

    @staticmethod
    def _reload_path(name: str) -> str:
        return f"/admin/evaluators/{quote(name, safe='')}/reload"

    def _get(self, path: str) -> httpx.Request:
        return self._build_request("GET", path)

    def _post_rewards_request(self, request: RewardRequest) -> httpx.Request:
        body = request.model_dump(mode="json", exclude_none=True)
        return self._build_request("POST", "/v1/rewards", body)

    def _post_model(self, path: str, request: BaseModel) -> httpx.Request:
        return self._build_request("POST", path, request.model_dump(mode="json", exclude_none=True))

    def _deadline(self) -> float:
        """When a call starting now must be over, on `_clock`."""
        return self._clock() + self.total_timeout

    def _time_left(self, request: httpx.Request, deadline: float) -> float | None:
        """Seconds left for the next attempt (None: no deadline); each network timeout is cut to it."""
        left = deadline - self._clock()
        if left <= 0:
            raise self._past_deadline(request, "no time was left for another attempt")
        if math.isinf(left):
            return None
        phases = request.extensions.get("timeout") or {}
        request.extensions["timeout"] = {
            phase: left if phases.get(phase) is None else min(phases[phase], left)
            for phase in ("connect", "read", "write", "pool")
        }
        return left

    def _delay_within(
        self,
        request: httpx.Request,
        delay: float,
        deadline: float,
        last: httpx.Response | httpx.TransportError,
    ) -> float:
        """`delay`, if sleeping it leaves time for the retry; else the last failure at once, as
        its own typed error (a 429 stays a RateLimitError), saying why it was not retried."""
        if self._clock() + delay < deadline:
            return delay
        why = f"not retried: the retry in {delay:g} s would end past {self.deadline_passed}"
        if isinstance(last, httpx.Response):
            error: RLMEError = self._status_error(last)
        else:
            error = self._connection_error(last)
        error.args = (f"{error.args[0] if error.args else error}; {why}",)
        raise error

    def _past_deadline(self, request: httpx.Request, why: str) -> APITimeoutError:
        return APITimeoutError(f"{why}: {self.deadline_passed} has run out", request=request)

    @staticmethod
    def _buffered(response: httpx.Response, body: bytes) -> httpx.Response:
        """A response read to its end, rebuilt around its decoded body."""
        headers = httpx.Headers(response.headers)
        for name in ("content-encoding", "content-length", "transfer-encoding"):
            headers.pop(name, None)
        return httpx.Response(
            response.status_code,
            headers=headers,
            content=body,
            request=response.request,
            extensions=response.extensions,
        )

    @property
    def deadline_passed(self) -> str:
        return f"this call's total_timeout of {self.total_timeout:g} s"

    def _retry_delay(self, attempt: int, response: httpx.Response | None) -> float | None:
        """Seconds to sleep before retry `attempt` + 1, or None to stop.

        `response` is None when the request got no response (connection error, timeout).
        """
        if attempt >= self.max_retries:
            return None
        if response is not None:
            if response.status_code not in RETRYABLE_STATUS_CODES:
                return None
            if _parse_error_body(response)[2] is False:  # the server says retrying cannot help
                return None
            retry_after = parse_retry_after(response.headers.get("retry-after"), now=self._now())
            if retry_after is not None:
                return min(retry_after, MAX_RETRY_AFTER)
        return backoff_delay(attempt, jitter=self._random())

    @staticmethod
    def _connection_error(exc: httpx.TransportError) -> APIConnectionError:
        try:
            request: httpx.Request | None = exc.request
        except RuntimeError:  # httpx raises this when the error has no request attached
            request = None
        if isinstance(exc, httpx.TimeoutException):
            return APITimeoutError(f"request timed out: {exc!r}", request=request)
        return APIConnectionError(f"could not reach the rlme service: {exc!r}", request=request)

    @staticmethod
    def _status_error(response: httpx.Response) -> APIStatusError:
        return status_error(response, retryable_default=response.status_code in RETRYABLE_STATUS_CODES)

    @staticmethod
    def _parse(model: type[ModelT], response: httpx.Response) -> ModelT:
        if response.is_error:
            raise BaseClient._status_error(response)
        try:
            answer = model.model_validate_json(response.content)
        except ValidationError as exc:
            raise APIResponseValidationError(
                f"{response.request.url.path} answered a body that is not a {model.__name__}: {exc}",
                response=response,
            ) from exc
        BaseClient._reject_non_finite(answer, response)
        return answer

    @staticmethod
    def _reject_non_finite(answer: BaseModel, response: httpx.Response) -> None:
        """Refuse NaN or Infinity anywhere in an answer (JSON cannot, but Python's parser accepts
        them): passed on, one nan reward turns a trainer's whole loss into nan. null stays null."""
        found = first_leaf(answer, "", _not_finite)
        if found is not None:
            raise APIResponseValidationError(
                f"{response.request.url.path} answered {found[1]!r} at {found[0]}; the contract promises a "
                "finite number (or null where allowed), so the answer is refused, not passed on",
                response=response,
            )

    @staticmethod
    def _parse_health(response: httpx.Response) -> Health:
        """The health report, whatever the status: a 503 that carries one means "loading"."""
        if response.is_error:
            try:
                return Health.model_validate_json(response.content)
            except ValidationError:
                pass
        return BaseClient._parse(Health, response)

    @staticmethod
    def _is_ready(health: Health) -> bool:
        if health.status == "error":  # an evaluator failed to load: waiting will not help
            raise NotReadyError(f"the rlme service reports an error: {health.evaluators}")
        return health.status == "ok"

    @staticmethod
    def _is_startup_error(exc: RLMEError) -> bool:
        """Errors expected while a server starts: nothing listening yet, or a proxy's 5xx."""
        return isinstance(exc, APIConnectionError) or (
            isinstance(exc, APIStatusError) and exc.status_code >= 500
        )

    def _reward_requests(
        self,
        items: Sequence[ItemLike],
        questions: Sequence[QuestionLike] | None,
        rubric: str | None,
        evaluators: Sequence[EvaluatorLike] | None,
        run: str | None = None,
        step: int | None = None,
        calibrated: bool = False,
    ) -> list[RewardRequest]:
        """One validated request per chunk of `chunk_size` items."""
        reject_lone_surrogates(
            {"items": items, "questions": questions, "rubric": rubric, "evaluators": evaluators, "run": run}
        )  # before chunking: the index is the caller's, and no chunk has gone out
        parsed = [Item.model_validate(item) for item in items]
        question_list = None if questions is None else [MetaQuestion.model_validate(q) for q in questions]
        evaluator_list = (
            None if evaluators is None else [EvaluatorChoice.model_validate(e) for e in evaluators]
        )
        return [
            RewardRequest(
                items=parsed[start : start + self.chunk_size],
                questions=question_list,
                rubric=rubric,
                evaluators=evaluator_list,
                run=run,
                step=step,
                calibrated=calibrated or None,  # left out of the body unless asked for
            )
            for start in range(0, len(parsed), self.chunk_size)
        ]

    @staticmethod
    def _parse_rewards(request: RewardRequest, response: httpx.Response) -> RewardResponse:
        answer = BaseClient._parse(RewardResponse, response)
        if len(answer.rewards) != len(request.items) or len(answer.results) != len(request.items):
            raise APIResponseValidationError(
                f"sent {len(request.items)} items but got {len(answer.rewards)} rewards "
                f"and {len(answer.results)} results",
                response=response,
            )
        return answer

    @staticmethod
    def _merge(answers: Sequence[RewardResponse]) -> RewardResponse:
        """Chunk answers, in request order, as one answer with summed usage."""
        return RewardResponse(
            rewards=[reward for answer in answers for reward in answer.rewards],
            results=[result for answer in answers for result in answer.results],
            usage=Usage(
                evaluations=sum(a.usage.evaluations for a in answers),
                prompt_tokens=sum(a.usage.prompt_tokens for a in answers),
                cached_prompt_tokens=sum(a.usage.cached_prompt_tokens for a in answers),
            ),
        )
