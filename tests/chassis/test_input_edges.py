"""Input validated at the edges, over gRPC directly (as ``grpcurl`` calls the services)
and through the gateway: NUL bytes, oversized IDs, out-of-range timestamps,
malformed protobuf, request IDs and page tokens are a clear ``invalid_argument``
naming the field, never ``INTERNAL``/``UNKNOWN`` or a 500, and no error echoes
unbounded input."""

from __future__ import annotations

import base64
import json
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf import timestamp_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from mailplane.domains.v1 import domains_pb2, domains_pb2_grpc
from mailplane.inboxes.v1 import inboxes_pb2, inboxes_pb2_grpc
from mailplane.mailboxes.v1 import mailboxes_pb2, mailboxes_pb2_grpc
from mailplane.pods.v1 import pods_pb2, pods_pb2_grpc
from structlog.testing import capture_logs

from services.chassis import auth
from services.chassis.config import Settings
from services.chassis.errors import MailplaneError
from services.chassis.rpc import ChassisInterceptor, from_rpc_error
from tests.conftest import Services, Tenant


def field_of(error: grpc.aio.AioRpcError) -> str:
    """The ``field`` an INVALID_ARGUMENT names in its ErrorInfo."""
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert info.reason == "INVALID_ARGUMENT"
    return info.metadata["field"]


@pytest.fixture
async def channels(services: Services, settings: Settings) -> Any:
    opened = {
        name: grpc.aio.insecure_channel(getattr(settings, f"{name}_addr"))
        for name in ("pods", "inboxes", "domains", "mailboxes")
    }
    yield opened
    for channel in opened.values():
        await channel.close()


def _calls(channels: dict[str, grpc.aio.Channel], bad: str) -> list[tuple[Any, Any, str]]:
    """One call per service whose request carries ``bad`` in a string field, and the
    field the error must name."""
    pods = pods_pb2_grpc.PodServiceStub(channels["pods"])
    inboxes = inboxes_pb2_grpc.InboxServiceStub(channels["inboxes"])
    domains = domains_pb2_grpc.DomainServiceStub(channels["domains"])
    mailboxes = mailboxes_pb2_grpc.MailboxServiceStub(channels["mailboxes"])
    return [
        (pods.CreatePod, pods_pb2.CreatePodRequest(pod=pods_pb2.Pod(name=bad)), "pod.name"),
        (pods.GetPod, pods_pb2.GetPodRequest(pod_id=bad), "podId"),
        (inboxes.GetInbox, inboxes_pb2.GetInboxRequest(inbox_id=bad), "inboxId"),
        (
            inboxes.CreateInbox,
            inboxes_pb2.CreateInboxRequest(inbox=inboxes_pb2.Inbox(display_name=bad)),
            "inbox.displayName",
        ),
        (
            domains.CreateDomain,
            domains_pb2.CreateDomainRequest(domain=domains_pb2.Domain(name=bad)),
            "domain.domain",
        ),
        (mailboxes.GetMailbox, mailboxes_pb2.GetMailboxRequest(mailbox_id=bad), "mailboxId"),
        (
            mailboxes.CreateFolder,
            mailboxes_pb2.CreateFolderRequest(
                mailbox_id="mbx_x", folder=mailboxes_pb2.Folder(name=bad)
            ),
            "folder.name",
        ),
    ]


async def test_nul_in_any_string_field_over_grpc_is_invalid_argument_naming_it(
    channels: dict[str, grpc.aio.Channel], tenant: Tenant
) -> None:
    for method, request, field in _calls(channels, "a\x00b"):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await method(request, metadata=tenant.metadata)
        assert field_of(err.value) == field
        assert "NUL" in (err.value.details() or "")


async def test_a_9kb_id_over_grpc_is_refused_with_a_bounded_message(
    channels: dict[str, grpc.aio.Channel], tenant: Tenant
) -> None:
    for method, request, field in _calls(channels, "é" * 9000):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await method(request, metadata=tenant.metadata)
        assert field_of(err.value) == field
        assert len(err.value.details() or "") < 300
        assert "éé" not in (err.value.details() or "")


async def test_the_longest_allowed_non_ascii_values_answer_catalog_errors_in_small_trailers(
    channels: dict[str, grpc.aio.Channel], tenant: Tenant
) -> None:
    # 255 two-byte characters, echoed, percent-encoded in grpc-message and again in
    # grpc-status-details-bin: still under gRPC's 8 KiB soft metadata limit.
    for method, request, _ in _calls(channels, "é" * 255):
        try:
            await method(request, metadata=tenant.metadata)
        except grpc.aio.AioRpcError as error:
            assert error.code() not in (
                grpc.StatusCode.INTERNAL,
                grpc.StatusCode.UNKNOWN,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
            ), error
            assert len(error.details() or "") <= 512


