"""One pure-ASGI middleware: request ids, latency metrics, and the body size limit.

Pure ASGI rather than BaseHTTPMiddleware, which costs a task per request; the HTTP path
must stay within 10% of calling the backend in process.
"""

from __future__ import annotations

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


class _BodyTooLarge(Exception):
    pass


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
        limit = self.max_body_bytes

        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _reject_too_large(send, request_id, limit)
            return

        received = 0

        async def receive_limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _BodyTooLarge()
            return message

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (REQUEST_ID_HEADER, request_id.encode())]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive_limited, send_with_id)
        except _BodyTooLarge:
            status = 413
            await _reject_too_large(send, request_id, limit)
        finally:
            self.metrics.in_flight.dec()
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
            fields = {"request_id": request_id, "tenant": tenant, "status": status, "seconds": elapsed}
            access_log.info("%s %s %d %.3fs", scope.get("method"), route, status, elapsed, extra=fields)


def _route_of(scope: Scope) -> str:
    route: Any = scope.get("route")
    # Unmatched paths share one label so random URLs cannot grow the metric without bound.
    return getattr(route, "path", "unmatched")


async def _reject_too_large(send: Send, request_id: str, limit: int) -> None:
    body = json.dumps(
        {
            "error": {
                "code": "payload_too_large",
                "message": f"request body is over {limit} bytes; send fewer items per request",
                "retryable": False,
                "request_id": request_id,
            }
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (REQUEST_ID_HEADER, request_id.encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
