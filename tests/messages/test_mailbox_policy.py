"""Mailbox semantics at ingest (DESIGN §7.3; seed 004) through real SMTP, the
ingest worker and the gateway: rules, catch-all precedence, the paused
auto-reply (RFC 3834), the hourly inbound limit, and the mailbox.paused /
mailbox.resumed events."""

from __future__ import annotations

import uuid
from email.message import EmailMessage
from typing import Any

import aiosmtplib
import httpx
import pytest
from mailplane.pods.v1 import pods_pb2

from services.messages.ingest import Ingest
from tests.conftest import Services, Tenant, Zone
from tests.inboxes.test_inboxes import verified_domain
from tests.messages.test_inbound import SHARED, drain, message, send

BASE = "/v1/agent/mailboxes"


@pytest.fixture
async def big_tenant(make_tenant) -> Tenant:  # type: ignore[no-untyped-def]
    return await make_tenant("Enterprise", pods_pb2.PLAN_ENTERPRISE)  # type: ignore[no-any-return]


async def new_mailbox(
    http: httpx.AsyncClient, tenant: Tenant, address: str | None = None, **body: Any
) -> dict[str, Any]:
    """Creates a mailbox (on the shared domain unless ``address`` says otherwise)."""
    address = address or f"mb{uuid.uuid4().hex[:10]}@{SHARED}"
    answer = await http.post(BASE, json={"address": address, **body}, headers=tenant.headers)
    assert answer.status_code == 201, answer.text
    return answer.json()  # type: ignore[no-any-return]


async def patch(
    http: httpx.AsyncClient, tenant: Tenant, mailbox: dict[str, Any], **body: Any
) -> dict[str, Any]:
    answer = await http.patch(f"{BASE}/{mailbox['id']}", json=body, headers=tenant.headers)
    assert answer.status_code == 200, answer.text
    return answer.json()  # type: ignore[no-any-return]


async def rule(
    http: httpx.AsyncClient, tenant: Tenant, mailbox: dict[str, Any], **body: Any
) -> dict[str, Any]:
    answer = await http.post(
        f"{BASE}/{mailbox['id']}/rules", json={"name": "r", **body}, headers=tenant.headers
    )
    assert answer.status_code == 201, answer.text
    return answer.json()  # type: ignore[no-any-return]


async def threads(
    http: httpx.AsyncClient, tenant: Tenant, mailbox: dict[str, Any], **params: Any
) -> list[dict[str, Any]]:
    answer = await http.get(
        f"{BASE}/{mailbox['id']}/threads", params=params, headers=tenant.headers
    )
    assert answer.status_code == 200, answer.text
    return answer.json()["threads"]  # type: ignore[no-any-return]


async def messages(
    http: httpx.AsyncClient, tenant: Tenant, owner_path: str, **params: Any
) -> list[dict[str, Any]]:
    answer = await http.get(f"{owner_path}/messages", params=params, headers=tenant.headers)
    assert answer.status_code == 200, answer.text
    return answer.json()["messages"]  # type: ignore[no-any-return]


async def send_from_null_sender(
    edge: tuple[str, int], mail: EmailMessage, mailbox: dict[str, Any]
) -> None:
    """Sends with ``MAIL FROM:<>`` (a bounce or other notification)."""
    async with aiosmtplib.SMTP(hostname=edge[0], port=edge[1]) as client:
        await client.mail("")
        await client.rcpt(mailbox["address"])
        code, _ = await client.data(mail.as_bytes())
        assert code == 250