async def test_a_long_id_over_rest_is_a_400_with_a_bounded_message(
    http: httpx.AsyncClient, tenant: Tenant
) -> None:
    for path in ("/v1/pods/", "/v1/inboxes/", "/v1/domains/", "/v1/agent/mailboxes/"):
        response = await http.get(path + "x" * 9000, headers=tenant.headers)
        assert response.status_code == 400, response.text
        assert response.json()["details"]["field"] in ("pod", "inbox", "domain", "mailbox")
        assert len(response.text) < 500


async def test_a_timestamp_out_of_range_over_grpc_is_invalid_argument(
    channels: dict[str, grpc.aio.Channel], tenant: Tenant
) -> None:
    keys = pods_pb2_grpc.ApiKeyServiceStub(channels["pods"])
    for ts in (
        timestamp_pb2.Timestamp(seconds=10**12),
        timestamp_pb2.Timestamp(seconds=-(10**12)),
        timestamp_pb2.Timestamp(seconds=0, nanos=-1),
    ):
        request = pods_pb2.CreateApiKeyRequest(api_key=pods_pb2.ApiKey(name="k", expire_time=ts))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await keys.CreateApiKey(request, metadata=tenant.metadata)
        assert field_of(err.value) == "apiKey.expiresAt"


async def test_malformed_protobuf_is_invalid_argument_not_unknown(
    channels: dict[str, grpc.aio.Channel], tenant: Tenant
) -> None:
    for service, method in (
        ("pods", "/mailplane.pods.v1.PodService/CreatePod"),
        ("mailboxes", "/mailplane.mailboxes.v1.MailboxService/CreateRule"),
    ):
        call = channels[service].unary_unary(method)  # bytes in, bytes out
        for garbage in (b"\xff\xff\xff", b"\x0a\x05ab", b"\x0a\x02\xc3\x28"):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call(garbage, metadata=tenant.metadata)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value
            assert "protobuf" in (err.value.details() or "")


@pytest.mark.parametrize("sent", ["a b", "x" * 200, "id;drop", "ok\\u00e9", "x" * 4000])
async def test_a_bad_request_id_in_metadata_is_replaced_not_logged_verbatim(
    channels: dict[str, grpc.aio.Channel], tenant: Tenant, sent: str
) -> None:
    pods = pods_pb2_grpc.PodServiceStub(channels["pods"])
    with capture_logs() as logs:
        await pods.ListPods(
            pods_pb2.ListPodsRequest(), metadata=(*tenant.metadata, ("x-request-id", sent))
        )
    (line,) = [entry for entry in logs if entry["event"] == "rpc"]
    assert line["request_id"] != sent and len(line["request_id"]) == 32


async def test_a_good_request_id_in_metadata_is_kept(
    channels: dict[str, grpc.aio.Channel], tenant: Tenant
) -> None:
    pods = pods_pb2_grpc.PodServiceStub(channels["pods"])
    with capture_logs() as logs:
        await pods.ListPods(
            pods_pb2.ListPodsRequest(), metadata=(*tenant.metadata, ("x-request-id", "trace-7.a:b"))
        )
    assert [e["request_id"] for e in logs if e["event"] == "rpc"] == ["trace-7.a:b"]


# Page tokens -----------------------------------------------------------------------

#: The five list families and the body key of their items.
LISTS = {
    "/v1/pods": "pods",
    "/v1/api-keys": "apiKeys",
    "/v1/inboxes": "inboxes",
    "/v1/domains": "domains",
    "/v1/agent/mailboxes": "mailboxes",
}


def _crafted(values: list[Any]) -> str:
    raw = json.dumps(values).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize("path", list(LISTS))
async def test_crafted_page_tokens_are_invalid_argument_on_every_list(
    http: httpx.AsyncClient, tenant: Tenant, path: str
) -> None:
    tags = ["pods", "api_keys", "inboxes::", "domains:::", "mailboxes:", "x"]
    crafted = [
        *(_crafted([tag, *rest]) for tag in tags for rest in ([1, 2, 3], [[], {}], ["a", "b"])),
        *(_crafted([tag, True, "2026-01-01T00:00:00+00:00", "pod_x"]) for tag in tags),
        "!!!",
        "e30",
    ]
    for token in crafted:
        response = await http.get(path, params={"pageToken": token}, headers=tenant.headers)
        assert response.status_code == 400, (token, response.text)
        assert response.json()["details"] == {"field": "pageToken"}


