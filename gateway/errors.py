"""The gateway's one mapping from failures to the catalog's JSON error body.

``{"error": code, "message": sentence, "statusCode": http, "details": {…} | null}``
(DESIGN §4). gRPC failures map through their ErrorInfo reason (or their bare
status code) via ``services.chassis.errors``, the single source of both
mappings; request-validation failures become 400 ``invalid_argument`` naming the
field; unknown routes 404 ``not_found``; anything unexpected 500 ``internal``.
"""

from __future__ import annotations

from typing import Any

import grpc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.chassis.errors import CATALOG, Code, MailplaneError
from services.chassis.logs import get_logger
from services.chassis.rpc import from_rpc_error

_log = get_logger("mailplane.gateway")


class ErrorBody(BaseModel):
    """The body of every error response."""

    error: str = Field(description="The catalog code, e.g. `pod_not_empty`.")
    message: str = Field(description="What is wrong and what to do about it.")
    statusCode: int = Field(description="The HTTP status, repeated.")
    details: dict[str, Any] | None = Field(
        description='Facts for programs, e.g. counts: `{"inboxes": 3}`; null when none.'
    )


def error_response(error: MailplaneError) -> JSONResponse:
    """Renders a catalog error as its HTTP response."""
    status = error.entry.http_status
    body = {
        "error": error.code,
        "message": error.message,
        "statusCode": status,
        "details": error.details,
    }
    return JSONResponse(body, status_code=status)


def documented(*codes: Code) -> dict[int | str, dict[str, Any]]:
    """Returns FastAPI ``responses=`` documenting these catalog codes (plus 400, 401, 503)."""
    by_status: dict[int, list[str]] = {}
    for code in ("invalid_argument", "unauthenticated", *codes, "unavailable"):
        by_status.setdefault(CATALOG[code].http_status, []).append(code)
    return {
        status: {"model": ErrorBody, "description": "Error: " + ", ".join(f"`{c}`" for c in names)}
        for status, names in sorted(by_status.items())
    }


def _field_of(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) if parts else "body"


def _validation_error(exc: RequestValidationError) -> MailplaneError:
    first = exc.errors()[0]
    kind = first.get("type", "")
    field = _field_of(tuple(first.get("loc", ())))
    if kind == "json_invalid":
        return MailplaneError(
            "invalid_argument",
            "The request body is not valid JSON; send a JSON object.",
            {"field": "body"},
        )
    if kind == "extra_forbidden":
        problem = "is not a field of this request; remove it."
    elif kind == "missing":
        problem = "is required."
    else:
        problem = f"is invalid: {first.get('msg', 'bad value')}."
    return MailplaneError("invalid_argument", f"`{field}` {problem}", {"field": field})


def install(app: FastAPI) -> None:
    """Registers the exception handlers on ``app``."""

    @app.exception_handler(MailplaneError)
    async def _mailplane(request: Request, exc: MailplaneError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(grpc.aio.AioRpcError)
    async def _rpc(request: Request, exc: grpc.aio.AioRpcError) -> JSONResponse:
        error = from_rpc_error(exc)
        if error.code == "internal":
            _log.error("upstream_internal", path=request.url.path, grpc_code=exc.code().name)
        return error_response(error)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(_validation_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 405:
            error = MailplaneError(
                "method_not_allowed", f"{request.method} is not allowed on {request.url.path}."
            )
        else:
            error = MailplaneError(
                "not_found", f"No route {request.url.path}; see /docs for the API."
            )
        return error_response(error)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        _log.exception("request_failed", path=request.url.path)
        return error_response(
            MailplaneError("internal", "An internal error occurred; it has been logged.")
        )
