"""Exceptions raised by the rlme client.

Catch `RLMEError` to handle everything; catch a leaf to handle one case. The tree:

    RLMEError
    ├── InvalidInputError            input no request can carry (also a ValueError); fix it
    ├── ClientClosedError            the client was closed; make a new one
    ├── NotReadyError                wait_until_ready() gave up
    ├── APIResponseValidationError   a 2xx body broke the contract (shape, count, NaN/Infinity)
    ├── APIConnectionError           no HTTP response (refused, reset, DNS, ...)
    │   └── APITimeoutError              a timeout, or the call's total_timeout ran out
    └── APIStatusError               the server answered 4xx/5xx
        ├── BadRequestError              400, 413, 422: fix the request
        ├── AuthenticationError          401
        ├── PermissionDeniedError        403
        ├── NotFoundError                404
        ├── RateLimitError               429
        ├── ServiceUnavailableError      503: loading or overloaded
        ├── GatewayTimeoutError          504: waited too long in the server's queue
        └── InternalServerError          other 5xx

Status errors carry what the server said (`code`, `message`, `retryable`) and the
`request_id` to quote when reporting a problem.
"""

from __future__ import annotations

import json

import httpx

__all__ = [
    "RLMEError",
    "InvalidInputError",
    "ClientClosedError",
    "NotReadyError",
    "APIResponseValidationError",
    "APIConnectionError",
    "APITimeoutError",
    "APIStatusError",
    "BadRequestError",
    "AuthenticationError",
    "PermissionDeniedError",
    "NotFoundError",
    "RateLimitError",
    "ServiceUnavailableError",
    "GatewayTimeoutError",
    "InternalServerError",
    "status_error",
]


class RLMEError(Exception):
    """Base class of every error the client raises."""


class InvalidInputError(RLMEError, ValueError):
    """Input the client refuses before sending anything: text with a lone UTF-16 surrogate.

    `field` names where it is, e.g. `items[3].response`.
    """

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.field = field


class ClientClosedError(RLMEError):
    """The client was used after `close()` (or after its `with` block)."""


class NotReadyError(RLMEError):
    """The service did not report ready before the deadline."""


class APIResponseValidationError(RLMEError):
    """A successful response whose body is not what the contract promises."""

    def __init__(self, message: str, *, response: httpx.Response) -> None:
        super().__init__(message)
        self.response = response


class APIConnectionError(RLMEError):
    """The request got no HTTP response at all."""

    def __init__(self, message: str, *, request: httpx.Request | None = None) -> None:
        super().__init__(message)
        self.request = request


class APITimeoutError(APIConnectionError):
    """The request timed out (connect, read, write or pool), or the call's `total_timeout` ran out."""


class APIStatusError(RLMEError):
    """The server answered with a 4xx or 5xx status."""

    def __init__(
        self,
        message: str,
        *,
        response: httpx.Response,
        code: str,
        retryable: bool,
        request_id: str | None,
    ) -> None:
        super().__init__(f"{response.status_code} {code}: {message}" + _id_suffix(request_id))
        self.response = response
        self.status_code = response.status_code
        self.code = code
        self.message = message
        self.retryable = retryable
        self.request_id = request_id


class BadRequestError(APIStatusError):
    pass


class AuthenticationError(APIStatusError):
    pass


class PermissionDeniedError(APIStatusError):
    pass


class NotFoundError(APIStatusError):
    pass


class RateLimitError(APIStatusError):
    pass


class ServiceUnavailableError(APIStatusError):
    pass


class GatewayTimeoutError(APIStatusError):
    pass


class InternalServerError(APIStatusError):
    pass


_BY_STATUS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    413: BadRequestError,
    422: BadRequestError,
    429: RateLimitError,
    503: ServiceUnavailableError,
    504: GatewayTimeoutError,
}


def status_error(response: httpx.Response, *, retryable_default: bool) -> APIStatusError:
    """The typed error for a 4xx/5xx response; any body, JSON or not, is accepted."""
    code, message, retryable, request_id = _parse_error_body(response)
    status = response.status_code
    cls = _BY_STATUS.get(status, InternalServerError if status >= 500 else APIStatusError)
    return cls(
        message,
        response=response,
        code=code or _default_code(response),
        retryable=retryable_default if retryable is None else retryable,
        request_id=request_id or response.headers.get("x-request-id"),
    )


def _parse_error_body(response: httpx.Response) -> tuple[str | None, str, bool | None, str | None]:
    """(code, message, retryable, request_id) from our error body, FastAPI's, or plain text."""
    text = response.text
    try:
        body = json.loads(text)
    except ValueError:
        return None, text.strip()[:500] or response.reason_phrase, None, None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        retryable = error.get("retryable")
        request_id = error.get("request_id")
        return (
            _str_or_none(error.get("code")),
            str(error.get("message") or response.reason_phrase),
            retryable if isinstance(retryable, bool) else None,
            _str_or_none(request_id),
        )
    if isinstance(body, dict) and "detail" in body:  # FastAPI's own errors, e.g. 404 on a route
        return None, str(body["detail"])[:500], None, None
    return None, text.strip()[:500] or response.reason_phrase, None, None


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _default_code(response: httpx.Response) -> str:
    return response.reason_phrase.lower().replace(" ", "_") or f"http_{response.status_code}"


def _id_suffix(request_id: str | None) -> str:
    return f" (request_id={request_id})" if request_id else ""
