"""Prometheus metrics of every Mailplane process (prometheus-client).

One registry per process (prometheus-client's default), served as ``/metrics``
over HTTP on ``MAILPLANE_METRICS_PORT`` (``serve``; 0: no listener). The series:

- ``mailplane_rpc_requests_total{service,method,code}`` and
  ``mailplane_rpc_duration_seconds{service,method}``: every unary RPC a service
  answers, recorded by the chassis interceptor (``services.chassis.rpc``); code
  is the gRPC code name (``OK``, ``NOT_FOUND`` …).
- ``mailplane_http_requests_total{method,route,status}`` and
  ``mailplane_http_request_duration_seconds{method,route}``: every gateway
  request, recorded by its one middleware (``gateway.front``); route is the
  path template (``/v1/pods/{pod}``), so IDs never become labels.
- ``mailplane_db_pool_connections{pool,state}`` (``in_use``, ``idle``, ``max``):
  each asyncpg pool of the process, read when scraped.
- ``mailplane_queue_depth{queue}`` and ``mailplane_queue_oldest_age_seconds{queue}``:
  work waiting (the inbound spool, pending webhook deliveries), sampled by the
  messages worker.
- ``mailplane_smtp_transactions_total{listener,outcome}``: SMTP replies to RCPT and
  DATA, ``accepted``, ``rejected`` (5xx) or ``deferred`` (4xx).
- ``mailplane_webhook_deliveries_total{outcome}``: webhook attempts,
  ``succeeded`` (2xx) or ``failed`` (anything else, or no answer).

Recording costs a dictionary lookup and a lock-free increment per request; the
labelled children are cached so nothing is built per call.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import asyncpg
from prometheus_client import REGISTRY, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from services.chassis.logs import get_logger

_log = get_logger("mailplane.metrics")

#: Latency buckets, in seconds: 1 ms to 10 s (a cached read is ~1 ms, a DNS
#: verification several seconds).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

RPC_REQUESTS = Counter(
    "mailplane_rpc_requests",
    "Unary RPCs answered, by service, full method name and gRPC code.",
    ["service", "method", "code"],
)
RPC_DURATION = Histogram(
    "mailplane_rpc_duration_seconds",
    "Time to answer a unary RPC, in seconds, by service and method.",
    ["service", "method"],
    buckets=LATENCY_BUCKETS,
)
HTTP_REQUESTS = Counter(
    "mailplane_http_requests",
    "Gateway HTTP requests, by method, route template and status.",
    ["method", "route", "status"],
)
HTTP_DURATION = Histogram(
    "mailplane_http_request_duration_seconds",
    "Time to answer a gateway HTTP request, in seconds, by method and route template.",
    ["method", "route"],
    buckets=LATENCY_BUCKETS,
)
SMTP_TRANSACTIONS = Counter(
    "mailplane_smtp_transactions",
    "SMTP replies to RCPT and DATA, by listener and outcome (accepted, rejected, deferred).",
    ["listener", "outcome"],
)
WEBHOOK_DELIVERIES = Counter(
    "mailplane_webhook_deliveries",
    "Webhook delivery attempts, by outcome (succeeded, failed).",
    ["outcome"],
)

_rpc_children: dict[tuple[str, str, str], Any] = {}
_rpc_latency: dict[tuple[str, str], Any] = {}
_http_children: dict[tuple[str, str, int], Any] = {}
_http_latency: dict[tuple[str, str], Any] = {}


def observe_rpc(service: str, method: str, code: str, seconds: float) -> None:
    """Records one answered RPC.

    Args:
        service: the service's name (``pods``).
        method: the full method name (``/mailplane.pods.v1.PodService/GetPod``).
        code: the gRPC status code name (``OK``, ``UNAVAILABLE`` …).
        seconds: the time to answer it.
    """
    counter = _rpc_children.get((service, method, code))
    if counter is None:
        counter = _rpc_children[(service, method, code)] = RPC_REQUESTS.labels(
            service, method, code
        )
    latency = _rpc_latency.get((service, method))
    if latency is None:
        latency = _rpc_latency[(service, method)] = RPC_DURATION.labels(service, method)
    counter.inc()
    latency.observe(seconds)


def observe_http(method: str, route: str, status: int, seconds: float) -> None:
    """Records one gateway request.

    Args:
        method: the HTTP method.
        route: the matched path template (``/v1/pods/{pod}``), or ``unmatched``.
        status: the HTTP status answered.
        seconds: the time to answer it.
    """
    counter = _http_children.get((method, route, status))
    if counter is None:
        counter = _http_children[(method, route, status)] = HTTP_REQUESTS.labels(
            method, route, str(status)
        )
    latency = _http_latency.get((method, route))
    if latency is None:
        latency = _http_latency[(method, route)] = HTTP_DURATION.labels(method, route)
    counter.inc()
    latency.observe(seconds)


def smtp_reply(listener: str, reply: str) -> str:
    """Counts an SMTP reply by its class and returns it unchanged.

    Args:
        listener: which listener answered (``mx``, ``submission``).
        reply: the reply line, e.g. ``250 2.1.5 OK`` or ``550 5.1.1 …``.
    """
    outcome = {"2": "accepted", "4": "deferred"}.get(reply[:1], "rejected")
    SMTP_TRANSACTIONS.labels(listener, outcome).inc()
    return reply


class _Pools(Collector):
    """Reads the size of every registered pool when scraped."""

    def __init__(self) -> None:
        #: Each name's latest pool (a process keeps its pools for its whole life).
        self.pools: dict[str, asyncpg.Pool] = {}

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "mailplane_db_pool_connections",
            "Connections of each asyncpg pool: in_use, idle, max.",
            labels=["pool", "state"],
        )
        for name, pool in list(self.pools.items()):
            size, idle = pool.get_size(), pool.get_idle_size()
            family.add_metric([name, "in_use"], size - idle)
            family.add_metric([name, "idle"], idle)
            family.add_metric([name, "max"], pool.get_max_size())
        yield family


_POOLS = _Pools()
REGISTRY.register(_POOLS)


def track_pool(name: str, pool: asyncpg.Pool) -> None:
    """Reports ``pool``'s connections as ``mailplane_db_pool_connections{pool=name}``
    (a second pool of the same name replaces the first)."""
    _POOLS.pools[name] = pool


class QueueGauges(Collector):
    """Depth and age of the queues a worker samples (``set``), reported when scraped.

    ``mailplane_queue_depth{queue}`` (items) and
    ``mailplane_queue_oldest_age_seconds{queue}`` (0 when empty).
    """

    def __init__(self) -> None:
        self._samples: dict[str, tuple[int, float]] = {}

    def set(self, queue: str, depth: int, oldest_age_seconds: float) -> None:
        """Records the latest sample of ``queue``."""
        self._samples[queue] = (depth, oldest_age_seconds)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        depth = GaugeMetricFamily(
            "mailplane_queue_depth", "Items waiting in each queue.", labels=["queue"]
        )
        age = GaugeMetricFamily(
            "mailplane_queue_oldest_age_seconds",
            "Age of the oldest item waiting in each queue, in seconds.",
            labels=["queue"],
        )
        for queue, (count, oldest) in self._samples.items():
            depth.add_metric([queue], count)
            age.add_metric([queue], oldest)
        yield depth
        yield age


QUEUES = QueueGauges()
REGISTRY.register(QUEUES)


def serve(host: str, port: int) -> int | None:
    """Starts the ``/metrics`` listener (prometheus-client's, on its own thread).

    Args:
        host: the interface to listen on.
        port: the TCP port; 0 starts nothing.

    Returns:
        The port listened on, or ``None`` when ``port`` is 0.

    Raises:
        OSError: the port could not be bound.
    """
    if port == 0:
        return None
    server, _ = start_http_server(port, addr=host)
    bound = int(server.server_address[1])
    _log.info("metrics_listening", address=f"{host}:{bound}")
    return bound


class CountedReplies:
    """An aiosmtpd handler that counts the replies of the handler it wraps to RCPT
    and DATA in ``mailplane_smtp_transactions_total{listener}``; every other hook
    and attribute is the wrapped handler's.

    Args:
        handler: the aiosmtpd handler (with ``handle_RCPT`` and ``handle_DATA``).
        listener: the label of the listener (``mx``, ``submission``).
    """

    def __init__(self, handler: Any, listener: str):
        self._handler = handler
        self._listener = listener

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handler, name)

    async def handle_RCPT(self, *args: Any) -> str:
        """The wrapped ``handle_RCPT``'s reply, counted."""
        return smtp_reply(self._listener, await self._handler.handle_RCPT(*args))

    async def handle_DATA(self, *args: Any) -> str:
        """The wrapped ``handle_DATA``'s reply, counted."""
        return smtp_reply(self._listener, await self._handler.handle_DATA(*args))
