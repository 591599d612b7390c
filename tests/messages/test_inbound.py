"""Mail arrives (DESIGN §7.3, §7.4): a real SMTP client against the real edge,
the ingest worker, and reading through the real gateway and services."""

from __future__ import annotations

import asyncio
import uuid
from email.message import EmailMessage
from typing import Any

import aiosmtplib
import asyncpg
import httpx
import pytest

from services.chassis.config import Settings
from services.messages.edge import serve_inbound
from services.messages.ingest import Ingest
from services.messages.store import MailStore
from tests.conftest import Services, Tenant, Zone, free_port

SHARED = "mailplane.test"


async def drain(ingest: Ingest) -> None:
    """Ingests everything spooled so far."""
    while await ingest.run_once():
        pass


async def route(services: Services, address: str, owner: dict[str, Any], kind: str) -> None:
    """Makes sure the directory routes ``address`` to ``owner`` (the inboxes and
    mailboxes services claim routes themselves once they speak to the directory)."""
    await services.messages.pool.execute(
        "INSERT INTO routes (address, domain, kind, owner_id, account_id, pod_id, state)"
        " VALUES ($1, $2, $3, $4, $5, $6, 'live') ON CONFLICT (address) DO NOTHING",
        address,
        address.rsplit("@", 1)[1],
        kind,
        owner["id"],
        owner["accountId"],
        owner["podId"],
    )


async def new_inbox(http: httpx.AsyncClient, services: Services, tenant: Tenant) -> dict[str, Any]:
    """Creates an inbox on the shared domain with a unique username."""
    username = f"in{uuid.uuid4().hex[:10]}"
    answer = await http.post("/v1/inboxes", json={"username": username}, headers=tenant.headers)
    assert answer.status_code == 201, answer.text
    inbox: dict[str, Any] = answer.json()
    await route(services, inbox["email"], {**inbox, "accountId": tenant.account_id}, "inbox")
    return inbox


def message(
    to: str, subject: str = "Hello", body: str = "Hi there.", **headers: str
) -> EmailMessage:
    """A plain-text message from an outside sender."""
    mail = EmailMessage()
    mail["From"] = "Ada Lovelace <ada@example.com>"
    mail["To"] = to
    mail["Subject"] = subject
    mail["Message-ID"] = f"<{uuid.uuid4().hex}@example.com>"
    for name, value in headers.items():
        mail[name.replace("_", "-")] = value
    mail.set_content(body)
    return mail


async def send(
    edge: tuple[str, int],
    mail: EmailMessage | bytes,
    rcpts: list[str],
    sender: str = "ada@example.com",
) -> Any:
    """Sends over real SMTP; returns aiosmtplib's answer: the refused recipients
    (address → (code, text)) and the final reply's text."""
    host, port = edge
    raw = mail if isinstance(mail, bytes) else mail.as_bytes()
    return await aiosmtplib.send(raw, sender=sender, recipients=rcpts, hostname=host, port=port)


async def test_a_message_to_an_inbox_is_stored_threaded_and_readable(
    http: httpx.AsyncClient,
    services: Services,
    tenant: Tenant,
    edge: tuple[str, int],
    ingest: Ingest,
) -> None:
    inbox = await new_inbox(http, services, tenant)
    first = message(inbox["email"], subject="Quote for 100 units", body="Could you quote?")
    refused, answer = await send(edge, first, [inbox["email"]])
    assert refused == {} and answer.startswith("2.0.0 OK queued as")
    await drain(ingest)

    listed = await http.get(f"/v1/inboxes/{inbox['id']}/messages", headers=tenant.headers)
    assert listed.status_code == 200, listed.text
    (got,) = listed.json()["messages"]
    assert got["subject"] == "Quote for 100 units"
    assert got["from"] == "Ada Lovelace <ada@example.com>"
    assert got["inboxId"] == inbox["id"] and got["mailboxId"] is None
    assert got["direction"] == "inbound" and got["status"] == "received"
    assert {"received", "unread", "unauthenticated"} <= set(got["labels"])
    assert got["preview"] == "Could you quote?"
    assert got["messageId"] == first["Message-ID"]

    reply = message(inbox["email"], subject="Re: Quote for 100 units", body="Thanks!")
    reply["In-Reply-To"] = first["Message-ID"]
    reply["References"] = first["Message-ID"]
    await send(edge, reply, [inbox["email"]])
    await drain(ingest)
    threads = (await http.get(f"/v1/inboxes/{inbox['id']}/threads", headers=tenant.headers)).json()
    (thread,) = threads["threads"]
    assert thread["messageCount"] == 2
    assert thread["subject"] == "Quote for 100 units"
    full = (await http.get(f"/v1/threads/{thread['id']}", headers=tenant.headers)).json()
    assert [m["subject"] for m in full["messages"]] == [
        "Quote for 100 units",
        "Re: Quote for 100 units",
    ]
    assert full["messages"][0]["text"].strip() == "Could you quote?"

    raw = await http.get(f"/v1/messages/{got['id']}/raw", headers=tenant.headers)
    assert raw.status_code == 200
    assert raw.headers["content-type"].startswith("message/rfc822")
    assert b"Could you quote?" in raw.content

    events = await services.messages.pool.fetch(
        "SELECT type, data FROM events WHERE account_id = $1 ORDER BY txid, seq",
        tenant.account_id,
    )
    assert [e["type"] for e in events] == ["message.received.unauthenticated"] * 2


