"""The gateway's one mapping from failures to the catalog's JSON error body.

``{"error": code, "message": sentence, "statusCode": http, "details": {…} | null}``
(DESIGN §4). gRPC failures map through their ErrorInfo reason (or their bare
status code) via ``services.chassis.errors``, the single source of both
mappings; bad requests are ``invalid_argument`` (raised by ``gateway.codec``);
unknown routes 404 ``not_found``; anything unexpected 500 ``internal``.
"""

from __future__ import annotations

from collections.abc import Mapping

import grpc
import orjson
from fastapi import FastAPI, Request
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from services.chassis.errors import MailplaneError
from services.chassis.logs import get_logger
from services.chassis.rpc import from_rpc_error

_log = get_logger("mailplane.gateway")


#: The JSON Schema of every error body, for the OpenAPI document.
ERROR_BODY_SCHEMA = {
    "type": "object",
    "description": "The body of every error response.",
    "properties": {
        "error": {"type": "string", "description": "The catalog code, e.g. `pod_not_empty`."},
        "message": {"type": "string", "description": "What is wrong and what to do about it."},
        "statusCode": {"type": "integer", "description": "The HTTP status, repeated."},
        "details": {
            "anyOf": [{"type": "object"}, {"type": "null"}],
            "description": 'Facts for programs, e.g. counts: `{"inboxes": 3}`; null when none.',
        },
    },
    "required": ["error", "message", "statusCode", "details"],
    "additionalProperties": False,
}


#: Seconds an ``unavailable`` (503) answer asks the caller to wait (``Retry-After``,
#: RFC 9110 §10.2.3): about the services' health probe interval, in which a
#: database that came back is noticed.
RETRY_AFTER_SECONDS = 2


def error_response(error: MailplaneError, headers: Mapping[str, str] | None = None) -> Response:
    """Renders a catalog error as its HTTP response; ``unavailable`` carries a
    ``Retry-After`` of ``RETRY_AFTER_SECONDS``, ``send_rate_limited`` the seconds
    until its window ends (DESIGN §7.5)."""
    if error.code == "unavailable":
        headers = {**(headers or {}), "Retry-After": str(RETRY_AFTER_SECONDS)}
    elif error.code == "send_rate_limited" and error.details:
        wait = error.details.get("retryAfterSeconds")
        headers = {**(headers or {}), "Retry-After": str(wait if isinstance(wait, int) else 60)}
    status = error.entry.http_status
    body = {
        "error": error.code,
        "message": error.message,
        "statusCode": status,
        "details": error.details,
    }
    return Response(
        orjson.dumps(body), status_code=status, headers=headers, media_type="application/json"
    )


def install(app: FastAPI) -> None:
    """Registers the exception handlers on ``app``."""

    @app.exception_handler(MailplaneError)
    async def _mailplane(request: Request, exc: MailplaneError) -> Response:
        return error_response(exc)

    @app.exception_handler(grpc.aio.AioRpcError)
    async def _rpc(request: Request, exc: grpc.aio.AioRpcError) -> Response:
        error = from_rpc_error(exc)
        if error.code == "internal":
            _log.error("upstream_internal", path=request.url.path, grpc_code=exc.code().name)
        return error_response(error)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 405:
            allowed = (exc.headers or {}).get("Allow", "")
            error = MailplaneError(
                "method_not_allowed",
                f"{request.method} is not allowed on {request.url.path}; use {allowed}.",
            )
            return error_response(error, {"Allow": allowed})
        return error_response(
            MailplaneError("not_found", f"No route {request.url.path}; see /docs for the API.")
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        _log.exception("request_failed", path=request.url.path)
        return error_response(
            MailplaneError("internal", "An internal error occurred; it has been logged.")
        )
