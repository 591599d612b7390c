"""The gateway's one middleware, pure ASGI: the request ID, the canonical line and
the request metrics.

Each request gets an ID (the client's ``X-Request-Id`` when it is short and
printable, else a new one), answered in ``x-request-id`` and forwarded to the
services as metadata; when the response is sent, one ``http`` log line records
method, path, status, duration, request ID and trace ID (while tracing is on;
STYLE: one canonical line per request), and the request is counted and timed by
its route template (``services.chassis.metrics``). Pure ASGI rather than
Starlette's ``BaseHTTPMiddleware``, which costs a task and a stream per request.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.chassis import inputs, metrics, tracing
from services.chassis.logs import get_logger

_log = get_logger("mailplane.gateway")
#: The services' rule (``inputs.REQUEST_ID``), on the raw header bytes.
_REQUEST_ID = re.compile(inputs.REQUEST_ID.pattern.encode("ascii"))


def request_id(headers: list[tuple[bytes, bytes]]) -> str:
    """The client's ``X-Request-Id`` if it is 1-128 of ``A-Z a-z 0-9 . _ : -``,
    else a new random one (32 hex digits)."""
    for name, value in headers:
        if name == b"x-request-id":
            if _REQUEST_ID.fullmatch(value):
                return value.decode("ascii")
            break
    return uuid.uuid4().hex


class Front:
    """ASGI middleware: assigns the request ID and logs the canonical line."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        #: Each endpoint's path template, found once (the routing table is fixed).
        self._templates: dict[Any, str] = {}

    def _route_of(self, scope: Scope) -> str:
        """The matched route's path template (``/v1/pods/{pod}``), or ``unmatched``.

        FastAPI's own routes leave ``scope["route"]``; the operation table's
        plain Starlette routes leave only ``scope["endpoint"]``, looked up once in
        the app's routes."""
        route = scope.get("route")
        if route is not None:
            return str(getattr(route, "path", "unmatched"))
        endpoint = scope.get("endpoint")
        if endpoint is None:
            return "unmatched"
        template = self._templates.get(endpoint)
        if template is None:
            routes = getattr(scope.get("app"), "routes", ())
            template = next(
                (r.path for r in routes if getattr(r, "endpoint", None) is endpoint), "unmatched"
            )
            self._templates[endpoint] = template
        return template

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        rid = request_id(scope["headers"])
        scope.setdefault("state", {})["request_id"] = rid
        header = (b"x-request-id", rid.encode("ascii"))
        status: list[int] = [500]

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            route = self._route_of(scope)
            metrics.observe_http(scope["method"], route, status[0], seconds)
            fields: dict[str, Any] = {
                "method": scope["method"],
                "path": scope["path"],
                "status": status[0],
                "duration_ms": round(seconds * 1000, 2),
                "request_id": rid,
                "trace_id": tracing.trace_id(),
            }
            _log.info("http", **fields)