async def test_unknown_recipient_and_relay_are_refused_at_rcpt(
    http: httpx.AsyncClient, services: Services, tenant: Tenant, edge: tuple[str, int]
) -> None:
    inbox = await new_inbox(http, services, tenant)
    with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as unknown:
        await send(edge, message(f"nobody-{uuid.uuid4().hex}@{SHARED}"), [f"nobody@{SHARED}"])
    ((code, text),) = [(e.code, e.message) for e in unknown.value.recipients]
    assert code == 550 and "5.1.1" in text
    with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as relay:
        await send(edge, message("someone@example.org"), ["someone@example.org"])
    ((code, text),) = [(e.code, e.message) for e in relay.value.recipients]
    assert code == 550 and "5.7.1" in text
    # One good and one bad recipient: the good one gets the message.
    refused, _ = await send(edge, message(inbox["email"]), [inbox["email"], f"zz@{SHARED}"])
    assert list(refused) == [f"zz@{SHARED}"] and refused[f"zz@{SHARED}"][0] == 550


async def test_sub_addressing_routes_to_the_base_address(
    http: httpx.AsyncClient,
    services: Services,
    tenant: Tenant,
    edge: tuple[str, int],
    ingest: Ingest,
) -> None:
    inbox = await new_inbox(http, services, tenant)
    local, domain = inbox["email"].split("@")
    tagged = f"{local}+receipts@{domain}"
    await send(edge, message(tagged), [tagged])
    await drain(ingest)
    listed = (await http.get(f"/v1/inboxes/{inbox['id']}/messages", headers=tenant.headers)).json()
    assert [m["to"] for m in listed["messages"]] == [[tagged]]


async def test_the_same_message_twice_is_stored_once(
    http: httpx.AsyncClient,
    services: Services,
    tenant: Tenant,
    edge: tuple[str, int],
    ingest: Ingest,
) -> None:
    inbox = await new_inbox(http, services, tenant)
    raw = message(inbox["email"]).as_bytes()
    await send(edge, raw, [inbox["email"]])
    await send(edge, raw, [inbox["email"]])  # an SMTP retry after a lost 250
    await drain(ingest)
    listed = (await http.get(f"/v1/inboxes/{inbox['id']}/messages", headers=tenant.headers)).json()
    assert len(listed["messages"]) == 1


async def test_oversize_is_refused_and_a_database_outage_answers_451(
    http: httpx.AsyncClient, services: Services, tenant: Tenant, settings: Settings
) -> None:
    inbox = await new_inbox(http, services, tenant)
    port = free_port()
    small = await serve_inbound(
        MailStore(services.messages.pool), SHARED, "127.0.0.1", port, 10_000, "mx.test"
    )
    try:
        big = message(inbox["email"], body="x" * 20_000)
        with pytest.raises(aiosmtplib.SMTPResponseException) as refused:
            await send(("127.0.0.1", port), big, [inbox["email"]])
        assert refused.value.code == 552
    finally:
        small.close()
        await small.wait_closed()
    # A store whose database cannot be reached: the edge tempfails, never 5xx.
    dead = await asyncpg.create_pool(
        settings.service_dsn("messages"), min_size=0, max_size=1, server_settings={}
    )
    await dead.close()
    port = free_port()
    down = await serve_inbound(MailStore(dead), SHARED, "127.0.0.1", port, 10_000, "mx.test")
    try:
        with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as later:
            await send(("127.0.0.1", port), message(inbox["email"]), [inbox["email"]])
        ((code, text),) = [(e.code, e.message) for e in later.value.recipients]
        assert code == 451 and "4.3.0" in text
    finally:
        down.close()
        await down.wait_closed()