async def test_rules_apply_in_priority_order_first_match_wins_on_new_threads(
    http: httpx.AsyncClient, tenant: Tenant, edge: tuple[str, int], ingest: Ingest
) -> None:
    mailbox = await new_mailbox(http, tenant)
    folder = await http.post(
        f"{BASE}/{mailbox['id']}/folders", json={"name": "Quotes"}, headers=tenant.headers
    )
    # Priority 1 beats 2 and 3 for a quote from acme; a disabled rule never applies.
    await rule(
        http,
        tenant,
        mailbox,
        priority=3,
        match={"subjectContains": "quote"},
        action={"type": "archive"},
    )
    await rule(
        http,
        tenant,
        mailbox,
        priority=1,
        match={"from": "@acme.com", "subjectContains": "QUOTE"},
        action={"type": "move_to_folder", "folderId": folder.json()["id"]},
    )
    await rule(
        http,
        tenant,
        mailbox,
        priority=2,
        match={"from": "spammer@bad.example"},
        action={"type": "mark_spam"},
    )
    await rule(
        http, tenant, mailbox, priority=0, enabled=False, match={}, action={"type": "mark_spam"}
    )

    acme = message(mailbox["address"], subject="Quote request")
    acme.replace_header("From", "Bob <bob@acme.com>")
    other = message(mailbox["address"], subject="Your quote")  # from ada@example.com
    spam = message(mailbox["address"], subject="Cheap quote")
    spam.replace_header("From", "spammer@bad.example")
    plain = message(mailbox["address"], subject="Lunch?")
    for mail in (acme, other, spam, plain):
        await send(edge, mail, [mailbox["address"]])
    await drain(ingest)

    listed = {t["subject"]: t for t in await threads(http, tenant, mailbox, includeSpam="true")}
    assert listed["Quote request"]["folderId"] == folder.json()["id"]
    assert "archived" not in listed["Quote request"]["labels"]
    assert "archived" in listed["Your quote"]["labels"] and listed["Your quote"]["folderId"] is None
    assert "spam" in listed["Cheap quote"]["labels"]
    assert not {"spam", "archived"} & set(listed["Lunch?"]["labels"])
    assert listed["Lunch?"]["folderId"] is None
    # Spam is hidden by default, and its event says so.
    assert "Cheap quote" not in {t["subject"] for t in await threads(http, tenant, mailbox)}
    events = (
        await http.get("/v1/events", params={"mailboxId": mailbox["id"]}, headers=tenant.headers)
    ).json()["events"]
    by_subject = {e["data"]["message"]["subject"]: e["type"] for e in events}
    assert by_subject["Cheap quote"] == "message.received.spam"
    assert by_subject["Lunch?"] == "message.received.unauthenticated"

    # A reply in an existing thread is not filed again: rules apply to new threads.
    reply = message(mailbox["address"], subject="Re: Lunch? quote")
    reply["In-Reply-To"] = plain["Message-ID"]
    await send(edge, reply, [mailbox["address"]])
    await drain(ingest)
    (lunch,) = [t for t in await threads(http, tenant, mailbox) if t["subject"] == "Lunch?"]
    assert lunch["messageCount"] == 2 and "archived" not in lunch["labels"]


async def test_the_catch_all_takes_what_no_exact_route_takes(
    http: httpx.AsyncClient,
    big_tenant: Tenant,
    dns_zone: Zone,
    edge: tuple[str, int],
    ingest: Ingest,
) -> None:
    domain = (await verified_domain(http, big_tenant, dns_zone))["domain"]
    catch_all = await new_mailbox(http, big_tenant, f"all@{domain}")
    await patch(http, big_tenant, catch_all, catchAll=True)
    exact = await new_mailbox(http, big_tenant, f"sales@{domain}")
    inbox = await http.post(
        "/v1/inboxes", json={"username": "support", "domain": domain}, headers=big_tenant.headers
    )
    assert inbox.status_code == 201, inbox.text

    await send(edge, message(f"nobody@{domain}", subject="to nobody"), [f"nobody@{domain}"])
    await send(edge, message(f"sales@{domain}", subject="to sales"), [f"sales@{domain}"])
    await send(edge, message(f"support@{domain}", subject="to support"), [f"support@{domain}"])
    await drain(ingest)

    assert [
        m["subject"] for m in await messages(http, big_tenant, f"{BASE}/{catch_all['id']}")
    ] == ["to nobody"]
    assert [m["subject"] for m in await messages(http, big_tenant, f"{BASE}/{exact['id']}")] == [
        "to sales"
    ]
    path = f"/v1/inboxes/{inbox.json()['id']}"
    assert [m["subject"] for m in await messages(http, big_tenant, path)] == ["to support"]


async def test_a_paused_mailbox_receives_and_auto_replies_once_per_sender(
    http: httpx.AsyncClient, tenant: Tenant, edge: tuple[str, int], ingest: Ingest
) -> None:
    mailbox = await new_mailbox(http, tenant, displayName="Support")
    await patch(
        http,
        tenant,
        mailbox,
        status="paused",
        config={"pausedAutoReply": "We are away until Monday.", "replyTo": "team@example.org"},
    )
    first = message(mailbox["address"], subject="Help")
    await send(edge, first, [mailbox["address"]], sender="ada@example.com")
    await send(edge, message(mailbox["address"], subject="Again"), [mailbox["address"]])
    robot = message(mailbox["address"], subject="Report", Auto_Submitted="auto-generated")
    await send(edge, robot, [mailbox["address"]], sender="reports@example.net")
    await send_from_null_sender(edge, message(mailbox["address"], subject="Bounce"), mailbox)
    listed = message(mailbox["address"], subject="Digest", List_Id="<news.example.net>")
    await send(edge, listed, [mailbox["address"]], sender="news@example.net")
    await drain(ingest)

    got = await messages(http, tenant, f"{BASE}/{mailbox['id']}")
    inbound = sorted(m["subject"] for m in got if m["direction"] == "inbound")
    assert inbound == ["Again", "Bounce", "Digest", "Help", "Report"]  # paused still receives
    (reply,) = [m for m in got if m["direction"] == "outbound"]
    assert reply["status"] == "queued" and reply["labels"] == ["sent"]
    assert reply["to"] == ["ada@example.com"]
    assert reply["from"] == f"Support <{mailbox['address']}>"
    assert reply["inReplyTo"] == first["Message-ID"]
    assert reply["references"] == [first["Message-ID"]]
    (original,) = [m for m in got if m["subject"] == "Help"]
    assert reply["threadId"] == original["threadId"]
    raw = (await http.get(f"/v1/messages/{reply['id']}/raw", headers=tenant.headers)).text
    assert "Auto-Submitted: auto-replied" in raw and "We are away until Monday." in raw
    assert "Reply-To: team@example.org" in raw
    events = (
        await http.get(
            "/v1/events",
            params={"mailboxId": mailbox["id"], "types": "message.queued"},
            headers=tenant.headers,
        )
    ).json()["events"]
    assert [e["data"]["message"]["id"] for e in events] == [reply["id"]]

    # Resumed, it stops answering; paused again, the same sender is still within 24 h.
    await patch(http, tenant, mailbox, status="active")
    await send(edge, message(mailbox["address"], subject="Active"), [mailbox["address"]])
    await patch(http, tenant, mailbox, status="paused")
    await send(edge, message(mailbox["address"], subject="Paused again"), [mailbox["address"]])
    other = message(mailbox["address"], subject="From Bob")
    await send(edge, other, [mailbox["address"]], sender="bob@example.com")
    await drain(ingest)
    replies = [
        m
        for m in await messages(http, tenant, f"{BASE}/{mailbox['id']}")
        if m["direction"] == "outbound"
    ]
    assert sorted(r["to"][0] for r in replies) == ["ada@example.com", "bob@example.com"]


