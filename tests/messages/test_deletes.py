"""Deletes (DESIGN §7.4; seeds 001, 004) through real SMTP, ingest and the
gateway: deleting an inbox purges its mail; deleting a mailbox trashes its
threads and keeps them hidden; a domain's reception changes are events."""

from __future__ import annotations

import hashlib
from email.message import EmailMessage
from typing import Any

import httpx
import pytest
from mailplane.pods.v1 import pods_pb2

from services.messages.ingest import Ingest
from tests.conftest import Services, Tenant, Zone
from tests.domains.test_domains import publish
from tests.inboxes.test_inboxes import verified_domain
from tests.messages.test_inbound import drain, message, new_inbox, send
from tests.messages.test_mailbox_policy import new_mailbox


@pytest.fixture
async def big_tenant(make_tenant) -> Tenant:  # type: ignore[no-untyped-def]
    return await make_tenant("Enterprise", pods_pb2.PLAN_ENTERPRISE)  # type: ignore[no-any-return]


def with_attachment(to: str, content: bytes, subject: str) -> EmailMessage:
    mail = message(to, subject=subject)
    mail.add_attachment(content, maintype="application", subtype="octet-stream", filename="a.bin")
    return mail


async def count(services: Services, sql: str, *args: Any) -> int:
    return int(await services.messages.pool.fetchval(sql, *args))


async def test_deleting_an_inbox_purges_its_mail(
    http: httpx.AsyncClient,
    services: Services,
    big_tenant: Tenant,
    edge: tuple[str, int],
    ingest: Ingest,
) -> None:
    inbox = await new_inbox(http, services, big_tenant)
    keeper = await new_inbox(http, services, big_tenant)
    own = f"only this inbox {inbox['id']}".encode()
    shared = with_attachment(inbox["email"], b"shared by both", "Both")
    await send(edge, with_attachment(inbox["email"], own, "Mine"), [inbox["email"]])
    await send(edge, shared, [inbox["email"], keeper["email"]])
    await drain(ingest)
    listed = (
        await http.get(f"/v1/inboxes/{inbox['id']}/messages", headers=big_tenant.headers)
    ).json()["messages"]
    assert len(listed) == 2
    # Accepted before the delete, ingested after it: never lands.
    await send(edge, message(inbox["email"], subject="Late"), [inbox["email"]])
    # A draft, and a sent message waiting in the outbound queue (DESIGN §7.4).
    draft = await http.post(
        f"/v1/inboxes/{inbox['id']}/drafts", json={"text": "unsent"}, headers=big_tenant.headers
    )
    assert draft.status_code == 201, draft.text
    queued = await http.post(
        f"/v1/inboxes/{inbox['id']}/messages",
        json={"to": ["ada@example.com"], "text": "queued"},
        headers={**big_tenant.headers, "Idempotency-Key": f"purge-{inbox['id']}"},
    )
    assert queued.status_code == 202, queued.text

    deleted = await http.delete(f"/v1/inboxes/{inbox['id']}", headers=big_tenant.headers)
    assert deleted.status_code == 200, deleted.text
    await drain(ingest)

    for got in listed:
        answer = await http.get(f"/v1/messages/{got['id']}", headers=big_tenant.headers)
        assert answer.status_code == 404 and answer.json()["error"] == "message_not_found"
        thread = await http.get(f"/v1/threads/{got['threadId']}", headers=big_tenant.headers)
        assert thread.status_code == 404
    owner = inbox["id"]
    assert await count(services, "SELECT count(*) FROM messages WHERE owner_id = $1", owner) == 0
    assert await count(services, "SELECT count(*) FROM drafts WHERE owner_id = $1", owner) == 0
    assert await count(services, "SELECT count(*) FROM deliveries WHERE owner_id = $1", owner) == 0
    drafts = await http.get(f"/v1/drafts/{draft.json()['id']}", headers=big_tenant.headers)
    assert drafts.status_code == 404
    assert await count(services, "SELECT count(*) FROM threads WHERE owner_id = $1", owner) == 0
    assert (
        await count(services, "SELECT count(*) FROM message_refs WHERE owner_id = $1", owner) == 0
    )
    assert (
        await count(
            services,
            "SELECT count(*) FROM attachments WHERE message_id = ANY($1::text[])",
            [m["id"] for m in listed],
        )
        == 0
    )
    # Blobs only it used are gone; a blob another inbox still uses stays.
    blob = "SELECT count(*) FROM blobs WHERE sha256 = $1"
    assert await count(services, blob, hashlib.sha256(own).digest()) == 0
    assert await count(services, blob, hashlib.sha256(b"shared by both").digest()) == 1
    kept = (
        await http.get(f"/v1/inboxes/{keeper['id']}/messages", headers=big_tenant.headers)
    ).json()["messages"]
    assert [m["subject"] for m in kept] == ["Both"]
    raw = await http.get(f"/v1/messages/{kept[0]['id']}/raw", headers=big_tenant.headers)
    assert raw.status_code == 200

    # Releasing again (a retried delete) is harmless.
    await services.messages.directory.release(owner, None)  # type: ignore[union-attr]


