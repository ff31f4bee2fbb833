"""Errors the service answers with, and the handlers that turn them into JSON bodies.

Every error body is `{"error": {"code", "message", "retryable", "request_id"}}`; 429 and
503 carry `Retry-After`. Nothing is answered with a made-up reward.
"""

from __future__ import annotations

import logging
import math

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from rlme.client.wire import ErrorBody, ErrorDetail
from rlme.client.wire.base import SURROGATE_MESSAGE

log = logging.getLogger(__name__)


class ServiceError(Exception):
    status_code = 500
    code = "internal_error"
    retryable = False
    retry_after_s: float | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(ServiceError):
    status_code = 422
    code = "invalid_request"


class Unauthorized(ServiceError):
    status_code = 401
    code = "unauthorized"


class Forbidden(ServiceError):
    status_code = 403
    code = "forbidden"


class NotFound(ServiceError):
    status_code = 404
    code = "not_found"


class PayloadTooLarge(ServiceError):
    status_code = 413
    code = "payload_too_large"


class Overloaded(ServiceError):
    status_code = 429
    code = "overloaded"
    retryable = True

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(f"{message}; retry after {math.ceil(retry_after_s)} s")
        self.retry_after_s = retry_after_s


class NotReady(ServiceError):
    status_code = 503
    code = "not_ready"
    retryable = True
    retry_after_s = 5.0


class EvaluatorBroken(ServiceError):
    """An evaluator that failed to load: retrying cannot help until its config is fixed."""

    status_code = 503
    code = "evaluator_unavailable"
    retryable = False


class StoreUnavailable(ServiceError):
    """An optional state file that cannot be used: an operator has to fix it."""

    status_code = 503
    code = "store_unavailable"
    retryable = False


class ServiceStopping(ServiceError):
    status_code = 503
    code = "shutting_down"
    retryable = True
    retry_after_s = 5.0

    def __init__(self) -> None:
        super().__init__("the service is shutting down; retry on another replica or later")


class DeadlineExceeded(ServiceError):
    status_code = 504
    code = "deadline_exceeded"
    retryable = True

    def __init__(self, waited_s: float) -> None:
        super().__init__(
            f"the request waited {waited_s:.1f} s for the evaluator, past its deadline "
            "(limits.request_timeout_s); retry later or send less work per request"
        )


class EvaluatorFailed(ServiceError):
    status_code = 500
    code = "evaluator_failed"
    retryable = True


def request_id_of(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


def error_response(
    request: Request,
    status_code: int,
    code: str,
    message: str,
    retryable: bool,
    retry_after_s: float | None = None,
) -> JSONResponse:
    body = ErrorBody(
        error=ErrorDetail(code=code, message=message, retryable=retryable, request_id=request_id_of(request))
    )
    headers = {"Retry-After": str(math.ceil(retry_after_s))} if retry_after_s is not None else {}
    if status_code == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(body.model_dump(), status_code=status_code, headers=headers)


def _location(loc: tuple[int | str, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body",)]
    return ".".join(parts) or "body"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        if exc.status_code >= 500:
            log.warning("request %s failed: %s", request_id_of(request), exc.message)
        return error_response(
            request, exc.status_code, exc.code, exc.message, exc.retryable, exc.retry_after_s
        )

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for error in exc.errors()[:10]:
            message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
            if error.get("type") == "string_unicode":  # pydantic's word for a lone surrogate
                message = SURROGATE_MESSAGE
            problems.append(f"{_location(tuple(error.get('loc', ())))}: {message}")
        return error_response(request, 422, "invalid_request", "; ".join(problems), False)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        message = str(exc.detail)
        if exc.status_code == 400 and "parsing the body" in message:  # FastAPI could not decode it
            code = "invalid_json"
            message = "the body is not JSON this service can read: invalid UTF-8, or nested too deep"
        return error_response(request, exc.status_code, code, message, False)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("request %s: unexpected error", request_id_of(request))
        return error_response(request, 500, "internal_error", f"unexpected error: {type(exc).__name__}", True)
