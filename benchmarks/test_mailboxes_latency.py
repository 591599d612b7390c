"""Latency and throughput of the mailboxes hot path: POST /v1/agent/mailboxes (two
peer calls, the plan count under the account lock, the child-side re-check),
GET through the gateway and GetMailbox over gRPC. Prints a table; asserts nothing."""

from __future__ import annotations

import sys
import uuid

import grpc
import httpx
from mailplane.mailboxes.v1 import mailboxes_pb2, mailboxes_pb2_grpc
from mailplane.pods.v1 import pods_pb2

from benchmarks.test_inboxes_latency import CONCURRENCY, REQUESTS, measure
from services.chassis.config import Settings


async def test_mailboxes_hot_path(
    http: httpx.AsyncClient,
    make_tenant,  # type: ignore[no-untyped-def]
    settings: Settings,
) -> None:
    tenant = await make_tenant("Bench", pods_pb2.PLAN_ENTERPRISE)
    run = uuid.uuid4().hex[:6]
    first = await http.post(
        "/v1/agent/mailboxes", json={"address": f"m{run}@mailplane.test"}, headers=tenant.headers
    )
    mailbox_id = first.json()["id"]
    sys.stdout.write(f"\n{REQUESTS} requests, {CONCURRENCY} in flight\n")
    await measure(
        "REST POST /v1/agent/mailboxes",
        lambda i: http.post(
            "/v1/agent/mailboxes",
            json={"address": f"m{run}-{i}@mailplane.test"},
            headers=tenant.headers,
        ),
    )
    await measure(
        "REST GET /v1/agent/mailboxes/{id}",
        lambda i: http.get(f"/v1/agent/mailboxes/{mailbox_id}", headers=tenant.headers),
    )
    async with grpc.aio.insecure_channel(settings.mailboxes_addr) as channel:
        stub = mailboxes_pb2_grpc.MailboxServiceStub(channel)
        await measure(
            "gRPC GetMailbox",
            lambda i: stub.GetMailbox(
                mailboxes_pb2.GetMailboxRequest(mailbox_id=mailbox_id), metadata=tenant.metadata
            ),
        )