async def test_labels_trash_purge_restore_and_isolation(
    http: httpx.AsyncClient,
    services: Services,
    tenant: Tenant,
    other_tenant: Tenant,
    edge: tuple[str, int],
    ingest: Ingest,
) -> None:
    inbox = await new_inbox(http, services, tenant)
    await send(edge, message(inbox["email"]), [inbox["email"]])
    await drain(ingest)
    (got,) = (await http.get(f"/v1/inboxes/{inbox['id']}/messages", headers=tenant.headers)).json()[
        "messages"
    ]
    read = await http.patch(
        f"/v1/messages/{got['id']}",
        json={"addLabels": ["read", "invoices"]},
        headers=tenant.headers,
    )
    assert read.status_code == 200, read.text
    assert "unread" not in read.json()["labels"] and "invoices" in read.json()["labels"]
    refused = await http.patch(
        f"/v1/messages/{got['id']}", json={"addLabels": ["sent"]}, headers=tenant.headers
    )
    assert refused.status_code == 400 and refused.json()["details"]["field"] == "addLabels"

    # Another account sees nothing of it, whatever the ID.
    for path in (
        f"/v1/messages/{got['id']}",
        f"/v1/messages/{got['id']}/raw",
        f"/v1/threads/{got['threadId']}",
        f"/v1/inboxes/{inbox['id']}/messages",
    ):
        assert (await http.get(path, headers=other_tenant.headers)).status_code == 404, path
    assert (await http.get("/v1/threads", headers=other_tenant.headers)).json()["threads"] == []

    thread = f"/v1/threads/{got['threadId']}"
    first = await http.delete(thread, headers=tenant.headers)
    assert first.json() == {"id": got["threadId"], "deleted": True, "purged": False}
    hidden = await http.get(f"/v1/inboxes/{inbox['id']}/threads", headers=tenant.headers)
    assert hidden.json()["threads"] == []
    shown = await http.get(
        f"/v1/inboxes/{inbox['id']}/threads?includeTrash=true", headers=tenant.headers
    )
    assert [t["id"] for t in shown.json()["threads"]] == [got["threadId"]]
    restored = await http.post(f"{thread}/restore", headers=tenant.headers)
    assert "trash" not in restored.json()["labels"]
    await http.delete(thread, headers=tenant.headers)
    purged = await http.delete(thread, headers=tenant.headers)
    assert purged.json()["purged"] is True
    assert (await http.get(thread, headers=tenant.headers)).status_code == 404
    assert (await http.get(f"/v1/messages/{got['id']}", headers=tenant.headers)).status_code == 404


async def test_a_sender_that_passes_spf_is_not_labelled_unauthenticated(
    http: httpx.AsyncClient,
    services: Services,
    tenant: Tenant,
    edge: tuple[str, int],
    ingest: Ingest,
    dns_zone: Zone,
) -> None:
    inbox = await new_inbox(http, services, tenant)
    domain = f"s{uuid.uuid4().hex[:10]}.example"
    dns_zone.publish(domain, "TXT", "v=spf1 ip4:127.0.0.1 -all")
    mail = message(inbox["email"])
    mail.replace_header("From", f"Ada <ada@{domain}>")
    await send(edge, mail, [inbox["email"]], sender=f"ada@{domain}")
    await drain(ingest)
    (got,) = (await http.get(f"/v1/inboxes/{inbox['id']}/messages", headers=tenant.headers)).json()[
        "messages"
    ]
    assert got["authentication"]["spf"] == "pass"
    assert "unauthenticated" not in got["labels"]
    event = await services.messages.pool.fetchval(
        "SELECT type FROM events WHERE account_id = $1", tenant.account_id
    )
    assert event == "message.received"


async def test_a_spool_past_its_high_water_mark_answers_452_until_drained(
    http: httpx.AsyncClient,
    services: Services,
    tenant: Tenant,
    edge: tuple[str, int],
    ingest: Ingest,
) -> None:
    inbox = await new_inbox(http, services, tenant)
    await drain(ingest)
    port = free_port()
    guarded = await serve_inbound(
        MailStore(services.messages.pool), SHARED, "127.0.0.1", port, 100_000, "mx.test", 2
    )
    try:
        for _ in range(3):  # the workers fall behind: three wait in the spool
            await send(edge, message(inbox["email"]), [inbox["email"]])
        with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as full:
            await send(("127.0.0.1", port), message(inbox["email"]), [inbox["email"]])
        ((code, text),) = [(e.code, e.message) for e in full.value.recipients]
        assert code == 452 and "4.3.1" in text
        await drain(ingest)
        await asyncio.sleep(0.6)  # the edge reads the backlog again
        refused, _ = await send(("127.0.0.1", port), message(inbox["email"]), [inbox["email"]])
        assert refused == {}
    finally:
        guarded.close()
        await guarded.wait_closed()
