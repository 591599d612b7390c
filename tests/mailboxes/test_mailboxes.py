"""Mailboxes through the real gateway and the real pods, domains and mailboxes
services, with a real DNS server on loopback: seed 004's journey on our contract,
status, config, catch-all, address changes, folders and rules, clone, soft delete,
limits, billing, isolation, wiring and races (DESIGN §3, §4 Mailboxes)."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from typing import Any

import grpc
import httpx
import pytest
from mailplane.pods.v1 import pods_pb2, pods_pb2_grpc

from services.chassis.config import Settings
from services.mailboxes.server import MailboxesProcess
from tests.conftest import Tenant, Zone
from tests.domains.test_domains import new_name, publish
from tests.gateway.test_rest import assert_error
from tests.inboxes.test_inboxes import new_pod, verified_domain

MAILBOX_FIELDS = {
    "id",
    "podId",
    "address",
    "displayName",
    "status",
    "config",
    "catchAll",
    "autonomyLevel",
    "createdAt",
    "updatedAt",
}
EMPTY_CONFIG = {
    "inboundRateLimit": None,
    "pausedAutoReply": None,
    "replyTo": None,
    "signature": None,
    "humanizerStyle": None,
}
BASE = "/v1/agent/mailboxes"


def shared(local: str | None = None) -> str:
    return f"{local or 'mb-' + uuid.uuid4().hex[:10]}@mailplane.test"


async def create(http: httpx.AsyncClient, tenant: Tenant, **body: Any) -> httpx.Response:
    body.setdefault("address", shared())
    return await http.post(BASE, json=body, headers=tenant.headers)


async def made(http: httpx.AsyncClient, tenant: Tenant, **body: Any) -> dict[str, Any]:
    response = await create(http, tenant, **body)
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


async def patch(
    http: httpx.AsyncClient, tenant: Tenant, mailbox: dict[str, Any], **body: Any
) -> httpx.Response:
    return await http.patch(f"{BASE}/{mailbox['id']}", json=body, headers=tenant.headers)


@pytest.fixture
async def big_tenant(make_tenant) -> Tenant:  # type: ignore[no-untyped-def]
    return await make_tenant("Enterprise", pods_pb2.PLAN_ENTERPRISE)  # type: ignore[no-any-return]


async def pending_domain(http: httpx.AsyncClient, tenant: Tenant, **body: Any) -> dict[str, Any]:
    response = await http.post(
        "/v1/domains", json={"domain": new_name(), **body}, headers=tenant.headers
    )
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


# Seed 004's journey ----------------------------------------------------------------


async def test_the_seed_journey_on_our_contract(
    http: httpx.AsyncClient, big_tenant: Tenant, dns_zone: Zone
) -> None:
    pod = await new_pod(http, big_tenant, clientId="tenant-abc")
    domain = await pending_domain(http, big_tenant)
    address = f"support@{domain['domain']}"
    created = await create(
        http, big_tenant, tenantId="tenant-abc", address=address, displayName="Support Inbox"
    )
    assert created.status_code == 201, created.text
    mailbox = created.json()
    assert set(mailbox) == MAILBOX_FIELDS
    assert mailbox["podId"] == pod["id"] and mailbox["address"] == address
    assert mailbox["displayName"] == "Support Inbox" and mailbox["status"] == "provisioning"
    assert mailbox["config"] == EMPTY_CONFIG and mailbox["catchAll"] is False
    assert mailbox["autonomyLevel"] == "L1"

    renamed = await patch(http, big_tenant, mailbox, displayName="New Display Name")
    assert renamed.json()["displayName"] == "New Display Name"
    configured = await patch(
        http,
        big_tenant,
        mailbox,
        config={"inboundRateLimit": 120, "pausedAutoReply": "We are currently unavailable."},
    )
    assert configured.json()["config"] == {
        **EMPTY_CONFIG,
        "inboundRateLimit": 120,
        "pausedAutoReply": "We are currently unavailable.",
    }
    paused = await patch(http, big_tenant, mailbox, status="paused")
    assert paused.json()["status"] == "paused"
    resumed = await patch(http, big_tenant, mailbox, status="active")
    assert resumed.json()["status"] == "provisioning"  # its domain cannot receive yet

    clone = await http.post(
        f"{BASE}/{mailbox['id']}/clone",
        json={"address": f"sales@{domain['domain']}", "displayName": "Sales Inbox"},
        headers=big_tenant.headers,
    )
    assert clone.status_code == 201, clone.text
    assert clone.json()["config"] == configured.json()["config"]
    assert clone.json()["displayName"] == "Sales Inbox" and clone.json()["podId"] == pod["id"]

    listed = await http.get(BASE, params={"tenantId": "tenant-abc"}, headers=big_tenant.headers)
    assert [m["id"] for m in listed.json()["mailboxes"]] == [mailbox["id"], clone.json()["id"]]
    deleted = await http.delete(f"{BASE}/{mailbox['id']}", headers=big_tenant.headers)
    assert deleted.status_code == 200 and deleted.json() == {"id": mailbox["id"], "deleted": True}
    assert_error(
        await http.get(f"{BASE}/{mailbox['id']}", headers=big_tenant.headers),
        404,
        "mailbox_not_found",
    )
    listed = await http.get(BASE, params={"podId": pod["id"]}, headers=big_tenant.headers)
    assert [m["id"] for m in listed.json()["mailboxes"]] == [clone.json()["id"]]


async def test_shared_domain_mailboxes_are_active_in_the_default_pod(
    http: httpx.AsyncClient, tenant: Tenant
) -> None:
    mailbox = await made(http, tenant, address=shared().upper(), autonomyLevel="L3")
    assert mailbox["status"] == "active" and mailbox["podId"] == tenant.default_pod_id
    assert mailbox["address"] == mailbox["address"].lower() and mailbox["autonomyLevel"] == "L3"
    got = await http.get(f"{BASE}/{mailbox['id']}", headers=tenant.headers)
    assert got.json() == mailbox
    by_pod = await http.get(f"/v1/pods/{tenant.default_pod_id}/mailboxes", headers=tenant.headers)
    assert [m["id"] for m in by_pod.json()["mailboxes"]] == [mailbox["id"]]


# Status follows the domain's reception ---------------------------------------------


async def test_provisioning_becomes_active_on_verify_and_active_goes_to_error(
    http: httpx.AsyncClient, big_tenant: Tenant, dns_zone: Zone
) -> None:
    domain = await pending_domain(http, big_tenant)
    first = await made(http, big_tenant, address=f"a@{domain['domain']}")
    second = await made(http, big_tenant, address=f"b@{domain['domain']}")
    await patch(http, big_tenant, second, status="paused")
    assert first["status"] == "provisioning"

    publish(dns_zone, domain)
    await http.post(f"/v1/domains/{domain['id']}/verify", headers=big_tenant.headers)
    got = await http.get(f"{BASE}/{first['id']}", headers=big_tenant.headers)
    assert got.json()["status"] == "active"
    assert (await http.get(f"{BASE}/{second['id']}", headers=big_tenant.headers)).json()[
        "status"
    ] == "paused"
    later = await made(http, big_tenant, address=f"c@{domain['domain']}")
    assert later["status"] == "active"

    publish(dns_zone, domain, skip=("receiving",))
    failed = await http.post(f"/v1/domains/{domain['id']}/verify", headers=big_tenant.headers)
    assert failed.json()["canReceive"] is False
    for mailbox in (first, later):
        got = await http.get(f"{BASE}/{mailbox['id']}", headers=big_tenant.headers)
        assert got.json()["status"] == "error"
    resumed = await patch(http, big_tenant, second, status="active")
    assert resumed.json()["status"] == "provisioning"

    publish(dns_zone, domain)
    await http.post(f"/v1/domains/{domain['id']}/verify", headers=big_tenant.headers)
    for mailbox in (first, second, later):
        got = await http.get(f"{BASE}/{mailbox['id']}", headers=big_tenant.headers)
        assert got.json()["status"] == "active"


# Validation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"address": "no-at-sign"}, "address"),
        ({"address": "@mailplane.test"}, "address"),
        ({"address": "a..b@mailplane.test"}, "address"),
        ({"address": "postmaster@mailplane.test"}, "address"),
        ({"autonomyLevel": "L4"}, "autonomyLevel"),
        ({"config": {"inboundRateLimit": 0}}, "config.inboundRateLimit"),
        ({"config": {"inboundRateLimit": "5"}}, "config.inboundRateLimit"),
        ({"config": {"inboundRateLimit": True}}, "config.inboundRateLimit"),
        ({"config": {"replyTo": "nope"}}, "config.replyTo"),
        ({"config": {"colour": "red"}}, "config.colour"),
        ({"tenantId": "a", "podId": "b"}, "tenantId"),
        ({"surprise": 1}, "surprise"),
    ],
)
async def test_bad_input_answers_400_naming_the_field(
    http: httpx.AsyncClient, tenant: Tenant, body: dict[str, Any], field: str
) -> None:
    response = await create(http, tenant, **body)
    error = assert_error(response, 400, "invalid_argument")
    assert field in error["message"], error
    assert (await http.get(BASE, headers=tenant.headers)).json()["mailboxes"] == []


async def test_config_merges_key_by_key_and_null_clears(
    http: httpx.AsyncClient, tenant: Tenant
) -> None:
    mailbox = await made(
        http, tenant, config={"signature": "— Scout", "replyTo": "Ops@Example.com"}
    )
    assert mailbox["config"]["replyTo"] == "ops@example.com"
    merged = await patch(http, tenant, mailbox, config={"humanizerStyle": "warm"})
    assert merged.json()["config"] == {
        **EMPTY_CONFIG,
        "signature": "— Scout",
        "replyTo": "ops@example.com",
        "humanizerStyle": "warm",
    }
    cleared = await patch(http, tenant, mailbox, config={"signature": None, "replyTo": None})
    assert cleared.json()["config"] == {**EMPTY_CONFIG, "humanizerStyle": "warm"}
    for bad in (
        {"config": {"unknownKey": 1}},
        {"config": {"inboundRateLimit": -1}},
        {"config": None},
        {"status": "error"},
        {"status": "provisioning"},
        {"catchAll": None},
        {"autonomyLevel": "L2"},
    ):
        assert_error(await patch(http, tenant, mailbox, **bad), 400, "invalid_argument")
    unchanged = await http.get(f"{BASE}/{mailbox['id']}", headers=tenant.headers)
    assert unchanged.json()["config"] == cleared.json()["config"]
    nulled = await patch(http, tenant, mailbox, displayName=None)
    assert nulled.json()["displayName"] is None


# Catch-all and address changes -------------------------------------------------------


async def test_catch_all_one_per_domain_never_on_the_shared_domain(
    http: httpx.AsyncClient, big_tenant: Tenant, dns_zone: Zone
) -> None:
    on_shared = await made(http, big_tenant)
    assert_error(await patch(http, big_tenant, on_shared, catchAll=True), 400, "invalid_argument")
    domain = await verified_domain(http, big_tenant, dns_zone)
    first = await made(http, big_tenant, address=f"one@{domain['domain']}")
    second = await made(http, big_tenant, address=f"two@{domain['domain']}")
    assert (await patch(http, big_tenant, first, catchAll=True)).json()["catchAll"] is True
    taken = await patch(http, big_tenant, second, catchAll=True)
    assert_error(taken, 409, "catch_all_taken")
    await patch(http, big_tenant, first, catchAll=False)
    assert (await patch(http, big_tenant, second, catchAll=True)).json()["catchAll"] is True
    clone = await http.post(
        f"{BASE}/{second['id']}/clone",
        json={"address": f"three@{domain['domain']}"},
        headers=big_tenant.headers,
    )
    assert clone.status_code == 201 and clone.json()["catchAll"] is False


async def test_concurrent_catch_all_claims_leave_exactly_one(
    http: httpx.AsyncClient, big_tenant: Tenant, dns_zone: Zone
) -> None:
    domain = await verified_domain(http, big_tenant, dns_zone)
    boxes = [await made(http, big_tenant, address=f"c{i}@{domain['domain']}") for i in range(8)]
    answers = await asyncio.gather(*(patch(http, big_tenant, b, catchAll=True) for b in boxes))
    assert Counter(r.status_code for r in answers) == {200: 1, 409: 7}
    listed = (await http.get(BASE, headers=big_tenant.headers)).json()["mailboxes"]
    assert sum(m["catchAll"] for m in listed) == 1


async def test_address_changes_only_on_custom_domains_onto_verified_usable_ones(
    http: httpx.AsyncClient, big_tenant: Tenant, dns_zone: Zone
) -> None:
    pod_a, pod_b = await new_pod(http, big_tenant), await new_pod(http, big_tenant)
    on_shared = await made(http, big_tenant, podId=pod_a["id"])
    home = await verified_domain(http, big_tenant, dns_zone, pod=pod_a["id"])
    other_pods = await verified_domain(http, big_tenant, dns_zone, pod=pod_b["id"])
    unverified = await pending_domain(http, big_tenant)
    account_wide = await verified_domain(http, big_tenant, dns_zone)
    mailbox = await made(http, big_tenant, podId=pod_a["id"], address=f"x@{home['domain']}")
    neighbour = await made(http, big_tenant, podId=pod_a["id"], address=f"y@{home['domain']}")

    assert_error(
        await patch(http, big_tenant, on_shared, address=f"z@{home['domain']}"),
        409,
        "shared_domain_address",
    )
    assert_error(
        await patch(http, big_tenant, mailbox, address=shared()), 409, "shared_domain_address"
    )
    assert_error(
        await patch(http, big_tenant, mailbox, address=f"x@{unverified['domain']}"),
        409,
        "domain_not_verified",
    )
    assert_error(
        await patch(http, big_tenant, mailbox, address=f"x@{other_pods['domain']}"),
        409,
        "domain_pod_mismatch",
    )
    assert_error(
        await patch(http, big_tenant, mailbox, address=f"x@{new_name()}"), 404, "domain_not_found"
    )
    assert_error(
        await patch(http, big_tenant, mailbox, address=neighbour["address"]), 409, "address_taken"
    )
    moved = await patch(http, big_tenant, mailbox, address=f"New@{account_wide['domain']}")
    assert moved.status_code == 200, moved.text
    assert moved.json()["address"] == f"new@{account_wide['domain']}"
    assert moved.json()["status"] == "active"
    # The old address is free again.
    again = await made(http, big_tenant, podId=pod_a["id"], address=mailbox["address"])
    assert again["address"] == mailbox["address"]


async def test_create_placement_errors(
    http: httpx.AsyncClient, big_tenant: Tenant, other_tenant: Tenant, dns_zone: Zone
) -> None:
    pod_a, pod_b = await new_pod(http, big_tenant), await new_pod(http, big_tenant)
    scoped = await verified_domain(http, big_tenant, dns_zone, pod=pod_a["id"])
    assert_error(
        await create(http, big_tenant, podId=pod_b["id"], address=f"m@{scoped['domain']}"),
        409,
        "domain_pod_mismatch",
    )
    assert_error(await create(http, big_tenant, address=f"m@{new_name()}"), 404, "domain_not_found")
    assert_error(await create(http, big_tenant, podId="nope"), 404, "pod_not_found")
    assert_error(await create(http, big_tenant, tenantId="nope"), 404, "pod_not_found")
    first = await made(http, big_tenant, podId=pod_a["id"], address=f"m@{scoped['domain']}")
    assert first["status"] == "active"
    assert_error(
        await create(http, big_tenant, podId=pod_a["id"], address=first["address"]),
        409,
        "address_taken",
    )
    assert_error(
        await create(http, other_tenant, address=f"m@{scoped['domain']}"), 404, "domain_not_found"
    )


# Folders and rules -------------------------------------------------------------------


async def test_folders_and_rules(http: httpx.AsyncClient, tenant: Tenant) -> None:
    mailbox = await made(http, tenant)
    base = f"{BASE}/{mailbox['id']}"
    leads = await http.post(f"{base}/folders", json={"name": "Leads"}, headers=tenant.headers)
    assert leads.status_code == 201 and leads.json()["name"] == "Leads"
    assert_error(
        await http.post(f"{base}/folders", json={"name": "leads"}, headers=tenant.headers),
        409,
        "folder_exists",
    )
    assert_error(
        await http.post(f"{base}/folders", json={"name": ""}, headers=tenant.headers),
        400,
        "invalid_argument",
    )
    folder_id = leads.json()["id"]
    rule = await http.post(
        f"{base}/rules",
        json={
            "name": "Leads to folder",
            "priority": 5,
            "match": {"from": "@acme.com", "subjectContains": "quote"},
            "action": {"type": "move_to_folder", "folderId": folder_id},
        },
        headers=tenant.headers,
    )
    assert rule.status_code == 201, rule.text
    body = rule.json()
    assert body["enabled"] is True and body["priority"] == 5
    assert body["match"] == {"from": "@acme.com", "to": None, "subjectContains": "quote"}
    assert body["action"] == {"type": "move_to_folder", "folderId": folder_id}
    spam = await http.post(
        f"{base}/rules",
        json={"name": "Spam", "priority": 1, "action": {"type": "mark_spam"}},
        headers=tenant.headers,
    )
    listed = (await http.get(f"{base}/rules", headers=tenant.headers)).json()["rules"]
    assert [r["id"] for r in listed] == [spam.json()["id"], body["id"]]

    for bad in (
        {"name": "x", "action": {"type": "move_to_folder"}},
        {"name": "x", "action": {"type": "archive", "folderId": folder_id}},
        {"name": "x", "action": {"type": "explode"}},
        {"name": "x", "action": {"type": "move_to_folder", "folderId": "fld_nope"}},
        {"name": "x", "match": {"cc": "a"}, "action": {"type": "archive"}},
        {"name": "", "action": {"type": "archive"}},
    ):
        assert_error(
            await http.post(f"{base}/rules", json=bad, headers=tenant.headers),
            400,
            "invalid_argument",
        )
    assert_error(
        await http.delete(f"{base}/folders/{folder_id}", headers=tenant.headers),
        409,
        "folder_in_use",
    )
    rule_path = f"{base}/rules/{body['id']}"
    changed = await http.patch(
        rule_path, json={"enabled": False, "action": {"type": "archive"}}, headers=tenant.headers
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["enabled"] is False and changed.json()["action"]["folderId"] is None
    assert changed.json()["name"] == "Leads to folder"
    deleted = await http.delete(f"{base}/folders/{folder_id}", headers=tenant.headers)
    assert deleted.json() == {"id": folder_id, "deleted": True}
    assert_error(
        await http.delete(f"{base}/folders/{folder_id}", headers=tenant.headers),
        404,
        "folder_not_found",
    )
    assert (await http.delete(rule_path, headers=tenant.headers)).json()["deleted"] is True
    assert_error(await http.delete(rule_path, headers=tenant.headers), 404, "rule_not_found")
    assert_error(
        await http.patch(rule_path, json={"enabled": True}, headers=tenant.headers),
        404,
        "rule_not_found",
    )


async def test_a_rule_cannot_point_at_another_mailboxs_folder(
    http: httpx.AsyncClient, big_tenant: Tenant
) -> None:
    first, second = await made(http, big_tenant), await made(http, big_tenant)
    folder = await http.post(
        f"{BASE}/{first['id']}/folders", json={"name": "F"}, headers=big_tenant.headers
    )
    response = await http.post(
        f"{BASE}/{second['id']}/rules",
        json={"name": "r", "action": {"type": "move_to_folder", "folderId": folder.json()["id"]}},
        headers=big_tenant.headers,
    )
    assert_error(response, 400, "invalid_argument")
    assert "action.folderId" in response.json()["message"]


# Clone -------------------------------------------------------------------------------


async def test_clone_remaps_rules_to_the_clones_folders_and_leaves_the_source(
    http: httpx.AsyncClient, big_tenant: Tenant, mailboxes: MailboxesProcess
) -> None:
    source = await made(
        http, big_tenant, autonomyLevel="L2", displayName="Source", config={"signature": "S"}
    )
    base = f"{BASE}/{source['id']}"
    folders = [
        (await http.post(f"{base}/folders", json={"name": n}, headers=big_tenant.headers)).json()
        for n in ("A", "B")
    ]
    for folder in folders:
        await http.post(
            f"{base}/rules",
            json={
                "name": f"to {folder['name']}",
                "match": {"to": folder["name"].lower()},
                "action": {"type": "move_to_folder", "folderId": folder["id"]},
            },
            headers=big_tenant.headers,
        )
    await http.post(
        f"{base}/rules",
        json={"name": "archive", "action": {"type": "archive"}},
        headers=big_tenant.headers,
    )
    before_rules = (await http.get(f"{base}/rules", headers=big_tenant.headers)).json()
    clone = await http.post(f"{base}/clone", json={"address": shared()}, headers=big_tenant.headers)
    assert clone.status_code == 201, clone.text
    copy = clone.json()
    assert copy["autonomyLevel"] == "L2" and copy["config"]["signature"] == "S"
    assert copy["displayName"] is None and copy["id"] != source["id"]
    new_folders = (
        await http.get(f"{BASE}/{copy['id']}/folders", headers=big_tenant.headers)
    ).json()
    assert [f["name"] for f in new_folders["folders"]] == ["A", "B"]
    new_ids = {f["name"]: f["id"] for f in new_folders["folders"]}
    assert not set(new_ids.values()) & {f["id"] for f in folders}
    new_rules = (await http.get(f"{BASE}/{copy['id']}/rules", headers=big_tenant.headers)).json()
    assert [r["name"] for r in new_rules["rules"]] == [r["name"] for r in before_rules["rules"]]
    for rule in new_rules["rules"]:
        if rule["action"]["type"] == "move_to_folder":
            assert rule["action"]["folderId"] == new_ids[rule["name"].removeprefix("to ")]
    assert (await http.get(f"{base}/rules", headers=big_tenant.headers)).json() == before_rules
    # The clone's folders are its own: deleting them leaves the source's rules working.
    assert_error(
        await http.delete(
            f"{BASE}/{copy['id']}/folders/{new_ids['A']}", headers=big_tenant.headers
        ),
        409,
        "folder_in_use",
    )
    assert_error(
        await http.post(
            f"{base}/clone", json={"address": copy["address"]}, headers=big_tenant.headers
        ),
        409,
        "address_taken",
    )


async def test_clone_counts_against_the_plan(http: httpx.AsyncClient, tenant: Tenant) -> None:
    source = await made(http, tenant)
    over = await http.post(
        f"{BASE}/{source['id']}/clone", json={"address": shared()}, headers=tenant.headers
    )
    assert_error(over, 403, "mailbox_limit_reached")


# Limits, delete, billing -------------------------------------------------------------


async def test_plan_limit_message_and_expired_account(
    http: httpx.AsyncClient,
    make_tenant: Any,
    pods_channel: grpc.aio.Channel,
    operator_metadata: Any,
) -> None:
    starter = await make_tenant("Starter", pods_pb2.PLAN_STARTER)
    for _ in range(3):
        await made(http, starter)
    over = await create(http, starter)
    error = assert_error(over, 403, "mailbox_limit_reached")
    assert (
        error["message"] == "Mailbox limit reached (3). Upgrade your plan to create more mailboxes."
    )
    await pods_pb2_grpc.AccountServiceStub(pods_channel).SetAccountState(
        pods_pb2.SetAccountStateRequest(
            account_id=starter.account_id, state=pods_pb2.ACCOUNT_STATE_EXPIRED
        ),
        metadata=operator_metadata,
    )
    assert_error(await create(http, starter), 403, "account_expired")


async def test_concurrent_creates_at_the_plan_limit_never_overshoot(
    http: httpx.AsyncClient, make_tenant: Any
) -> None:
    growth = await make_tenant("Growth", pods_pb2.PLAN_GROWTH)
    answers = await asyncio.gather(*(create(http, growth) for _ in range(25)))
    assert Counter(r.status_code for r in answers) == {201: 10, 403: 15}
    assert len((await http.get(BASE, headers=growth.headers)).json()["mailboxes"]) == 10


async def test_the_last_mailbox_cannot_be_deleted_even_by_racing_deletes(
    http: httpx.AsyncClient, big_tenant: Tenant, mailboxes: MailboxesProcess
) -> None:
    only = await made(http, big_tenant)
    assert_error(
        await http.delete(f"{BASE}/{only['id']}", headers=big_tenant.headers), 409, "last_mailbox"
    )
    for _ in range(10):
        second = await made(http, big_tenant)
        pair = (only, second)
        answers = await asyncio.gather(
            *(http.delete(f"{BASE}/{m['id']}", headers=big_tenant.headers) for m in pair)
        )
        assert sorted(r.status_code for r in answers) == [200, 409]
        left = (await http.get(BASE, headers=big_tenant.headers)).json()["mailboxes"]
        assert len(left) == 1
        only = left[0]
    # Soft delete: the rows are kept, never read.
    kept = await mailboxes.pool.fetchval(
        "SELECT count(*) FROM mailboxes WHERE account_id = $1 AND deleted_at IS NOT NULL",
        big_tenant.account_id,
    )
    assert kept == 10


async def test_deleted_mailboxes_keep_their_folders_unreachable_and_free_the_address(
    http: httpx.AsyncClient, big_tenant: Tenant, mailboxes: MailboxesProcess
) -> None:
    await made(http, big_tenant)
    doomed = await made(http, big_tenant)
    folder = await http.post(
        f"{BASE}/{doomed['id']}/folders", json={"name": "Kept"}, headers=big_tenant.headers
    )
    await http.delete(f"{BASE}/{doomed['id']}", headers=big_tenant.headers)
    for response in (
        await http.get(f"{BASE}/{doomed['id']}/folders", headers=big_tenant.headers),
        await http.get(f"{BASE}/{doomed['id']}/rules", headers=big_tenant.headers),
        await http.post(
            f"{BASE}/{doomed['id']}/folders", json={"name": "X"}, headers=big_tenant.headers
        ),
        await http.patch(
            f"{BASE}/{doomed['id']}", json={"displayName": "x"}, headers=big_tenant.headers
        ),
        await http.delete(f"{BASE}/{doomed['id']}", headers=big_tenant.headers),
        await http.post(
            f"{BASE}/{doomed['id']}/clone", json={"address": shared()}, headers=big_tenant.headers
        ),
    ):
        assert_error(response, 404, "mailbox_not_found")
    stored = await mailboxes.pool.fetchval(
        "SELECT count(*) FROM folders WHERE id = $1", folder.json()["id"]
    )
    assert stored == 1
    reused = await made(http, big_tenant, address=doomed["address"])
    assert reused["id"] != doomed["id"]


async def test_billing_status_reports_real_usage(
    http: httpx.AsyncClient, make_tenant: Any, dns_zone: Zone
) -> None:
    starter = await make_tenant("Billing", pods_pb2.PLAN_STARTER)
    empty = (await http.get("/v1/billing/status", headers=starter.headers)).json()
    assert empty == {
        "plan": "starter",
        "state": "active",
        "inboxes": {"used": 0, "limit": 10},
        "mailboxes": {"used": 0, "limit": 3},
        "domains": {"used": 0, "limit": 3},
    }
    await made(http, starter)
    await made(http, starter)
    await http.post("/v1/inboxes", json={}, headers=starter.headers)
    await pending_domain(http, starter)
    used = (await http.get("/v1/billing/status", headers=starter.headers)).json()
    assert used["mailboxes"] == {"used": 2, "limit": 3}
    assert used["inboxes"] == {"used": 1, "limit": 10}
    assert used["domains"] == {"used": 1, "limit": 3}
    big = await make_tenant("Big", pods_pb2.PLAN_ENTERPRISE)
    unlimited = (await http.get("/v1/billing/status", headers=big.headers)).json()
    assert unlimited["mailboxes"] == {"used": 0, "limit": None}
    assert unlimited["plan"] == "enterprise"


# Wiring and isolation -------------------------------------------------------------------


async def test_pod_and_domain_deletes_count_mailboxes(
    http: httpx.AsyncClient, big_tenant: Tenant, dns_zone: Zone
) -> None:
    pod_a, pod_b = await new_pod(http, big_tenant), await new_pod(http, big_tenant)
    domain = await pending_domain(http, big_tenant)
    mailbox = await made(http, big_tenant, podId=pod_a["id"], address=f"w@{domain['domain']}")
    await made(http, big_tenant)  # so the pod's one can be deleted
    blocked = await http.delete(f"/v1/pods/{pod_a['id']}", headers=big_tenant.headers)
    assert_error(blocked, 409, "pod_not_empty")
    assert blocked.json()["details"]["mailboxes"] == 1
    path = f"/v1/domains/{domain['id']}"
    in_use = await http.delete(path, headers=big_tenant.headers)
    assert_error(in_use, 409, "domain_in_use")
    assert in_use.json()["details"]["mailboxes"] == 1
    assert_error(
        await http.patch(path, json={"podId": pod_b["id"]}, headers=big_tenant.headers),
        409,
        "domain_in_use",
    )
    await http.delete(f"{BASE}/{mailbox['id']}", headers=big_tenant.headers)
    assert (await http.delete(path, headers=big_tenant.headers)).status_code == 200
    assert (
        await http.delete(f"/v1/pods/{pod_a['id']}", headers=big_tenant.headers)
    ).status_code == 200


async def test_another_accounts_mailboxes_are_not_found(
    http: httpx.AsyncClient, tenant: Tenant, other_tenant: Tenant
) -> None:
    theirs = await made(http, other_tenant)
    folder = (
        await http.post(
            f"{BASE}/{theirs['id']}/folders", json={"name": "F"}, headers=other_tenant.headers
        )
    ).json()
    rule = (
        await http.post(
            f"{BASE}/{theirs['id']}/rules",
            json={"name": "r", "action": {"type": "archive"}},
            headers=other_tenant.headers,
        )
    ).json()
    path = f"{BASE}/{theirs['id']}"
    h = tenant.headers
    for response in (
        await http.get(path, headers=h),
        await http.patch(path, json={"displayName": "x"}, headers=h),
        await http.delete(path, headers=h),
        await http.post(f"{path}/clone", json={"address": shared()}, headers=h),
        await http.get(f"{path}/folders", headers=h),
        await http.post(f"{path}/folders", json={"name": "G"}, headers=h),
        await http.delete(f"{path}/folders/{folder['id']}", headers=h),
        await http.get(f"{path}/rules", headers=h),
        await http.post(
            f"{path}/rules", json={"name": "r", "action": {"type": "archive"}}, headers=h
        ),
        await http.patch(f"{path}/rules/{rule['id']}", json={"enabled": False}, headers=h),
        await http.delete(f"{path}/rules/{rule['id']}", headers=h),
    ):
        assert_error(response, 404, "mailbox_not_found")
    assert_error(
        await create(http, tenant, tenantId=other_tenant.default_pod_id), 404, "pod_not_found"
    )
    assert (await http.get(BASE, headers=h)).json()["mailboxes"] == []
    assert (await http.get(path, headers=other_tenant.headers)).json()["displayName"] is None
    assert len((await http.get(f"{path}/rules", headers=other_tenant.headers)).json()["rules"]) == 1


async def test_create_mailbox_racing_pod_delete_never_orphans(
    http: httpx.AsyncClient, big_tenant: Tenant, mailboxes: MailboxesProcess
) -> None:
    for _ in range(40):
        pod = await new_pod(http, big_tenant)
        created, deleted = await asyncio.gather(
            create(http, big_tenant, podId=pod["id"]),
            http.delete(f"/v1/pods/{pod['id']}", headers=big_tenant.headers),
        )
        assert created.status_code in (201, 404, 409), created.text
        assert not (created.status_code == 201 and deleted.status_code == 200)
        left = await mailboxes.pool.fetchval(
            "SELECT count(*) FROM mailboxes WHERE pod_id = $1 AND deleted_at IS NULL", pod["id"]
        )
        assert left == (1 if created.status_code == 201 else 0)
        if deleted.status_code == 200:
            assert left == 0


async def test_with_the_mailboxes_service_down_verify_still_answers(
    http: httpx.AsyncClient, big_tenant: Tenant, dns_zone: Zone, settings: Settings
) -> None:
    from services.domains import server as domains_server
    from tests.conftest import free_port

    domain = await pending_domain(http, big_tenant)
    publish(dns_zone, domain)
    port = free_port()
    crippled = settings.model_copy(
        update={"mailboxes_addr": f"127.0.0.1:{free_port()}", "peer_deadline_seconds": 1.0}
    )
    process = await domains_server.build(crippled)
    await process.grpc.start("127.0.0.1", port)
    try:
        from mailplane.domains.v1 import domains_pb2, domains_pb2_grpc

        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = domains_pb2_grpc.DomainServiceStub(channel)
            verified = await stub.VerifyDomain(
                domains_pb2.VerifyDomainRequest(domain_id=domain["id"]),
                metadata=big_tenant.metadata,
            )
            assert verified.status == domains_pb2.DOMAIN_STATUS_VERIFIED
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.DeleteDomain(
                    domains_pb2.DeleteDomainRequest(domain_id=domain["id"]),
                    metadata=big_tenant.metadata,
                )
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await process.grpc.stop(0.2)
        await process.close()
    assert (
        await http.get(f"/v1/domains/{domain['id']}", headers=big_tenant.headers)
    ).status_code == 200


async def test_an_account_key_cannot_fake_a_domains_reception(
    http: httpx.AsyncClient, big_tenant: Tenant, settings: Settings
) -> None:
    from mailplane.mailboxes.v1 import mailboxes_pb2, mailboxes_pb2_grpc

    domain = await pending_domain(http, big_tenant)
    mailbox = await made(http, big_tenant, address=f"p@{domain['domain']}")
    async with grpc.aio.insecure_channel(settings.mailboxes_addr) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await mailboxes_pb2_grpc.MailboxServiceStub(channel).SetDomainReception(
                mailboxes_pb2.SetDomainReceptionRequest(
                    account_id=big_tenant.account_id, domain=domain["domain"], can_receive=True
                ),
                metadata=big_tenant.metadata,
            )
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    got = await http.get(f"{BASE}/{mailbox['id']}", headers=big_tenant.headers)
    assert got.json()["status"] == "provisioning"


async def test_every_mailbox_and_inbox_route_is_in_the_openapi_contract(
    http: httpx.AsyncClient,
) -> None:
    paths = (await http.get("/openapi.json")).json()["paths"]
    expected = {
        "/v1/agent/mailboxes": {"get", "post"},
        "/v1/agent/mailboxes/{mailbox}": {"get", "patch", "delete"},
        "/v1/agent/mailboxes/{mailbox}/clone": {"post"},
        "/v1/agent/mailboxes/{mailbox}/folders": {"get", "post"},
        "/v1/agent/mailboxes/{mailbox}/folders/{folder}": {"delete"},
        "/v1/agent/mailboxes/{mailbox}/rules": {"get", "post"},
        "/v1/agent/mailboxes/{mailbox}/rules/{rule}": {"patch", "delete"},
        "/v1/pods/{pod}/mailboxes": {"get"},
        "/v1/billing/status": {"get"},
        "/v1/inboxes": {"get", "post"},
        "/v1/inboxes/{inbox}": {"get", "patch", "delete"},
        "/v1/inboxes/{inbox}/rotate-credentials": {"post"},
        "/v1/pods/{pod}/inboxes": {"get"},
    }
    for path, methods in expected.items():
        assert set(paths[path]) == methods, path
    create = paths["/v1/agent/mailboxes"]["post"]["responses"]
    assert "mailbox_limit_reached" in create["403"]["description"]
    assert (
        "last_mailbox"
        in paths["/v1/agent/mailboxes/{mailbox}"]["delete"]["responses"]["409"]["description"]
    )