async def test_deleting_a_mailbox_trashes_its_threads_and_keeps_them_hidden(
    http: httpx.AsyncClient,
    services: Services,
    big_tenant: Tenant,
    edge: tuple[str, int],
    ingest: Ingest,
) -> None:
    mailbox = await new_mailbox(http, big_tenant)
    await new_mailbox(http, big_tenant)  # the account keeps one mailbox
    for subject in ("One", "Two"):
        await send(edge, message(mailbox["address"], subject=subject), [mailbox["address"]])
    await drain(ingest)
    await send(edge, message(mailbox["address"], subject="Late"), [mailbox["address"]])
    # Sent, waiting in the outbound queue (no worker runs here).
    queued = await http.post(
        f"/v1/agent/mailboxes/{mailbox['id']}/messages",
        json={"to": ["ada@example.com"], "subject": "Unsent"},
        headers={**big_tenant.headers, "Idempotency-Key": f"del-{mailbox['id']}"},
    )
    assert queued.status_code == 202, queued.text

    deleted = await http.delete(f"/v1/agent/mailboxes/{mailbox['id']}", headers=big_tenant.headers)
    assert deleted.status_code == 200, deleted.text
    states = await services.messages.pool.fetch(
        "SELECT d.state, m.status FROM deliveries d JOIN messages m ON m.id = d.message_id"
        " WHERE m.id = $1",
        queued.json()["id"],
    )
    assert [(r["state"], r["status"]) for r in states] == [("rejected", "failed")]
    await drain(ingest)

    rows = await services.messages.pool.fetch(
        "SELECT subject, labels FROM threads WHERE owner_id = $1 ORDER BY subject", mailbox["id"]
    )
    assert [r["subject"] for r in rows] == ["Late", "One", "Two", "Unsent"]
    assert all("trash" in r["labels"] for r in rows)
    messages = await services.messages.pool.fetch(
        "SELECT labels FROM messages WHERE owner_id = $1", mailbox["id"]
    )
    assert len(messages) == 4 and all("trash" in m["labels"] for m in messages)
    listed = (await http.get("/v1/threads", headers=big_tenant.headers)).json()["threads"]
    assert not [t for t in listed if t["mailboxId"] == mailbox["id"]]
    gone = await http.get(
        f"/v1/agent/mailboxes/{mailbox['id']}/threads", headers=big_tenant.headers
    )
    assert gone.status_code == 404
    # Its history stays in the trash: a restore is refused.
    thread_id = await services.messages.pool.fetchval(
        "SELECT id FROM threads WHERE owner_id = $1 LIMIT 1", mailbox["id"]
    )
    restored = await http.post(f"/v1/threads/{thread_id}/restore", headers=big_tenant.headers)
    assert restored.status_code == 404 and restored.json()["error"] == "thread_not_found"


async def test_a_domains_reception_changes_are_events(
    http: httpx.AsyncClient, big_tenant: Tenant, dns_zone: Zone
) -> None:
    domain = await verified_domain(http, big_tenant, dns_zone)
    again = await http.post(f"/v1/domains/{domain['id']}/verify", headers=big_tenant.headers)
    assert again.json()["status"] == "verified"  # no change, no event
    publish(dns_zone, domain, skip=("receiving",))
    failed = await http.post(f"/v1/domains/{domain['id']}/verify", headers=big_tenant.headers)
    assert failed.json()["canReceive"] is False, failed.text
    publish(dns_zone, domain)
    await http.post(f"/v1/domains/{domain['id']}/verify", headers=big_tenant.headers)

    events = (
        await http.get(
            "/v1/events",
            params={"types": "domain.verified,domain.degraded"},
            headers=big_tenant.headers,
        )
    ).json()["events"]
    assert [(e["type"], e["data"]["domain"]["name"]) for e in events] == [
        ("domain.verified", domain["domain"]),
        ("domain.degraded", domain["domain"]),
        ("domain.verified", domain["domain"]),
    ]
