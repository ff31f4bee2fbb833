"""One pure-ASGI middleware: request ids, latency metrics, the body size limit, and a
JSON 503 for a request the server gave up on while stopping.

Pure ASGI rather than BaseHTTPMiddleware, which costs a task per request; the HTTP path
must stay within 10% of calling the backend in process.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rlme.service.metrics import Metrics

log = logging.getLogger("rlme.access")

REQUEST_ID_HEADER = b"x-request-id"
access_log = logging.getLogger("rlme.access")


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics, max_body_bytes: int) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", []))
        given = headers.get(REQUEST_ID_HEADER, b"").decode("latin-1")[:128]
        request_id = given or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status = 500
        started_response = False
        limit = self.max_body_bytes

        declared = headers.get(b"content-length")
        too_large = declared is not None and declared.isdigit() and int(declared) > limit
        # The whole body is read here, within the limit, declared or chunked alike: a body
        # that grows past it gets the same 413 before any route parses a byte of it.
        body = bytearray()
        more = not too_large
        while more and not too_large:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            too_large = len(body) > limit
        if too_large:
            await _reject(send, request_id, 413, _too_large(limit))
            self._record(scope, 413, started)
            return
        replayed = False

        async def receive_buffered() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()  # after the body: wait for the disconnect, as Starlette does

        async def send_with_id(message: Message) -> None:
            nonlocal status, started_response
            if message["type"] == "http.response.start":
                status = message["status"]
                started_response = True
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (REQUEST_ID_HEADER, request_id.encode())]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive_buffered, send_with_id)
        except asyncio.CancelledError:
            # The server stopped waiting for this request (shutdown past its grace period):
            # the caller gets a JSON 503 to retry elsewhere, never a bare 500.
            if started_response:  # cut off mid-answer: the server closes the connection
                raise
            status = 503
            await _reject(send, request_id, 503, _STOPPING, retry_after_s=5)
        finally:
            self.metrics.in_flight.dec()
            self._record(scope, status, started)

    def _record(self, scope: Scope, status: int, started: float) -> None:
        """Latency and rejection metrics, and the access log line, of one request."""
        route = _route_of(scope)
        elapsed = time.perf_counter() - started
        self.metrics.request_latency.labels(route, str(status)).observe(elapsed)
        tenant = scope["state"].get("tenant")  # set once the caller is authenticated
        if status >= 400:
            self.metrics.rejected.labels(str(status)).inc()
            if tenant is not None:
                self.metrics.tenant_rejected.labels(tenant, str(status)).inc()
        elif tenant is not None:
            self.metrics.tenant_latency.labels(tenant).observe(elapsed)
        request_id = scope["state"]["request_id"]
        fields = {"request_id": request_id, "tenant": tenant, "status": status, "seconds": elapsed}
        access_log.info("%s %s %d %.3fs", scope.get("method"), route, status, elapsed, extra=fields)


def _route_of(scope: Scope) -> str:
    route: Any = scope.get("route")
    # Unmatched paths share one label so random URLs cannot grow the metric without bound.
    return getattr(route, "path", "unmatched")


_STOPPING = {
    "code": "shutting_down",
    "message": "the service is shutting down; retry on another replica or later",
    "retryable": True,
}


def _too_large(limit: int) -> dict[str, object]:
    return {
        "code": "payload_too_large",
        "message": f"request body is over {limit} bytes; send fewer items per request",
        "retryable": False,
    }


async def _reject(
    send: Send, request_id: str, status: int, error: dict[str, object], retry_after_s: int | None = None
) -> None:
    body = json.dumps({"error": {**error, "request_id": request_id}}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (REQUEST_ID_HEADER, request_id.encode()),
    ]
    if retry_after_s is not None:
        headers.append((b"retry-after", str(retry_after_s).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
