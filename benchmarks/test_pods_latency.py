"""Latency and throughput of the pods hot path: GetPod over gRPC, and GET /v1/pods/{pod}
and POST /v1/pods through the gateway. Prints a table; asserts nothing about speed
(speed is measured here, never asserted in tests)."""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable

import grpc
import httpx
from mailplane.pods.v1 import pods_pb2, pods_pb2_grpc

from tests.conftest import Tenant

REQUESTS = 2000
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


async def test_pods_hot_path(
    pods_channel: grpc.aio.Channel, http: httpx.AsyncClient, tenant: Tenant
) -> None:
    stub = pods_pb2_grpc.PodServiceStub(pods_channel)
    await stub.CreatePod(
        pods_pb2.CreatePodRequest(pod=pods_pb2.Pod(client_id="bench")), metadata=tenant.metadata
    )
    sys.stdout.write(f"\n{REQUESTS} requests, {CONCURRENCY} in flight\n")
    await measure(
        "gRPC GetPod",
        lambda i: stub.GetPod(pods_pb2.GetPodRequest(pod_id="bench"), metadata=tenant.metadata),
    )
    await measure(
        "REST GET /v1/pods/{pod}", lambda i: http.get("/v1/pods/bench", headers=tenant.headers)
    )
    await measure(
        "REST POST /v1/pods",
        lambda i: http.post("/v1/pods", json={"clientId": f"b{i}"}, headers=tenant.headers),
    )
