"""The REST gateway: one FastAPI app over one gRPC channel per service.

Channels and stubs are made once, in the lifespan; each request forwards the
caller's key as metadata and makes one call. ``/healthz`` says the process is up;
``/readyz`` asks every service's ``grpc.health.v1.Health``; ``/openapi.json`` and
``/docs`` are FastAPI's.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import grpc
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway import errors
from gateway.deps import Stubs
from gateway.routes import account, domains, inboxes, mailboxes, pods
from services.chassis.config import Settings
from services.chassis.logs import get_logger
from services.chassis.rpc import open_channel

_log = get_logger("mailplane.gateway")

#: The services the gateway composes, by name; each later service adds itself.
SERVICES = ("pods", "inboxes", "domains", "mailboxes")


def create_app(settings: Settings) -> FastAPI:
    """Builds the gateway for ``settings``; channels open when the app starts."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        channels = {name: open_channel(getattr(settings, f"{name}_addr")) for name in SERVICES}
        app.state.channels = channels
        app.state.stubs = Stubs.over(channels)
        try:
            yield
        finally:
            for channel in channels.values():
                await channel.close()

    app = FastAPI(
        title="Mailplane API",
        version="1.0.0",
        summary="Pods, domains, inboxes and mailboxes for AI-agent email.",
        lifespan=lifespan,
        # Bodies are JSON whatever their Content-Type says (curl -d sends a form type).
        strict_content_type=False,
    )
    app.state.settings = settings
    errors.install(app)
    app.include_router(account.router)
    app.include_router(pods.router)
    app.include_router(inboxes.router)
    app.include_router(domains.router)
    app.include_router(mailboxes.router)

    @app.middleware("http")
    async def canonical_line(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        started = time.perf_counter()
        request.state.request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        response = await call_next(request)
        response.headers["x-request-id"] = request.state.request_id
        _log.info(
            "http",
            method=request.method,
            path=request.url.path,
            status=response.status_code,
            duration_ms=round((time.perf_counter() - started) * 1000, 2),
            request_id=request.state.request_id,
        )
        return response

    @app.get("/healthz", tags=["health"], summary="Process is up")
    async def healthz() -> dict[str, str]:
        """Answers 200 while the gateway process runs."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], summary="Every service is SERVING")
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

    return app
