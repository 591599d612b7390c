"""The REST gateway: the operation table mounted over one gRPC channel per service.

Channels and each operation's multicallable are made once, in the lifespan; each
request forwards the caller's key as metadata and makes one call (billing
status, which the gateway composes, makes four). ``/healthz`` says the process is
up; ``/readyz`` asks every service's ``grpc.health.v1.Health``; ``/openapi.json``
is built from the same table and the proto descriptors; ``/docs`` (Swagger UI) and
``/redoc`` are served with their assets from the fastapi-offline package, so they
work with no internet. With ``MAILPLANE_OTLP_ENDPOINT`` set, each request is a span
(FastAPI's own OpenTelemetry support, on the provider ``services.chassis.tracing``
installs), the parent of the gRPC calls it makes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi_offline import FastAPIOffline
from grpc_health.v1 import health_pb2, health_pb2_grpc
from starlette.responses import JSONResponse, Response

from gateway import codec, errors
from gateway.caller import SECURITY, SECURITY_SCHEMES
from gateway.front import Front
from gateway.operations import Endpoint, Operation, endpoint, multicallable
from gateway.routes import (
    account,
    billing,
    domains,
    events,
    inboxes,
    mailboxes,
    messages,
    pods,
    sending,
)
from services.chassis.config import Settings
from services.chassis.errors import CATALOG, Code
from services.chassis.rpc import open_channel

#: Every REST operation but the composed billing status, in the docs' order.
OPERATIONS: tuple[Operation, ...] = (
    *account.OPERATIONS,
    *pods.OPERATIONS,
    *inboxes.OPERATIONS,
    *domains.OPERATIONS,
    *mailboxes.OPERATIONS,
    *messages.OPERATIONS,
    *sending.OPERATIONS,
    *events.OPERATIONS,
)
#: The services the gateway composes: the settings' ``<name>_addr`` of each.
SERVICES = ("pods", "inboxes", "domains", "mailboxes", "messages")
#: Which service serves each proto package.
_SERVICE_OF_PACKAGE = {f"mailplane.{name}.v1": name for name in SERVICES}
_DESCRIPTOR_SET = Path(__file__).resolve().parent.parent / "protos/mailplane/descriptors.binpb"


def create_app(settings: Settings) -> FastAPI:
    """Builds the gateway for ``settings``; channels open when the app starts."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        channels = {name: open_channel(getattr(settings, f"{name}_addr")) for name in SERVICES}
        app.state.channels = channels
        app.state.calls = {
            op.operation_id: multicallable(channels[_service_of(op)], op.rpc) for op in OPERATIONS
        }
        app.state.billing = billing.calls(channels)
        try:
            yield
        finally:
            for channel in channels.values():
                await channel.close()

    traced = bool(settings.otlp_endpoint)
    app = FastAPIOffline(
        title="Mailplane API",
        version="1.0.0",
        summary="Pods, domains, inboxes and mailboxes for AI-agent email.",
        lifespan=lifespan,
        # FastAPI's OpenTelemetry hooks check the providers on every request, so
        # they are on only with tracing; metrics are Prometheus's (gateway.front).
        telemetry={
            "tracing": traced,
            "metrics": False,
            "logs": False,
            "operation_spans": False,
            "exclude": _untraced,
        },
        static_url="/docs-assets",
    )
    app.state.settings = settings
    errors.install(app)
    by_path: dict[str, dict[str, Endpoint]] = {billing.PATH: {"GET": billing.billing_status}}
    for op in OPERATIONS:
        by_path.setdefault(op.path, {})[op.method] = endpoint(op)
    for path, methods in by_path.items():  # one route a path, so a 405 names every method
        app.add_route(path, _by_method(methods), methods=list(methods))
    app.add_middleware(Front)

    @app.get("/healthz", tags=["health"], summary="Process is up", operation_id="healthz")
    async def healthz() -> dict[str, str]:
        """Answers 200 while the gateway process runs."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], summary="Every service is SERVING", operation_id="readyz")
    async def readyz(request: Request) -> JSONResponse:
        """Answers 200 when every service reports SERVING, else 503 with each status."""
        channels: dict[str, grpc.aio.Channel] = request.app.state.channels

        async def check(channel: grpc.aio.Channel) -> str:
            try:
                reply = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=1.0
                )
            except grpc.aio.AioRpcError as exc:
                return exc.code().name
            return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))

        statuses = await asyncio.gather(*(check(c) for c in channels.values()))
        services = dict(zip(channels, statuses, strict=True))
        ready = all(s == "SERVING" for s in services.values())
        return JSONResponse(
            {"status": "ready" if ready else "unready", "services": services},
            status_code=200 if ready else 503,
        )

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = openapi_document(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


#: Paths whose requests are not traced: probes and the docs' assets.
_UNTRACED_PREFIXES = ("/healthz", "/readyz", "/docs", "/redoc", "/openapi.json")


def _untraced(scope: Any) -> bool:
    """FastAPI telemetry's ``exclude``: probes and docs make no spans."""
    return str(scope.get("path", "")).startswith(_UNTRACED_PREFIXES)


