"""``python -m gateway``: serve the REST gateway with uvicorn (uvloop, httptools) on
``MAILPLANE_GATEWAY_PORT``, with ``/metrics`` on ``MAILPLANE_METRICS_PORT`` and traces
when ``MAILPLANE_OTLP_ENDPOINT`` is set (``services.chassis.server.start_reporting``)."""

from __future__ import annotations

import uvicorn

from gateway.app import create_app
from services.chassis import config, logs, tracing
from services.chassis.server import start_reporting


def main() -> None:
    """Runs uvicorn until SIGTERM or SIGINT (uvicorn shuts down gracefully)."""
    settings = config.from_environment()
    logs.configure(settings.log_level, settings.log_format)
    start_reporting(settings, "gateway")
    try:
        _serve(settings)
    finally:
        tracing.shutdown()


def _serve(settings: config.Settings) -> None:
    uvicorn.run(
        create_app(settings),
        host=settings.bind_host,
        port=settings.gateway_port,
        log_level="warning",
        access_log=False,
        # C parsers and loop: the pure-Python h11 and the stock asyncio loop cost
        # about half the gateway's CPU under load (issue profile, DESIGN §6).
        loop="uvloop",
        http="httptools",
    )


if __name__ == "__main__":
    main()
