"""Metrics in process (``services.chassis.metrics``): the series the real
interceptor, gateway middleware, SMTP edge, pools and queue sampler record, read
back from the process's registry as Prometheus exposes it."""

from __future__ import annotations

import grpc
import httpx
import pytest
from mailplane.pods.v1 import pods_pb2, pods_pb2_grpc
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from services.messages import queues
from tests.conftest import Services, Tenant
from tests.messages.test_inbound import message, new_inbox, send


def sample(name: str, **labels: str) -> float:
    """The value of the exposed sample ``name`` with (at least) these labels; 0 if absent."""
    text = generate_latest(REGISTRY).decode()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0


async def test_a_rest_request_counts_its_route_and_the_rpc_behind_it(
    http: httpx.AsyncClient, tenant: Tenant
) -> None:
    route = {"method": "GET", "route": "/v1/pods/{pod}", "status": "200"}
    rpc = {"service": "pods", "method": "/mailplane.pods.v1.PodService/GetPod", "code": "OK"}
    before = (
        sample("mailplane_http_requests_total", **route),
        sample("mailplane_rpc_requests_total", **rpc),
    )
    answer = await http.get(f"/v1/pods/{tenant.default_pod_id}", headers=tenant.headers)
    assert answer.status_code == 200
    assert sample("mailplane_http_requests_total", **route) == before[0] + 1
    assert sample("mailplane_rpc_requests_total", **rpc) == before[1] + 1
    latency = {"method": "GET", "route": "/v1/pods/{pod}"}
    assert sample("mailplane_http_request_duration_seconds_count", **latency) >= 1
    assert sample("mailplane_rpc_duration_seconds_count", service="pods") >= 1
    # A path with an ID is counted by its template, never by the ID itself.
    assert tenant.default_pod_id not in generate_latest(REGISTRY).decode()


async def test_a_refused_rpc_counts_by_its_code(pods_channel: grpc.aio.Channel) -> None:
    labels = {
        "service": "pods",
        "method": "/mailplane.pods.v1.PodService/ListPods",
        "code": "UNAUTHENTICATED",
    }
    before = sample("mailplane_rpc_requests_total", **labels)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await pods_pb2_grpc.PodServiceStub(pods_channel).ListPods(
            pods_pb2.ListPodsRequest(), metadata=(("authorization", "Bearer junk"),)
        )
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert sample("mailplane_rpc_requests_total", **labels) == before + 1


async def test_smtp_replies_pools_and_the_spool_are_exposed(
    http: httpx.AsyncClient, services: Services, tenant: Tenant, edge: tuple[str, int]
) -> None:
    inbox = await new_inbox(http, services, tenant)
    accepted = sample("mailplane_smtp_transactions_total", listener="mx", outcome="accepted")
    rejected = sample("mailplane_smtp_transactions_total", listener="mx", outcome="rejected")
    await send(edge, message(inbox["email"]), [inbox["email"], "nobody@mailplane.test"])
    # RCPT of the inbox and DATA accepted; RCPT of an unknown address refused (550).
    assert (
        sample("mailplane_smtp_transactions_total", listener="mx", outcome="accepted")
        == accepted + 2
    )
    assert (
        sample("mailplane_smtp_transactions_total", listener="mx", outcome="rejected")
        == rejected + 1
    )
    # The message waits in the spool (no worker runs in this test) until sampled.
    await queues.sample(services.messages.pool)
    assert sample("mailplane_queue_depth", queue="spool") >= 1
    assert sample("mailplane_queue_oldest_age_seconds", queue="spool") >= 0
    assert sample("mailplane_queue_depth", queue="webhook_deliveries") >= 0
    assert sample("mailplane_queue_depth", queue="outbound") >= 0
    assert sample("mailplane_db_pool_connections", pool="messages", state="max") >= 1