def _by_method(endpoints: dict[str, Endpoint]) -> Endpoint:
    """One endpoint for a path's methods (the router already refused any other)."""
    if len(endpoints) == 1:
        (only,) = endpoints.values()
        return only
    endpoints = {**endpoints, "HEAD": endpoints.get("GET", next(iter(endpoints.values())))}

    async def dispatch(request: Request) -> Response:
        return await endpoints[request.method](request)

    return dispatch


def _service_of(op: Operation) -> str:
    return _SERVICE_OF_PACKAGE[op.rpc.containing_service.file.package]


# The OpenAPI document ------------------------------------------------------------


def openapi_document(app: FastAPI) -> dict[str, Any]:
    """The whole contract, OpenAPI 3.1: FastAPI's own routes (health) plus every
    operation of the table, typed from the proto descriptors."""
    if _DESCRIPTOR_SET.exists():
        codec.load_comments(_DESCRIPTOR_SET.read_bytes())
    document = get_openapi(
        title=app.title, version=app.version, summary=app.summary, routes=app.routes
    )
    components: dict[str, Any] = document.setdefault("components", {}).setdefault("schemas", {})
    components["ErrorBody"] = errors.ERROR_BODY_SCHEMA
    document["components"]["securitySchemes"] = SECURITY_SCHEMES
    paths = document.setdefault("paths", {})
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation_document(op, components)
    billing_response = codec.schema_ref(billing.RESPONSE, components, request=False)
    paths[billing.PATH] = {
        "get": _document(
            operation_id=billing.OPERATION_ID,
            summary=billing.SUMMARY,
            description=codec.comment_of(billing.RESPONSE.full_name),
            tag="account",
            parameters=[],
            status=200,
            response=billing_response,
            example=billing.EXAMPLE,
            errors=billing.ERRORS,
        )
    }
    return document


def _operation_document(op: Operation, components: dict[str, Any]) -> dict[str, Any]:
    request_type = op.rpc.input_type
    parameters = [
        {
            "name": variable,
            "in": "path",
            "required": True,
            "schema": codec.field_schema(request_type, name),
            "description": codec.comment_of(f"{request_type.full_name}.{name}"),
        }
        for variable, name in op.path_fields.items()
    ]
    for header, name in op.header_fields.items():
        parameters.append(
            {
                "name": header,
                "in": "header",
                "required": True,
                "schema": codec.field_schema(request_type, name),
                "description": codec.comment_of(f"{request_type.full_name}.{name}"),
            }
        )
    for parameter, name in op.query_fields.items():
        parameters.append(
            {
                "name": parameter,
                "in": "query",
                "required": False,
                "schema": codec.field_schema(request_type, name),
                "description": codec.comment_of(f"{request_type.full_name}.{name}"),
            }
        )
        parameters += [
            {
                "name": alias,
                "in": "query",
                "required": False,
                "schema": codec.field_schema(request_type, name),
                "description": f"Another name for `{parameter}`.",
            }
            for alias, meant in op.aliases.items()
            if meant == parameter
        ]
    if op.paged:
        parameters += [
            {
                "name": "limit",
                "in": "query",
                "required": False,
                "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 50},
                "description": "Page size, 1-100.",
            },
            {
                "name": "pageToken",
                "in": "query",
                "required": False,
                "schema": codec.field_schema(request_type, "page_token"),
                "description": "`nextPageToken` of the previous page.",
            },
        ]
    if op.deleted:
        response: dict[str, Any] = {"$ref": "#/components/schemas/Deleted"}
        components["Deleted"] = DELETED_SCHEMA
    else:
        response = (
            _lifted_schema(op, components)
            if op.lift is not None
            else codec.schema_ref(op.rpc.output_type, components, request=False)
        )
    document = _document(
        operation_id=op.operation_id,
        summary=op.summary,
        description=codec.comment_of(f"{op.rpc.containing_service.full_name}.{op.rpc.name}"),
        tag=op.tag,
        parameters=parameters,
        status=op.status if op.status_of is None else 201,
        response=response,
        example=op.example,
        errors=op.errors,
    )
    if op.media is not None:
        binary = {"schema": {"type": "string", "format": "binary"}}
        document["responses"][str(op.status)]["content"] = {op.media_type: binary}
    if op.status_of is not None:
        document["responses"]["200"] = {
            "description": "The resource already existed (an idempotent retry).",
            "content": {"application/json": {"schema": response}},
        }
    body = op.body_descriptor
    if body is not None:
        schema = codec.schema_ref(body, components, request=True)
        document["requestBody"] = {
            "required": op.body_required,
            "content": {"application/json": {"schema": schema}},
        }
    return document


