"""Latency and throughput of the inboxes hot path: POST /v1/inboxes (allocation, two
peer calls, a keyed credential hash, the child-side re-check), its idempotent retry, and
GetInbox over gRPC, in process (client and services share one event loop).
Prints a table; asserts nothing about speed."""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable

import grpc
import httpx
from mailplane.inboxes.v1 import inboxes_pb2, inboxes_pb2_grpc
from mailplane.pods.v1 import pods_pb2

from services.chassis.config import Settings

REQUESTS = 500
CONCURRENCY = 16


async def measure(name: str, call: Callable[[int], Awaitable[object]]) -> None:
    """Runs ``REQUESTS`` calls, ``CONCURRENCY`` at a time; prints p50/p99 and req/s."""
    for i in range(50):  # warm caches and prepared statements
        await call(i)
    latencies: list[float] = []
    next_index = iter(range(REQUESTS))

    async def worker() -> None:
        for i in next_index:
            started = time.perf_counter()
            await call(i)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    elapsed = time.perf_counter() - started
    q = statistics.quantiles(latencies, n=100)
    sys.stdout.write(
        f"{name:<28} {REQUESTS / elapsed:8.0f} req/s  p50 {q[49] * 1000:6.2f} ms  "
        f"p99 {q[98] * 1000:6.2f} ms\n"
    )


async def test_inboxes_hot_path(
    http: httpx.AsyncClient,
    make_tenant,
    settings: Settings,  # type: ignore[no-untyped-def]
) -> None:
    tenant = await make_tenant("Bench", pods_pb2.PLAN_ENTERPRISE)
    run = uuid.uuid4().hex[:6]
    first = await http.post(
        "/v1/inboxes", json={"username": f"bench-{run}"}, headers=tenant.headers
    )
    inbox_id = first.json()["id"]
    sys.stdout.write(f"\n{REQUESTS} requests, {CONCURRENCY} in flight\n")
    await measure(
        "REST POST /v1/inboxes (new)",
        lambda i: http.post(
            "/v1/inboxes", json={"username": f"b{run}-{i}"}, headers=tenant.headers
        ),
    )
    await measure(
        "REST POST /v1/inboxes (retry)",
        lambda i: http.post(
            "/v1/inboxes", json={"username": f"bench-{run}"}, headers=tenant.headers
        ),
    )
    async with grpc.aio.insecure_channel(settings.inboxes_addr) as channel:
        stub = inboxes_pb2_grpc.InboxServiceStub(channel)
        await measure(
            "gRPC GetInbox",
            lambda i: stub.GetInbox(
                inboxes_pb2.GetInboxRequest(inbox_id=inbox_id), metadata=tenant.metadata
            ),
        )
