"""The pods service's gRPC surface: an in-process server, a real channel, status
codes and ErrorInfo reasons; health and reflection."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.protobuf import field_mask_pb2
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status
from mailplane.pods.v1 import pods_pb2, pods_pb2_grpc

from services.chassis.auth import INTERNAL_TOKEN_METADATA
from tests.conftest import Tenant


def reason_of(error: grpc.aio.AioRpcError) -> tuple[grpc.StatusCode, str, dict[str, str]]:
    """Returns (status code, ErrorInfo reason, ErrorInfo metadata) of a failed call."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, error
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert info.domain == "mailplane.dev"
    return error.code(), info.reason, dict(info.metadata)


@pytest.fixture
def pod_stub(pods_channel: grpc.aio.Channel) -> pods_pb2_grpc.PodServiceStub:
    return pods_pb2_grpc.PodServiceStub(pods_channel)


async def test_calls_without_a_key_are_unauthenticated(
    pod_stub: pods_pb2_grpc.PodServiceStub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await pod_stub.ListPods(pods_pb2.ListPodsRequest())
    assert reason_of(err.value)[:2] == (grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED")


@pytest.mark.parametrize("header", ["Bearer mp_nope", "Basic abc", "Bearer ", "mp_x"])
async def test_bad_keys_are_unauthenticated(
    pod_stub: pods_pb2_grpc.PodServiceStub, header: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await pod_stub.ListPods(pods_pb2.ListPodsRequest(), metadata=(("authorization", header),))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_pod_lifecycle_over_grpc(
    pod_stub: pods_pb2_grpc.PodServiceStub, tenant: Tenant
) -> None:
    md = tenant.metadata
    pod = await pod_stub.CreatePod(
        pods_pb2.CreatePodRequest(pod=pods_pb2.Pod(client_id="acme", name="Acme")), metadata=md
    )
    assert pod.id.startswith("pod_") and pod.account_id == tenant.account_id
    assert pod.state == pods_pb2.POD_STATE_ACTIVE
    got = await pod_stub.GetPod(pods_pb2.GetPodRequest(pod_id="acme"), metadata=md)
    assert got.id == pod.id
    updated = await pod_stub.UpdatePod(
        pods_pb2.UpdatePodRequest(
            pod_id=pod.id, pod=pods_pb2.Pod(), update_mask=field_mask_pb2.FieldMask(paths=["name"])
        ),
        metadata=md,
    )
    assert not updated.HasField("name") and updated.client_id == "acme"
    listed = await pod_stub.ListPods(pods_pb2.ListPodsRequest(page_size=1), metadata=md)
    assert listed.pods[0].is_default and listed.next_page_token
    deleted = await pod_stub.DeletePod(pods_pb2.DeletePodRequest(pod_id="acme"), metadata=md)
    assert deleted.pod_id == pod.id


async def test_errors_carry_status_and_error_info(
    pod_stub: pods_pb2_grpc.PodServiceStub, tenant: Tenant
) -> None:
    md = tenant.metadata
    await pod_stub.CreatePod(
        pods_pb2.CreatePodRequest(pod=pods_pb2.Pod(client_id="dup")), metadata=md
    )
    cases = [
        (
            pod_stub.CreatePod(
                pods_pb2.CreatePodRequest(pod=pods_pb2.Pod(client_id="dup")), metadata=md
            ),
            grpc.StatusCode.ALREADY_EXISTS,
            "CLIENT_ID_TAKEN",
        ),
        (
            pod_stub.GetPod(pods_pb2.GetPodRequest(pod_id="nope"), metadata=md),
            grpc.StatusCode.NOT_FOUND,
            "POD_NOT_FOUND",
        ),
        (
            pod_stub.DeletePod(
                pods_pb2.DeletePodRequest(pod_id=tenant.default_pod_id), metadata=md
            ),
            grpc.StatusCode.FAILED_PRECONDITION,
            "DEFAULT_POD",
        ),
        (
            pod_stub.UpdatePod(
                pods_pb2.UpdatePodRequest(
                    pod_id="dup", update_mask=field_mask_pb2.FieldMask(paths=["is_default"])
                ),
                metadata=md,
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_ARGUMENT",
        ),
        (
            pod_stub.ListPods(pods_pb2.ListPodsRequest(page_size=500), metadata=md),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_ARGUMENT",
        ),
    ]
    for call, code, reason in cases:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert reason_of(err.value)[:2] == (code, reason)


async def test_operator_methods_need_the_service_credential(
    pods_channel: grpc.aio.Channel, tenant: Tenant
) -> None:
    accounts = pods_pb2_grpc.AccountServiceStub(pods_channel)
    keys = pods_pb2_grpc.ApiKeyServiceStub(pods_channel)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await accounts.CreateAccount(
            pods_pb2.CreateAccountRequest(name="x"), metadata=tenant.metadata
        )
    assert reason_of(err.value)[:2] == (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await accounts.SetAccountPlan(
            pods_pb2.SetAccountPlanRequest(
                account_id=tenant.account_id, plan=pods_pb2.PLAN_ENTERPRISE
            ),
            metadata=tenant.metadata,
        )
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await keys.AuthenticateApiKey(
            pods_pb2.AuthenticateApiKeyRequest(secret=tenant.key), metadata=tenant.metadata
        )
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await accounts.CreateAccount(
            pods_pb2.CreateAccountRequest(name="x"), metadata=((INTERNAL_TOKEN_METADATA, "guess"),)
        )
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_operator_manages_accounts_and_authenticates_keys(
    pods_channel: grpc.aio.Channel, tenant: Tenant, operator_metadata: tuple[tuple[str, str], ...]
) -> None:
    accounts = pods_pb2_grpc.AccountServiceStub(pods_channel)
    account = await accounts.SetAccountState(
        pods_pb2.SetAccountStateRequest(
            account_id=tenant.account_id, state=pods_pb2.ACCOUNT_STATE_EXPIRED
        ),
        metadata=operator_metadata,
    )
    assert account.state == pods_pb2.ACCOUNT_STATE_EXPIRED
    mine = await accounts.GetAccount(pods_pb2.GetAccountRequest(), metadata=tenant.metadata)
    assert mine.state == pods_pb2.ACCOUNT_STATE_EXPIRED and mine.plan == pods_pb2.PLAN_TRIAL
    principal = await pods_pb2_grpc.ApiKeyServiceStub(pods_channel).AuthenticateApiKey(
        pods_pb2.AuthenticateApiKeyRequest(secret=tenant.key), metadata=operator_metadata
    )
    assert principal.account_id == tenant.account_id
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await accounts.SetAccountPlan(
            pods_pb2.SetAccountPlanRequest(account_id="acct_nope", plan=pods_pb2.PLAN_GROWTH),
            metadata=operator_metadata,
        )
    assert reason_of(err.value)[:2] == (grpc.StatusCode.NOT_FOUND, "ACCOUNT_NOT_FOUND")


async def test_a_key_cannot_read_another_account(
    pods_channel: grpc.aio.Channel, tenant: Tenant, other_tenant: Tenant
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await pods_pb2_grpc.AccountServiceStub(pods_channel).GetAccount(
            pods_pb2.GetAccountRequest(account_id=other_tenant.account_id), metadata=tenant.metadata
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await pods_pb2_grpc.PodServiceStub(pods_channel).GetPod(
            pods_pb2.GetPodRequest(pod_id=other_tenant.default_pod_id), metadata=tenant.metadata
        )
    assert reason_of(err.value)[:2] == (grpc.StatusCode.NOT_FOUND, "POD_NOT_FOUND")


async def test_a_deleted_key_stops_working_within_five_seconds(
    pods_channel: grpc.aio.Channel, tenant: Tenant
) -> None:
    keys = pods_pb2_grpc.ApiKeyServiceStub(pods_channel)
    created = await keys.CreateApiKey(
        pods_pb2.CreateApiKeyRequest(api_key=pods_pb2.ApiKey(name="temp")), metadata=tenant.metadata
    )
    temp = (("authorization", f"Bearer {created.secret}"),)
    stub = pods_pb2_grpc.PodServiceStub(pods_channel)
    await stub.ListPods(pods_pb2.ListPodsRequest(), metadata=temp)  # now cached
    await keys.DeleteApiKey(
        pods_pb2.DeleteApiKeyRequest(api_key_id=created.api_key.id), metadata=tenant.metadata
    )
    loop = asyncio.get_running_loop()
    give_up = loop.time() + 6.0
    while True:
        try:
            await stub.ListPods(pods_pb2.ListPodsRequest(), metadata=temp)
        except grpc.aio.AioRpcError as err:
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED
            break
        assert loop.time() < give_up, "a deleted key still worked after the 5 s cache"
        await asyncio.sleep(0.25)


async def test_health_reports_serving(pods_channel: grpc.aio.Channel) -> None:
    health = health_pb2_grpc.HealthStub(pods_channel)
    for service in ("", "mailplane.pods.v1.PodService"):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_lists_the_pod_services(pods_channel: grpc.aio.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(pods_channel)
    replies = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    names = set()
    async for reply in replies:
        names |= {s.name for s in reply.list_services_response.service}
    assert {
        "mailplane.pods.v1.PodService",
        "mailplane.pods.v1.AccountService",
        "mailplane.pods.v1.ApiKeyService",
        "grpc.health.v1.Health",
    } <= names