def _lifted_schema(op: Operation, components: dict[str, Any]) -> dict[str, Any]:
    """``<Response>``: the lifted resource's fields beside the response's others."""
    output = op.rpc.output_type
    name = output.name
    if name not in components:
        scratch: dict[str, Any] = {}  # the unlifted shapes, to take fields from
        codec.schema_ref(output, scratch, request=False)
        lifted = output.fields_by_name[op.lift or ""]
        inner, outer = scratch[lifted.message_type.name], scratch[name]
        for other, schema in scratch.items():
            if other != name:
                components.setdefault(other, schema)
        properties = {
            **inner["properties"],
            **{k: v for k, v in outer["properties"].items() if k != lifted.json_name},
        }
        components[name] = {**outer, "properties": properties, "required": list(properties)}
    return {"$ref": f"#/components/schemas/{name}"}


def _document(
    *,
    operation_id: str,
    summary: str,
    description: str,
    tag: str,
    parameters: list[dict[str, Any]],
    status: int,
    response: dict[str, Any],
    example: Any,
    errors: tuple[Code, ...],
) -> dict[str, Any]:
    content: dict[str, Any] = {"schema": response}
    if example is not None:
        content["example"] = example
    responses: dict[str, Any] = {
        str(status): {"description": "Success.", "content": {"application/json": content}}
    }
    responses.update(_error_responses(errors))
    return {
        "operationId": operation_id,
        "summary": summary,
        "description": description,
        "tags": [tag],
        "parameters": parameters,
        "security": SECURITY,
        "responses": responses,
    }


#: The codes any operation may answer: a bad request, no key, another method on
#: the path (405, with ``Allow``), a service down, a bug (500, logged).
_ANY_OPERATION: tuple[Code, ...] = (
    "invalid_argument",
    "unauthenticated",
    "method_not_allowed",
    "unavailable",
    "internal",
)
#: Response headers of the error statuses that carry one.
_ERROR_HEADERS = {
    429: {
        "Retry-After": {
            "description": "Seconds until the send limit's window ends.",
            "schema": {"type": "integer"},
        }
    },
    405: {
        "Allow": {
            "description": "The methods this path answers, e.g. `GET, POST`.",
            "schema": {"type": "string"},
        }
    },
}


def _error_responses(codes: tuple[Code, ...]) -> dict[str, Any]:
    """The error responses of these catalog codes, plus those any operation may
    answer (400, 401, 405, 500, 503)."""
    by_status: dict[int, list[str]] = {}
    for code in (*_ANY_OPERATION, *codes):
        names = by_status.setdefault(CATALOG[code].http_status, [])
        if code not in names:
            names.append(code)
    responses: dict[str, Any] = {}
    for status, names in sorted(by_status.items()):
        responses[str(status)] = {
            "description": "Error: " + ", ".join(f"`{c}`" for c in names),
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
        }
        if status in _ERROR_HEADERS:
            responses[str(status)]["headers"] = _ERROR_HEADERS[status]
    return responses


DELETED_SCHEMA = {
    "type": "object",
    "description": "The answer to every delete.",
    "properties": {
        "id": {"type": "string", "description": "The ID of the deleted resource."},
        "deleted": {"type": "boolean", "const": True, "description": "Always true."},
    },
    "required": ["id", "deleted"],
    "additionalProperties": False,
}
