"""Scoped API keys (issue 6) through the real gateway and services: what each scope
and permission allows, through REST and through gRPC with the key in metadata;
revocation, expiry and the per-scope limit."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import httpx
import pytest
from mailplane.inboxes.v1 import inboxes_pb2, inboxes_pb2_grpc
from mailplane.pods.v1 import pods_pb2, pods_pb2_grpc

from services.chassis.config import Settings
from tests.conftest import Tenant, Zone
from tests.gateway.test_rest import assert_error
from tests.inboxes.test_inboxes import new_pod, verified_domain


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


async def new_key(http: httpx.AsyncClient, tenant: Tenant, **body: Any) -> dict[str, Any]:
    body.setdefault("name", f"k-{uuid.uuid4().hex[:6]}")
    response = await http.post("/v1/api-keys", json=body, headers=tenant.headers)
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


async def inbox(http: httpx.AsyncClient, headers: dict[str, str], **body: Any) -> httpx.Response:
    body.setdefault("username", f"u-{uuid.uuid4().hex[:8]}")
    return await http.post("/v1/inboxes", json=body, headers=headers)


async def mailbox(http: httpx.AsyncClient, headers: dict[str, str], **body: Any) -> httpx.Response:
    body.setdefault("address", f"m-{uuid.uuid4().hex[:8]}@mailplane.test")
    return await http.post("/v1/agent/mailboxes", json=body, headers=headers)


@pytest.fixture
async def big_tenant(make_tenant) -> Tenant:  # type: ignore[no-untyped-def]
    return await make_tenant("Enterprise", pods_pb2.PLAN_ENTERPRISE)  # type: ignore[no-any-return]


async def test_a_pod_key_reaches_only_its_pod(
    http: httpx.AsyncClient, big_tenant: Tenant, dns_zone: Zone
) -> None:
    mine, theirs = await new_pod(http, big_tenant, clientId="mine"), await new_pod(http, big_tenant)
    key = await new_key(http, big_tenant, podId="mine")
    assert key["scope"] == {"type": "pod", "ids": [mine["id"]]}
    pod_key = bearer(key["key"])

    # Pods: its own is visible; another is not found; pods cannot be made or changed.
    assert (await http.get("/v1/pods/mine", headers=pod_key)).status_code == 200
    assert_error(await http.get(f"/v1/pods/{theirs['id']}", headers=pod_key), 404, "pod_not_found")
    listed = (await http.get("/v1/pods", headers=pod_key)).json()["pods"]
    assert [p["id"] for p in listed] == [mine["id"]]
    assert_error(await http.post("/v1/pods", json={}, headers=pod_key), 403, "permission_denied")
    assert_error(
        await http.patch("/v1/pods/mine", json={"name": "x"}, headers=pod_key),
        403,
        "permission_denied",
    )
    assert_error(await http.delete("/v1/pods/mine", headers=pod_key), 403, "permission_denied")

    # Inboxes: made in its pod by default; another pod's are not found.
    made = await inbox(http, pod_key)
    assert made.status_code == 201 and made.json()["podId"] == mine["id"]
    assert_error(await inbox(http, pod_key, podId=theirs["id"]), 404, "pod_not_found")
    other = (await inbox(http, big_tenant.headers, podId=theirs["id"])).json()
    for response in (
        await http.get(f"/v1/inboxes/{other['id']}", headers=pod_key),
        await http.patch(f"/v1/inboxes/{other['id']}", json={"displayName": "x"}, headers=pod_key),
        await http.delete(f"/v1/inboxes/{other['id']}", headers=pod_key),
        await http.post(f"/v1/inboxes/{other['id']}/rotate-credentials", headers=pod_key),
    ):
        assert_error(response, 404, "inbox_not_found")
    listed = (await http.get("/v1/inboxes", headers=pod_key)).json()["inboxes"]
    assert [i["id"] for i in listed] == [made.json()["id"]]

    # Mailboxes: the same.
    box = await mailbox(http, pod_key)
    assert box.status_code == 201 and box.json()["podId"] == mine["id"]
    their_box = (await mailbox(http, big_tenant.headers, podId=theirs["id"])).json()
    assert_error(
        await http.get(f"/v1/agent/mailboxes/{their_box['id']}", headers=pod_key),
        404,
        "mailbox_not_found",
    )
    listed = (await http.get("/v1/agent/mailboxes", headers=pod_key)).json()["mailboxes"]
    assert [m["id"] for m in listed] == [box.json()["id"]]

    # Domains: its pod's and account-wide ones readable; another pod's not found;
    # account-wide ones cannot be created or changed by it.
    wide = await verified_domain(http, big_tenant, dns_zone)
    elsewhere = await verified_domain(http, big_tenant, dns_zone, pod=theirs["id"])
    own = await http.post(
        "/v1/domains",
        json={"domain": f"own-{uuid.uuid4().hex[:6]}.example", "podId": "mine"},
        headers=pod_key,
    )
    assert own.status_code == 201 and own.json()["podId"] == mine["id"]
    assert (await http.get(f"/v1/domains/{wide['id']}", headers=pod_key)).status_code == 200
    assert_error(
        await http.get(f"/v1/domains/{elsewhere['id']}", headers=pod_key), 404, "domain_not_found"
    )
    names = {d["id"] for d in (await http.get("/v1/domains", headers=pod_key)).json()["domains"]}
    assert names == {wide["id"], own.json()["id"]}
    assert_error(
        await http.post("/v1/domains", json={"domain": "wide.example"}, headers=pod_key),
        403,
        "permission_denied",
    )
    assert_error(
        await http.delete(f"/v1/domains/{wide['id']}", headers=pod_key), 403, "permission_denied"
    )
    on_wide = await inbox(http, pod_key, domain=wide["domain"])
    assert on_wide.status_code == 201

    # Keys: only account keys with admin manage keys.
    assert_error(await http.get("/v1/api-keys", headers=pod_key), 403, "permission_denied")
    assert_error(
        await http.post("/v1/api-keys", json={"name": "x"}, headers=pod_key),
        403,
        "permission_denied",
    )


async def test_an_inbox_key_reaches_only_its_inbox(
    http: httpx.AsyncClient, big_tenant: Tenant
) -> None:
    target = (await inbox(http, big_tenant.headers)).json()
    other = (await inbox(http, big_tenant.headers)).json()
    key = bearer((await new_key(http, big_tenant, inboxId=target["id"]))["key"])
    assert (await http.get(f"/v1/inboxes/{target['id']}", headers=key)).status_code == 200
    renamed = await http.patch(
        f"/v1/inboxes/{target['id']}", json={"displayName": "Agent"}, headers=key
    )
    assert renamed.status_code == 200 and renamed.json()["displayName"] == "Agent"
    assert_error(await http.get(f"/v1/inboxes/{other['id']}", headers=key), 404, "inbox_not_found")
    listed = (await http.get("/v1/inboxes", headers=key)).json()["inboxes"]
    assert [i["id"] for i in listed] == [target["id"]]
    assert_error(await inbox(http, key), 403, "permission_denied")
    assert_error(
        await http.delete(f"/v1/inboxes/{target['id']}", headers=key), 403, "permission_denied"
    )
    assert_error(
        await http.get(f"/v1/pods/{big_tenant.default_pod_id}", headers=key), 404, "pod_not_found"
    )
    assert (await http.get("/v1/pods", headers=key)).json()["pods"] == []
    assert (await http.get("/v1/agent/mailboxes", headers=key)).json()["mailboxes"] == []
    assert (await http.get("/v1/domains", headers=key)).json()["domains"] == []
    assert_error(await http.get("/v1/account", headers=key), 403, "permission_denied")
    assert_error(await http.get("/v1/billing/status", headers=key), 403, "permission_denied")


async def test_a_mailbox_key_reaches_only_its_mailboxes_and_their_folders_and_rules(
    http: httpx.AsyncClient, big_tenant: Tenant
) -> None:
    first = (await mailbox(http, big_tenant.headers)).json()
    second = (await mailbox(http, big_tenant.headers)).json()
    outside = (await mailbox(http, big_tenant.headers)).json()
    key = await new_key(
        http, big_tenant, mailboxIds=[first["id"], second["id"]], permissions=["read", "write"]
    )
    h = bearer(key["key"])
    listed = (await http.get("/v1/agent/mailboxes", headers=h)).json()["mailboxes"]
    assert {m["id"] for m in listed} == {first["id"], second["id"]}
    folder = await http.post(
        f"/v1/agent/mailboxes/{first['id']}/folders", json={"name": "F"}, headers=h
    )
    assert folder.status_code == 201
    paused = await http.patch(
        f"/v1/agent/mailboxes/{second['id']}", json={"status": "paused"}, headers=h
    )
    assert paused.json()["status"] == "paused"
    for response in (
        await http.get(f"/v1/agent/mailboxes/{outside['id']}", headers=h),
        await http.get(f"/v1/agent/mailboxes/{outside['id']}/folders", headers=h),
    ):
        assert_error(response, 404, "mailbox_not_found")
    assert_error(await mailbox(http, h), 403, "permission_denied")
    # Delete and clone need admin.
    assert_error(
        await http.delete(f"/v1/agent/mailboxes/{first['id']}", headers=h),
        403,
        "permission_denied",
    )
    assert_error(
        await http.post(
            f"/v1/agent/mailboxes/{first['id']}/clone",
            json={"address": f"c-{uuid.uuid4().hex[:6]}@mailplane.test"},
            headers=h,
        ),
        403,
        "permission_denied",
    )
    assert (await http.get("/v1/inboxes", headers=h)).json()["inboxes"] == []


async def test_a_read_only_key_cannot_write_anywhere(
    http: httpx.AsyncClient, big_tenant: Tenant
) -> None:
    reader = bearer((await new_key(http, big_tenant, permissions=["read"]))["key"])
    existing = (await inbox(http, big_tenant.headers)).json()
    box = (await mailbox(http, big_tenant.headers)).json()
    assert (await http.get("/v1/pods", headers=reader)).status_code == 200
    assert (await http.get(f"/v1/inboxes/{existing['id']}", headers=reader)).status_code == 200
    for response in (
        await http.post("/v1/pods", json={}, headers=reader),
        await inbox(http, reader),
        await http.patch(
            f"/v1/inboxes/{existing['id']}", json={"displayName": "x"}, headers=reader
        ),
        await mailbox(http, reader),
        await http.patch(
            f"/v1/agent/mailboxes/{box['id']}", json={"status": "paused"}, headers=reader
        ),
        await http.post("/v1/domains", json={"domain": "ro.example"}, headers=reader),
        await http.post("/v1/api-keys", json={"name": "x"}, headers=reader),
    ):
        assert_error(response, 403, "permission_denied")


async def test_a_read_write_account_key_cannot_delete_mailboxes_or_manage_keys(
    http: httpx.AsyncClient, big_tenant: Tenant
) -> None:
    writer = bearer((await new_key(http, big_tenant))["key"])  # default: read and write
    await mailbox(http, big_tenant.headers)
    box = (await mailbox(http, writer)).json()
    assert_error(
        await http.delete(f"/v1/agent/mailboxes/{box['id']}", headers=writer),
        403,
        "permission_denied",
    )
    assert_error(await http.get("/v1/api-keys", headers=writer), 403, "permission_denied")
    admin = bearer((await new_key(http, big_tenant, permissions=["read", "write", "admin"]))["key"])
    assert (await http.delete(f"/v1/agent/mailboxes/{box['id']}", headers=admin)).status_code == 200


async def test_scopes_hold_over_grpc_with_the_key_in_metadata(
    http: httpx.AsyncClient, big_tenant: Tenant, settings: Settings
) -> None:
    mine, theirs = await new_pod(http, big_tenant), await new_pod(http, big_tenant)
    key = (await new_key(http, big_tenant, podId=mine["id"]))["key"]
    metadata = (("authorization", f"Bearer {key}"),)
    other = (await inbox(http, big_tenant.headers, podId=theirs["id"])).json()
    async with grpc.aio.insecure_channel(settings.inboxes_addr) as channel:
        stub = inboxes_pb2_grpc.InboxServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetInbox(
                inboxes_pb2.GetInboxRequest(inbox_id=other["id"]), metadata=metadata
            )
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        made = await stub.CreateInbox(inboxes_pb2.CreateInboxRequest(), metadata=metadata)
        assert made.inbox.pod_id == mine["id"]
    async with grpc.aio.insecure_channel(settings.pods_addr) as channel:
        pods = pods_pb2_grpc.PodServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await pods.CreatePod(pods_pb2.CreatePodRequest(), metadata=metadata)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        listed = await pods.ListPods(pods_pb2.ListPodsRequest(), metadata=metadata)
        assert [p.id for p in listed.pods] == [mine["id"]]


async def test_deleting_an_inbox_revokes_its_keys_and_a_mailbox_unscopes_them(
    http: httpx.AsyncClient, big_tenant: Tenant
) -> None:
    target = (await inbox(http, big_tenant.headers)).json()
    inbox_key = await new_key(http, big_tenant, inboxId=target["id"])
    first = (await mailbox(http, big_tenant.headers)).json()
    second = (await mailbox(http, big_tenant.headers)).json()
    both = await new_key(http, big_tenant, mailboxIds=[first["id"], second["id"]])
    only_first = await new_key(http, big_tenant, mailboxIds=[first["id"]])
    await http.delete(f"/v1/inboxes/{target['id']}", headers=big_tenant.headers)
    await http.delete(f"/v1/agent/mailboxes/{first['id']}", headers=big_tenant.headers)
    keys = {
        k["id"]: k
        for k in (await http.get("/v1/api-keys", headers=big_tenant.headers)).json()["apiKeys"]
    }
    assert inbox_key["id"] not in keys and only_first["id"] not in keys
    assert keys[both["id"]]["scope"] == {"type": "mailbox", "ids": [second["id"]]}
    await asyncio.sleep(5.1)  # past every service's key cache
    assert_error(
        await http.get(f"/v1/inboxes/{target['id']}", headers=bearer(inbox_key["key"])),
        401,
        "unauthenticated",
    )


async def test_expired_keys_fail_and_bad_scopes_are_refused(
    http: httpx.AsyncClient, big_tenant: Tenant, other_tenant: Tenant
) -> None:
    soon = (datetime.now(UTC) + timedelta(seconds=2)).isoformat()
    expiring = await new_key(http, big_tenant, expiresAt=soon)
    assert expiring["expiresAt"] is not None
    assert (await http.get("/v1/pods", headers=bearer(expiring["key"]))).status_code == 200
    await asyncio.sleep(7.5)  # expiry, then past the 5 s cache
    assert_error(
        await http.get("/v1/pods", headers=bearer(expiring["key"])), 401, "unauthenticated"
    )

    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    theirs = (await inbox(http, other_tenant.headers)).json()
    for body, code, status in (
        ({"name": "x", "expiresAt": past}, "invalid_argument", 400),
        ({"name": "x", "permissions": ["root"]}, "invalid_argument", 400),
        ({"name": "x", "podId": "p", "inboxId": "i"}, "invalid_argument", 400),
        ({"name": "x", "podId": "missing"}, "pod_not_found", 404),
        ({"name": "x", "inboxId": theirs["id"]}, "inbox_not_found", 404),
        ({"name": "x", "mailboxIds": ["mbx_missing"]}, "mailbox_not_found", 404),
    ):
        assert_error(
            await http.post("/v1/api-keys", json=body, headers=big_tenant.headers), status, code
        )


async def test_at_most_twenty_live_keys_per_scope(
    http: httpx.AsyncClient, big_tenant: Tenant
) -> None:
    pod = await new_pod(http, big_tenant)
    answers = await asyncio.gather(
        *(
            http.post(
                "/v1/api-keys",
                json={"name": f"k{i}", "podId": pod["id"]},
                headers=big_tenant.headers,
            )
            for i in range(24)
        )
    )
    codes = sorted(r.status_code for r in answers)
    assert codes.count(201) == 20 and codes.count(409) == 4
    refused = next(r for r in answers if r.status_code == 409)
    assert refused.json()["error"] == "api_key_limit_reached"


async def test_last_used_at_is_recorded_in_batches(
    http: httpx.AsyncClient, big_tenant: Tenant, services: Any
) -> None:
    key = await new_key(http, big_tenant)
    assert key["lastUsedAt"] is None
    await http.get("/v1/pods", headers=bearer(key["key"]))
    await services.pods.service.flush_key_use()  # what the pods sweep does every 15 s
    keys = (await http.get("/v1/api-keys", headers=big_tenant.headers)).json()["apiKeys"]
    assert next(k for k in keys if k["id"] == key["id"])["lastUsedAt"] is not None


async def test_malformed_keys_are_refused_without_a_database_read(
    http: httpx.AsyncClient, services: Any
) -> None:
    store = services.pods.service._store
    calls = 0
    original = store.find_api_key

    async def counting(digest: bytes) -> Any:
        nonlocal calls
        calls += 1
        return await original(digest)

    store.find_api_key = counting
    try:
        for bad in ("mp_" + "A" * 39, "mp_short", "sk_" + "A" * 39):
            assert_error(await http.get("/v1/pods", headers=bearer(bad)), 401, "unauthenticated")
    finally:
        store.find_api_key = original
    assert calls == 0