async def test_the_hourly_limit_refuses_the_next_rcpt_with_451_4_7_1(
    http: httpx.AsyncClient, big_tenant: Tenant, edge: tuple[str, int], ingest: Ingest
) -> None:
    tenant = big_tenant
    mailbox = await new_mailbox(http, tenant, config={"inboundRateLimit": 3})
    unlimited = await new_mailbox(http, tenant)
    for n in range(3):
        refused, _ = await send(
            edge, message(mailbox["address"], subject=f"#{n}"), [mailbox["address"]]
        )
        assert refused == {}
    with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as over:
        await send(edge, message(mailbox["address"]), [mailbox["address"]])
    (refusal,) = over.value.recipients
    assert refusal.code == 451 and refusal.message.startswith("4.7.1")
    # Another mailbox in the same transaction is not held back.
    refused, _ = await send(
        edge, message(unlimited["address"]), [mailbox["address"], unlimited["address"]]
    )
    assert set(refused) == {mailbox["address"]} and refused[mailbox["address"]][0] == 451
    await drain(ingest)
    assert len(await messages(http, tenant, f"{BASE}/{mailbox['id']}")) == 3
    # Raising the limit lets mail in again.
    await patch(http, tenant, mailbox, config={"inboundRateLimit": 10})
    refused, _ = await send(edge, message(mailbox["address"]), [mailbox["address"]])
    assert refused == {}


async def test_pausing_and_resuming_a_mailbox_are_events(
    http: httpx.AsyncClient, tenant: Tenant
) -> None:
    mailbox = await new_mailbox(http, tenant)
    await patch(http, tenant, mailbox, status="paused")
    await patch(http, tenant, mailbox, displayName="Still paused")
    await patch(http, tenant, mailbox, status="active")
    answer = await http.get(
        "/v1/events",
        params={"mailboxId": mailbox["id"], "types": "mailbox.paused,mailbox.resumed"},
        headers=tenant.headers,
    )
    assert answer.status_code == 200, answer.text
    events = answer.json()["events"]
    assert [e["type"] for e in events] == ["mailbox.paused", "mailbox.resumed"]
    assert events[0]["mailboxId"] == mailbox["id"]
    assert events[0]["data"]["mailbox"] == {
        "id": mailbox["id"],
        "address": mailbox["address"],
        "status": "paused",
    }


async def test_mail_waits_in_the_spool_until_its_mailboxs_policy_is_known(
    http: httpx.AsyncClient,
    tenant: Tenant,
    services: Services,
    edge: tuple[str, int],
    ingest: Ingest,
) -> None:
    mailbox = await new_mailbox(http, tenant)
    pool = services.messages.pool
    await pool.execute("DELETE FROM mailbox_policies WHERE mailbox_id = $1", mailbox["id"])
    await send(edge, message(mailbox["address"], subject="Early"), [mailbox["address"]])
    await drain(ingest)
    assert await messages(http, tenant, f"{BASE}/{mailbox['id']}") == []
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM spool WHERE recipients @> $1::jsonb",
            f'[{{"ownerId": "{mailbox["id"]}"}}]',
        )
        == 1
    )
    # The mailboxes service's sweep publishes what the messages service lacks.
    await services.mailboxes.service.publish_policy(mailbox["id"])
    await pool.execute(
        "UPDATE spool SET next_attempt_at = now() WHERE recipients @> $1::jsonb",
        f'[{{"ownerId": "{mailbox["id"]}"}}]',
    )
    await drain(ingest)
    assert [m["subject"] for m in await messages(http, tenant, f"{BASE}/{mailbox['id']}")] == [
        "Early"
    ]
