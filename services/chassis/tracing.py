"""OpenTelemetry traces, off unless ``MAILPLANE_OTLP_ENDPOINT`` is set.

When it is, ``configure`` (called once at the start of a process, before any
server, channel or pool is made) installs an SDK tracer provider whose spans
are batched and exported over OTLP/HTTP (protobuf) to
``<endpoint>/v1/traces``, and the maintained instrumentations: gRPC servers
and clients (opentelemetry-instrumentation-grpc's aio interceptors, which carry
the W3C ``traceparent`` across services), asyncpg (one span per statement) and
the gateway's HTTP requests (FastAPI's own OpenTelemetry support, see
``gateway.app``). So one REST request is one trace: gateway → service → peers
→ PostgreSQL. The standard ``OTEL_*`` variables (sampler, resource attributes,
exporter headers) apply as the SDK reads them.

When it is not set nothing is installed: the OpenTelemetry API's no-op tracer
stays in place and ``trace_id()`` answers ``None``.
"""

from __future__ import annotations

from opentelemetry import trace

from services.chassis.config import Settings
from services.chassis.logs import get_logger

_log = get_logger("mailplane.tracing")
_configured: list[object] = []


def configure(settings: Settings, process: str) -> bool:
    """Installs tracing for this process if ``settings.otlp_endpoint`` is set.

    Args:
        settings: the process's settings.
        process: the OpenTelemetry ``service.name`` suffix, e.g. ``pods`` or
            ``gateway`` (spans are from ``mailplane-<process>``).

    Returns:
        Whether tracing is on. Calling it again does nothing more.
    """
    if not settings.otlp_endpoint:
        return False
    if _configured:
        return True
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
    from opentelemetry.instrumentation.grpc import (
        GrpcAioInstrumentorClient,
        GrpcAioInstrumentorServer,
    )
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(
        resource=Resource.create({"service.name": f"mailplane-{process}"}),
    )
    endpoint = settings.otlp_endpoint.rstrip("/") + "/v1/traces"
    provider.add_span_processor(
        BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint), schedule_delay_millis=1000)
    )
    trace.set_tracer_provider(provider)
    GrpcAioInstrumentorServer().instrument()
    GrpcAioInstrumentorClient().instrument()
    AsyncPGInstrumentor().instrument()
    _configured.append(provider)
    _log.info("tracing_on", endpoint=endpoint, process=process)
    return True


def shutdown() -> None:
    """Exports the spans still batched (at most a few seconds), then stops the exporter."""
    for provider in _configured:
        provider.shutdown()  # type: ignore[attr-defined]


def trace_id() -> str | None:
    """Returns the current span's trace ID (32 hex digits), or ``None`` outside a
    sampled span (always ``None`` while tracing is off)."""
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None
