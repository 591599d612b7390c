"""Latency and throughput of the inboxes hot path: POST /v1/inboxes (allocation, two
peer calls, an argon2id hash, the child-side re-check), its idempotent retry, and
GetInbox over gRPC. Prints a table; asserts nothing about speed."""

from __future__ import annotations

import sys
import uuid

import grpc
import httpx
from mailplane.inboxes.v1 import inboxes_pb2, inboxes_pb2_grpc
from mailplane.pods.v1 import pods_pb2

from benchmarks.test_pods_latency import CONCURRENCY, REQUESTS, measure
from services.chassis.config import Settings


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