async def _token(http: httpx.AsyncClient, tenant: Tenant, path: str, **params: Any) -> str:
    page = await http.get(path, params={"limit": 1, **params}, headers=tenant.headers)
    token = page.json()["nextPageToken"]
    assert token, page.text
    return str(token)


async def test_a_page_token_is_bound_to_its_account_and_listing(
    http: httpx.AsyncClient, tenant: Tenant, other_tenant: Tenant
) -> None:
    for who in (tenant, other_tenant):
        for i in range(2):
            await http.post("/v1/pods", json={"clientId": f"p{i}"}, headers=who.headers)
    token = await _token(http, tenant, "/v1/pods")
    own = await http.get("/v1/pods", params={"pageToken": token}, headers=tenant.headers)
    assert own.status_code == 200
    swapped = await http.get("/v1/pods", params={"pageToken": token}, headers=other_tenant.headers)
    assert swapped.status_code == 400 and swapped.json()["details"] == {"field": "pageToken"}
    elsewhere = await http.get("/v1/api-keys", params={"pageToken": token}, headers=tenant.headers)
    assert elsewhere.status_code == 400
    tampered = token[:-2] + ("AA" if token[-2:] != "AA" else "BB")
    forged = await http.get("/v1/pods", params={"pageToken": tampered}, headers=tenant.headers)
    assert forged.status_code == 400


def test_a_status_cut_by_grpc_size_limits_maps_to_invalid_argument_not_internal() -> None:
    # What a peer sees when trailers exceed its limit: gRPC's own RESOURCE_EXHAUSTED,
    # with the details of the status the server meant (here NOT_FOUND).
    meant = status_pb2.Status(code=code_pb2.NOT_FOUND, message="No pod")
    error = grpc.aio.AioRpcError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(("grpc-status-details-bin", meant.SerializeToString())),
        details="received metadata size exceeds hard limit",
    )
    assert from_rpc_error(error).code == "invalid_argument"


async def test_out_of_range_numbers_and_times_over_rest_are_400_naming_the_field(
    http: httpx.AsyncClient, tenant: Tenant
) -> None:
    mailbox = await http.post(
        "/v1/agent/mailboxes", json={"address": "ranges@mailplane.test"}, headers=tenant.headers
    )
    assert mailbox.status_code == 201, mailbox.text
    rules = f"/v1/agent/mailboxes/{mailbox.json()['id']}/rules"
    for priority in (2**31, -(2**31) - 1, 2**64):
        rule = {"name": "r", "priority": priority, "action": {"type": "archive"}}
        response = await http.post(rules, json=rule, headers=tenant.headers)
        assert response.status_code == 400 and response.json()["details"] == {"field": "priority"}
    for when in ("10000-01-01T00:00:00Z", "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:60Z"):
        response = await http.post(
            "/v1/api-keys", json={"name": "k", "expiresAt": when}, headers=tenant.headers
        )
        assert response.status_code == 400, (when, response.text)
        assert response.json()["details"] == {"field": "expiresAt"}


async def test_odd_paths_queries_and_request_ids_over_rest_never_answer_5xx(
    http: httpx.AsyncClient, tenant: Tenant
) -> None:
    for path in ("/v1/pods/%FF", "/v1/pods/%00", "/v1/pods?pageToken=%FF", "/v1/pods?podId=%00"):
        response = await http.get(path, headers=tenant.headers)
        assert response.status_code in (200, 400, 404), (path, response.text)
    for sent in ("x" * 12_000, "é", "a\tb"):
        response = await http.get(
            "/v1/pods", headers={**tenant.headers, "X-Request-Id": sent.encode()}
        )
        assert response.status_code == 200
        assert len(response.headers["x-request-id"]) == 32


async def test_an_error_message_and_details_are_cut_before_they_travel_in_trailers() -> None:
    async def unused(secret: str) -> auth.Principal:
        raise auth.bad_key()

    async def verbose(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        raise MailplaneError("pod_not_found", "é" * 20_000, {"pod": "p" * 20_000})

    access = {"/test.Probe/Verbose": auth.OPERATOR_ONLY}
    server = grpc.aio.server(interceptors=[ChassisInterceptor("test", unused, "t", access)])
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "test.Probe", {"Verbose": grpc.unary_unary_rpc_method_handler(verbose)}
            )
        ]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await channel.unary_unary("/test.Probe/Verbose")(
                    b"", metadata=((auth.INTERNAL_TOKEN_METADATA, "t"),)
                )
    finally:
        await server.stop(0)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    mapped = from_rpc_error(err.value)
    assert mapped.code == "pod_not_found"
    assert len(mapped.message) <= 512 and mapped.message.endswith("…")
    assert mapped.details is not None and len(str(mapped.details["pod"])) <= 256
