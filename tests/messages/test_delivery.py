"""Mail leaves (DESIGN §7.5): the delivery worker against a loopback MX (an
aiosmtpd sink reached through the loopback DNS server's MX record, over real
SMTP with STARTTLS), real PostgreSQL, the real ingest worker and edge.

Messages are queued as the send API queues them (``MailStore.store_outbound``).
"""

from __future__ import annotations

import asyncio
import email
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import grpc
import httpx
import pytest
import pytest_asyncio

from services.chassis.config import Settings
from services.chassis.errors import MailplaneError
from services.messages.delivery import (
    Delivery,
    Options,
    bounce_report,
    bounced_message_of,
    retry_delay,
    return_path_of,
)
from services.messages.dkim import DkimSigner
from services.messages.ingest import Ingest
from services.messages.models import Message, Owner
from services.messages.resolver import SenderResolver
from tests.conftest import Services, Tenant, Zone
from tests.messages.outbound import (
    SHARED,
    LoopbackSigner,
    Sink,
    make_signer,
    publish_mx,
    queue,
    start_sink,
    verify_dkim,
)
from tests.messages.test_dkim import shared_record  # noqa: F401 (a fixture used here)
from tests.messages.test_inbound import drain, new_inbox
from tests.messages.test_mailbox_policy import new_mailbox, patch

#: Rounds of the worker a test waits through at most before it gives up.
ROUNDS = 400


@pytest_asyncio.fixture
async def sink() -> AsyncIterator[Sink]:
    sink, server = await start_sink()
    yield sink
    server.close()
    await server.wait_closed()


@pytest.fixture(scope="session")
def signer(dns_zone: Zone) -> LoopbackSigner:
    return make_signer(dns_zone)


@pytest_asyncio.fixture
async def delivery(
    services: Services, settings: Settings, sink: Sink, signer: LoopbackSigner
) -> AsyncIterator[Delivery]:
    worker = Delivery(
        services.messages.pool,
        SenderResolver(settings.dns_nameservers, settings.dns_timeout_seconds),
        signer.sign,
        Options(helo="out.mailplane.test", shared_domain=SHARED, port=sink.port, retry_base=0.05),
    )
    yield worker
    await worker.connections.close()


@pytest.fixture
def domain(dns_zone: Zone) -> str:
    """A recipient domain of this test whose MX is the loopback sink."""
    name = f"d{uuid.uuid4().hex[:10]}.example"
    publish_mx(dns_zone, name)
    return name


async def sender_of(
    http: httpx.AsyncClient, services: Services, tenant: Tenant
) -> tuple[Owner, str]:
    """A new inbox of ``tenant`` on the shared domain: its owner and address."""
    inbox = await new_inbox(http, services, tenant)
    return Owner(inbox["id"], tenant.account_id, inbox["podId"]), inbox["email"]


async def status(pool: asyncpg.Pool, message: Message) -> asyncpg.Record:
    row = await pool.fetchrow(
        "SELECT status, labels, dkim_signed FROM messages WHERE id = $1", message.id
    )
    assert row is not None
    return row


async def until(
    delivery: Delivery, done: Callable[[], Awaitable[bool]], ingest: Ingest | None = None
) -> None:
    """Runs the worker (and ingest) round after round until ``done()``."""
    for _ in range(ROUNDS):
        if await done():
            return
        if not await delivery.run_once():
            await asyncio.sleep(0.02)
        if ingest is not None:
            await drain(ingest)
    raise AssertionError("the deliveries did not settle")


def settled(pool: asyncpg.Pool, message: Message, *statuses: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return (await status(pool, message))["status"] in statuses

    return check


async def events(pool: asyncpg.Pool, tenant: Tenant, message: Message) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        "SELECT type, data FROM events WHERE account_id = $1 AND type LIKE 'message.%'"
        " AND data::jsonb -> 'message' ->> 'id' = $2 ORDER BY txid, seq",
        tenant.account_id,
        message.id,
    )
    import orjson

    return [{"type": r["type"], **orjson.loads(r["data"])} for r in rows]


async def counts(pool: asyncpg.Pool, owner: Owner) -> tuple[int, int, int]:
    row = await pool.fetchrow(
        "SELECT coalesce(sum(sends), 0) AS s, coalesce(sum(delivered), 0) AS d,"
        " coalesce(sum(bounced), 0) AS b FROM mail_counts WHERE owner_id = $1",
        owner.id,
    )
    return int(row["s"]), int(row["d"]), int(row["b"])


async def suppressed(pool: asyncpg.Pool, tenant: Tenant) -> dict[str, str]:
    rows = await pool.fetch(
        "SELECT address, message_id FROM suppressions WHERE account_id = $1", tenant.account_id
    )
    return {r["address"]: r["message_id"] for r in rows}


async def test_a_message_is_signed_once_and_its_dkim_signature_verifies_at_the_mx(
    http: httpx.AsyncClient,
    services: Services,
    tenant: Tenant,
    delivery: Delivery,
    sink: Sink,
    domain: str,
    dns_zone: Zone,
    signer: LoopbackSigner,
) -> None:
    pool = services.messages.pool
    owner, sender = await sender_of(http, services, tenant)
    to = [f"ann@{domain}", f"bob@{domain}"]
    message = await queue(pool, owner, sender, to, size=4096, verp=True)
    await until(delivery, settled(pool, message, "sent"))

    (copy,) = sink.of(message.message_id)
    assert sorted(copy.rcpt_tos) == to
    assert copy.tls  # STARTTLS was offered, so it was used
    assert copy.mail_from == return_path_of(sender, message.id)
    assert bounced_message_of(copy.mail_from) == message.id
    assert copy.content.startswith(b"DKIM-Signature:")
    assert verify_dkim(copy.content, dns_zone)
    tampered = copy.content.replace(b"quick brown fox", b"quick brown cat")
    assert not verify_dkim(tampered, dns_zone)
    assert signer.calls.count((tenant.account_id, SHARED)) == 1  # one message, signed once

    row = await status(pool, message)
    assert row["dkim_signed"] and row["labels"] == ["sent"]
    raw = await http.get(f"/v1/messages/{message.id}/raw", headers=tenant.headers)
    # The stored bytes are the signed ones (SMTP carries them with CRLF line ends).
    assert raw.content.replace(b"\r\n", b"\n") == copy.content.replace(b"\r\n", b"\n")
    (sent,) = [e for e in await events(pool, tenant, message) if e["type"] == "message.sent"]
    assert sorted(sent["recipients"]) == to and sent["reply"].startswith("250")
    assert sent["message"]["id"] == message.id and "text" not in sent["message"]
    assert await counts(pool, owner) == (1, 1, 0)


async def test_a_4xx_defers_with_a_backoff_then_the_message_goes_out_once(
    http: httpx.AsyncClient,
    services: Services,
    tenant: Tenant,
    delivery: Delivery,
    sink: Sink,
    domain: str,
) -> None:
    pool = services.messages.pool
    owner, sender = await sender_of(http, services, tenant)
    sink.data_replies[f"ann@{domain}"] = ["451 4.3.0 Try again later", "452 4.3.1 Still busy"]
    message = await queue(pool, owner, sender, [f"ann@{domain}"])
    await until(delivery, settled(pool, message, "sent"))

    assert len(sink.of(message.message_id)) == 1
    row = await pool.fetchrow(
        "SELECT state, attempts FROM deliveries WHERE message_id = $1", message.id
    )
    assert (row["state"], row["attempts"]) == ("sent", 3)
    kinds = [e["type"] for e in await events(pool, tenant, message)]
    assert kinds == ["message.queued", "message.delayed", "message.delayed", "message.sent"]
    (first_delay, *_) = [
        e for e in await events(pool, tenant, message) if e["type"] == "message.delayed"
    ]
    assert first_delay["reply"] == "451 4.3.0 Try again later"
    assert await counts(pool, owner) == (1, 1, 0)


def test_the_backoff_grows_from_the_base_to_twelve_times_it() -> None:
    assert [retry_delay(n, 300) for n in range(6)] == [300, 600, 1200, 2400, 3600, 3600]


async def test_a_5xx_bounces_suppresses_and_a_per_recipient_refusal_bounces_only_that_one(
    http: httpx.AsyncClient,
    services: Services,
    tenant: Tenant,
    delivery: Delivery,
    sink: Sink,
    domain: str,
) -> None:
    pool = services.messages.pool
    owner, sender = await sender_of(http, services, tenant)
    gone, here = f"gone@{domain}", f"here@{domain}"
    sink.rcpt_replies[gone] = ["550 5.1.1 No such user"]
    both = await queue(pool, owner, sender, [gone, here], subject="Both")
    await until(delivery, settled(pool, both, "sent", "bounced"))

    (copy,) = sink.of(both.message_id)
    assert copy.rcpt_tos == [here]
    row = await status(pool, both)
    assert row["status"] == "sent" and row["labels"] == ["bounced", "sent"]
    states = await pool.fetch(
        "SELECT state, recipients, last_reply FROM deliveries WHERE message_id = $1 ORDER BY id",
        both.id,
    )
    assert {(r["state"], tuple(r["recipients"])) for r in states} == {
        ("sent", (here,)),
        ("bounced", (gone,)),
    }
    kinds = {e["type"]: e for e in await events(pool, tenant, both)}
    assert kinds["message.bounced"]["recipients"] == [gone]
    assert kinds["message.bounced"]["reply"] == "550 5.1.1 No such user"
    assert kinds["message.sent"]["recipients"] == [here]
    assert await suppressed(pool, tenant) == {gone: both.id}
    thread = await http.get(f"/v1/threads/{both.thread_id}", headers=tenant.headers)
    assert "bounced" in thread.json()["labels"]

    # A whole refusal at DATA bounces the message.
    sink.data_replies[here] = ["554 5.7.1 Rejected by policy"]
    refused = await queue(pool, owner, sender, [here], subject="Refused")
    await until(delivery, settled(pool, refused, "sent", "bounced"))
    assert (await status(pool, refused))["status"] == "bounced"
    assert sink.of(refused.message_id) == []
    assert (await suppressed(pool, tenant))[here] == refused.id
    assert await counts(pool, owner) == (2, 0, 2)

    # The suppressed address is now refused before any attempt.
    later = await queue(pool, owner, sender, [here], subject="Later")
    await until(delivery, settled(pool, later, "bounced"))
    assert sink.of(later.message_id) == []
    (rejected,) = [e for e in await events(pool, tenant, later) if e["type"] != "message.queued"]
    assert rejected["type"] == "message.rejected" and rejected["recipients"] == [here]


async def test_a_null_mx_and_a_domain_without_any_address_bounce(
    http: httpx.AsyncClient,
    services: Services,
    tenant: Tenant,
    delivery: Delivery,
    dns_zone: Zone,
) -> None:
    pool = services.messages.pool
    owner, sender = await sender_of(http, services, tenant)
    null = f"n{uuid.uuid4().hex[:10]}.example"
    dns_zone.publish(null, "MX", "0 .")
    nowhere = f"x{uuid.uuid4().hex[:10]}.example"
    message = await queue(pool, owner, sender, [f"ann@{null}", f"bob@{nowhere}"])
    await until(delivery, settled(pool, message, "bounced"))
    replies = {
        e["recipients"][0]: e["reply"]
        for e in await events(pool, tenant, message)
        if e["type"] == "message.bounced"
    }
    assert replies[f"ann@{null}"].startswith("556 5.1.10")
    assert replies[f"bob@{nowhere}"].startswith("550 5.1.2")


async def test_a_delivery_past_its_lifetime_bounces_on_its_next_temporary_failure(
    http: httpx.AsyncClient,
    services: Services,
    tenant: Tenant,
    delivery: Delivery,
    sink: Sink,
    domain: str,
) -> None:
    pool = services.messages.pool
    owner, sender = await sender_of(http, services, tenant)
    message = await queue(pool, owner, sender, [f"ann@{domain}"])
    await pool.execute(
        "UPDATE deliveries SET expires_at = now() - interval '1 second' WHERE message_id = $1",
        message.id,
    )
    sink.data_replies[f"ann@{domain}"] = ["421 4.3.2 Shutting down"]
    await until(delivery, settled(pool, message, "bounced", "sent"))
    assert (await status(pool, message))["status"] == "bounced"
    (bounced,) = [e for e in await events(pool, tenant, message) if e["type"] == "message.bounced"]
    assert bounced["reply"].startswith("554 5.4.7")
    assert "421 4.3.2 Shutting down" in bounced["reply"]


async def test_local_recipients_are_handed_to_ingest_and_unknown_local_addresses_bounce(
    http: httpx.AsyncClient,
    services: Services,
    tenant: Tenant,
    other_tenant: Tenant,
    delivery: Delivery,
    ingest: Ingest,
    sink: Sink,
) -> None:
    pool = services.messages.pool
    owner, sender = await sender_of(http, services, tenant)
    other = await new_inbox(http, services, other_tenant)
    unknown = f"nobody{uuid.uuid4().hex[:8]}@{SHARED}"
    message = await queue(pool, owner, sender, [other["email"], unknown])
    await until(delivery, settled(pool, message, "sent", "bounced"), ingest)
    await drain(ingest)

    assert sink.of(message.message_id) == []  # nothing went over the network
    listed = await http.get(f"/v1/inboxes/{other['id']}/messages", headers=other_tenant.headers)
    (got,) = listed.json()["messages"]
    assert got["messageId"] == message.message_id and got["direction"] == "inbound"
    assert got["authentication"]["dkim"] == "pass"  # the same checks as mail from outside
    kinds = {e["type"]: e for e in await events(pool, tenant, message)}
    assert kinds["message.delivered"]["recipients"] == [other["email"]]
    assert kinds["message.bounced"]["recipients"] == [unknown]
    assert kinds["message.bounced"]["reply"].startswith("550 5.1.1")
    assert (await status(pool, message))["status"] == "sent"

    # All local and delivered: the message is `delivered`.
    only = await queue(pool, owner, sender, [other["email"]], subject="Again")
    await until(delivery, settled(pool, only, "delivered"), ingest)


async def test_a_dsn_at_the_verp_return_path_bounces_the_message_it_names(
    http: httpx.AsyncClient,
    services: Services,
    tenant: Tenant,
    delivery: Delivery,
    ingest: Ingest,
    sink: Sink,
    domain: str,
    edge: tuple[str, int],
) -> None:
    pool = services.messages.pool
    owner, sender = await sender_of(http, services, tenant)
    decoy = await queue(pool, owner, sender, [f"ann@{domain}"], verp=True)
    message = await queue(pool, owner, sender, [f"ann@{domain}", f"bob@{domain}"], verp=True)
    await until(delivery, settled(pool, message, "sent"))
    await until(delivery, settled(pool, decoy, "sent"))
    assert await counts(pool, owner) == (2, 2, 0)

    return_path = return_path_of(sender, message.id)
    report = dsn(return_path, message.message_id, f"bob@{domain}", f"mx.{domain}")
    await with_null_sender(edge, report, return_path)
    await drain(ingest)

    row = await status(pool, message)
    assert row["status"] == "sent" and "bounced" in row["labels"]  # ann still got it
    assert (await status(pool, decoy))["labels"] == ["sent"]
    (bounced,) = [e for e in await events(pool, tenant, message) if e["type"] == "message.bounced"]
    assert bounced["recipients"] == [f"bob@{domain}"]
    assert bounced["reply"].startswith("5.1.1")
    assert await suppressed(pool, tenant) == {f"bob@{domain}": message.id}
    assert await counts(pool, owner) == (2, 1, 1)
    # The report is not stored as mail.
    listed = await http.get(f"/v1/inboxes/{owner.id}/messages", headers=tenant.headers)
    assert all(m["direction"] == "outbound" for m in listed.json()["messages"])

    # A second report for the other recipient: nothing was delivered, so `bounced`.
    again = dsn(return_path, message.message_id, f"ann@{domain}", f"mx.{domain}")
    await with_null_sender(edge, again, return_path)
    await drain(ingest)
    assert (await status(pool, message))["status"] == "bounced"
    assert await counts(pool, owner) == (2, 1, 1)


def dsn(to: str, original_id: str, failed: str, mta: str) -> bytes:
    """A delivery status notification (RFC 3464) of a permanent failure."""
    return (
        f"From: Mail Delivery System <MAILER-DAEMON@{mta}>\r\n"
        f"To: {to}\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        f"Message-ID: <{uuid.uuid4().hex}@{mta}>\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="b1"\r\n'
        "\r\n"
        "--b1\r\n"
        "Content-Type: text/plain\r\n\r\n"
        "Your message could not be delivered.\r\n"
        "--b1\r\n"
        "Content-Type: message/delivery-status\r\n\r\n"
        f"Reporting-MTA: dns; {mta}\r\n"
        "\r\n"
        f"Final-Recipient: rfc822; {failed}\r\n"
        "Action: failed\r\n"
        "Status: 5.1.1\r\n"
        "Diagnostic-Code: smtp; 550 5.1.1 User unknown\r\n"
        "\r\n"
        "--b1\r\n"
        "Content-Type: text/rfc822-headers\r\n\r\n"
        f"Message-ID: {original_id}\r\n"
        "--b1--\r\n"
    ).encode()


async def with_null_sender(edge: tuple[str, int], raw: bytes, rcpt: str) -> None:
    """Sends ``raw`` with ``MAIL FROM:<>``, as a bounce comes."""
    import aiosmtplib

    async with aiosmtplib.SMTP(hostname=edge[0], port=edge[1]) as client:
        await client.mail("")
        await client.rcpt(rcpt)
        code, _ = await client.data(raw)
        assert code == 250


def test_a_report_names_its_failed_recipients_and_ordinary_mail_is_no_report() -> None:
    report = dsn("a+bounce-x@mailplane.test", "<m@x>", "Bob@Example.org", "mx.example.org")
    assert bounce_report(report) == (["bob@example.org"], "5.1.1 smtp; 550 5.1.1 User unknown")
    message = email.message_from_string("From: a@b\nSubject: Out of office\n\nAway.\n")
    assert bounce_report(message.as_bytes()) is None
    assert bounced_message_of("scout@mailplane.test") is None
    assert bounced_message_of("scout+bounce-nope@mailplane.test") is None
    ulid = "01JD5B6Q8Z3Y7X2W1V0T9S8R7Q"
    assert return_path_of("Scout@Example.ORG", f"msg_{ulid}") == (
        f"Scout+bounce-{ulid.lower()}@example.org"
    )
    assert bounced_message_of(f"scout+bounce-{ulid.lower()}@example.org") == f"msg_{ulid}"


async def test_a_paused_mailboxs_delivery_is_held_but_its_auto_reply_goes_out(
    http: httpx.AsyncClient,
    services: Services,
    tenant: Tenant,
    delivery: Delivery,
    sink: Sink,
    domain: str,
) -> None:
    pool = services.messages.pool
    mailbox = await new_mailbox(http, tenant)
    owner = Owner(mailbox["id"], tenant.account_id, mailbox["podId"])
    queued = await queue(pool, owner, mailbox["address"], [f"ann@{domain}"], subject="Q")
    await patch(http, tenant, mailbox, status="paused")
    auto = await queue(pool, owner, mailbox["address"], [f"bob@{domain}"], return_path="")
    await until(delivery, settled(pool, auto, "sent"))
    await until(delivery, settled(pool, queued, "held"))

    assert sink.of(queued.message_id) == []
    (reply,) = sink.of(auto.message_id)
    assert reply.mail_from == "<>"  # a null return path (RFC 3834 §4)
    row = await status(pool, queued)
    assert row["labels"] == ["held", "sent"]
    state = await pool.fetchval("SELECT state FROM deliveries WHERE message_id = $1", queued.id)
    assert state == "held"
    kinds = [e["type"] for e in await events(pool, tenant, queued)]
    assert kinds == ["message.queued", "message.held"]
    # Held rows are not due: another round leaves them alone.
    await delivery.run_once()
    assert sink.of(queued.message_id) == []


async def test_a_domain_that_cannot_send_fails_the_message_for_good(
    http: httpx.AsyncClient,
    services: Services,
    tenant: Tenant,
    delivery: Delivery,
    sink: Sink,
    domain: str,
) -> None:
    pool = services.messages.pool
    owner, _ = await sender_of(http, services, tenant)
    custom = f"scout@c{uuid.uuid4().hex[:8]}.example"
    message = await queue(pool, owner, custom, [f"ann@{domain}", f"bob@{domain}"])
    await until(delivery, settled(pool, message, "failed"))
    assert sink.of(message.message_id) == []
    (rejected,) = [e for e in await events(pool, tenant, message) if e["type"] != "message.queued"]
    assert rejected["type"] == "message.rejected"
    assert "cannot send" in rejected["reply"]
    states = await pool.fetch("SELECT state FROM deliveries WHERE message_id = $1", message.id)
    assert [r["state"] for r in states] == ["rejected"]


async def test_a_per_recipient_4xx_defers_only_that_recipient_until_it_is_accepted(
    http: httpx.AsyncClient,
    services: Services,
    tenant: Tenant,
    delivery: Delivery,
    sink: Sink,
    domain: str,
) -> None:
    pool = services.messages.pool
    owner, sender = await sender_of(http, services, tenant)
    busy, free = f"busy@{domain}", f"free@{domain}"
    sink.rcpt_replies[busy] = ["450 4.2.1 Mailbox busy"]
    message = await queue(pool, owner, sender, [busy, free])
    await until(delivery, settled(pool, message, "sent", "bounced"))

    assert [c.rcpt_tos for c in sink.of(message.message_id)] == [[free], [busy]]
    rows = await pool.fetch(
        "SELECT state, recipients, attempts FROM deliveries WHERE message_id = $1", message.id
    )
    assert {(r["state"], tuple(r["recipients"]), r["attempts"]) for r in rows} == {
        ("sent", (free,), 1),
        ("sent", (busy,), 2),
    }
    kinds = [(e["type"], e.get("recipients")) for e in await events(pool, tenant, message)]
    assert kinds == [
        ("message.queued", None),
        ("message.delayed", [busy]),
        ("message.sent", [free]),
        ("message.sent", [busy]),
    ]
    assert await counts(pool, owner) == (1, 1, 0)


async def test_messages_to_one_mx_share_an_smtp_session(
    http: httpx.AsyncClient,
    services: Services,
    tenant: Tenant,
    delivery: Delivery,
    sink: Sink,
    domain: str,
) -> None:
    pool = services.messages.pool
    owner, sender = await sender_of(http, services, tenant)
    # Mail other tests left queued goes first, and its sessions are closed.
    while await delivery.run_once():
        pass
    await delivery.connections.close()
    sink.sessions = 0
    for n in range(3):  # one after the other: each finds the last one's session idle
        message = await queue(pool, owner, sender, [f"ann{n}@{domain}"], subject=f"#{n}")
        await until(delivery, settled(pool, message, "sent"))
    assert len([r for r in sink.received if r.rcpt_tos[0].endswith(domain)]) == 3
    assert sink.sessions == 1


async def test_an_unreachable_preferred_mx_falls_back_to_the_next_and_a_smarthost_takes_all(
    http: httpx.AsyncClient,
    services: Services,
    settings: Settings,
    tenant: Tenant,
    delivery: Delivery,
    sink: Sink,
    dns_zone: Zone,
    signer: LoopbackSigner,
) -> None:
    pool = services.messages.pool
    owner, sender = await sender_of(http, services, tenant)
    domain = f"f{uuid.uuid4().hex[:10]}.example"
    dns_zone.publish(domain, "MX", f"20 backup.{domain}")
    dns_zone.publish(domain, "MX", f"5 primary.{domain}")
    dns_zone.publish(f"primary.{domain}", "A", "127.0.0.2")  # nothing listens there
    dns_zone.publish(f"backup.{domain}", "A", "127.0.0.1")
    message = await queue(pool, owner, sender, [f"ann@{domain}"])
    await until(delivery, settled(pool, message, "sent"))
    assert len(sink.of(message.message_id)) == 1

    relay = Delivery(
        pool,
        SenderResolver(settings.dns_nameservers, settings.dns_timeout_seconds),
        signer.sign,
        Options(
            helo="out.mailplane.test",
            shared_domain=SHARED,
            port=1,  # never used: everything goes through the smarthost
            smarthost=f"127.0.0.1:{sink.port}",
        ),
    )
    unknown = f"u{uuid.uuid4().hex[:10]}.example"  # no DNS records at all
    relayed = await queue(pool, owner, sender, [f"ann@{unknown}"])
    try:
        await until(relay, settled(pool, relayed, "sent"))
    finally:
        await relay.connections.close()
    assert len(sink.of(relayed.message_id)) == 1


@pytest.mark.usefixtures("shared_record")  # the shared domain's key record, published
async def test_a_send_through_the_api_arrives_signed_by_the_domains_service_and_counts(
    http: httpx.AsyncClient,
    services: Services,
    settings: Settings,
    tenant: Tenant,
    sink: Sink,
    domain: str,
    dns_zone: Zone,
    edge: tuple[str, int],
    ingest: Ingest,
) -> None:
    """The whole path: the REST send, the worker signing through the domains
    service (``DkimSigner``, as the ``worker`` process does), the MX, then a DSN
    for one recipient, and the mailbox's stats."""
    pool = services.messages.pool
    mailbox = await new_mailbox(http, tenant)
    path = f"/v1/agent/mailboxes/{mailbox['id']}"
    ann, bob = f"ann@{domain}", f"bob@{domain}"
    answer = await http.post(
        f"{path}/messages",
        json={"to": [ann], "cc": [bob], "subject": "Quote", "text": "100 units: 4,000 EUR."},
        headers={**tenant.headers, "Idempotency-Key": uuid.uuid4().hex},
    )
    assert answer.status_code == 202, answer.text
    sent = answer.json()
    async with grpc.aio.insecure_channel(settings.domains_addr) as channel:
        signer = DkimSigner(
            channel, settings.peer_deadline_seconds, settings.internal_token.get_secret_value()
        )
        worker = Delivery(
            pool,
            SenderResolver(settings.dns_nameservers, settings.dns_timeout_seconds),
            signer.sign,
            Options(helo="out.mailplane.test", shared_domain=SHARED, port=sink.port),
        )
        row = await pool.fetchrow("SELECT * FROM messages WHERE id = $1", sent["id"])

        async def gone_out() -> bool:
            status = await pool.fetchval("SELECT status FROM messages WHERE id = $1", sent["id"])
            return bool(status == "sent")

        await until(worker, gone_out)
        await worker.connections.close()

    (copy,) = sink.of(row["rfc_message_id"])
    assert sorted(copy.rcpt_tos) == [ann, bob]
    assert verify_dkim(copy.content, dns_zone)  # the key the domains service holds
    assert bounced_message_of(copy.mail_from) == sent["id"]  # the API's VERP return path

    report = dsn(copy.mail_from, row["rfc_message_id"], bob, f"mx.{domain}")
    await with_null_sender(edge, report, copy.mail_from)
    await drain(ingest)
    got = (await http.get(f"/v1/messages/{sent['id']}", headers=tenant.headers)).json()
    assert got["status"] == "sent" and "bounced" in got["labels"]
    stats = (
        await http.get(f"{path}/stats", params={"period": "24h"}, headers=tenant.headers)
    ).json()
    assert stats["sends"]["period"] == 1
    assert stats["deliverability"]["delivered"] == 0
    assert stats["deliverability"]["bounced"] == 1
    suppressions = (await http.get("/v1/suppressions", headers=tenant.headers)).json()
    assert [s["address"] for s in suppressions["suppressions"]] == [bob]


async def test_a_signer_that_is_unavailable_delays_the_message_without_counting_an_attempt(
    http: httpx.AsyncClient,
    services: Services,
    settings: Settings,
    tenant: Tenant,
    sink: Sink,
    domain: str,
    signer: LoopbackSigner,
) -> None:
    pool = services.messages.pool
    owner, sender = await sender_of(http, services, tenant)
    outages = [MailplaneError("unavailable", "The domains service is down.")]

    async def flaky(account_id: str, signing_domain: str, raw: bytes) -> bytes:
        if outages and account_id == tenant.account_id:  # other tests' rows may be due too
            raise outages.pop()
        return await signer.sign(account_id, signing_domain, raw)

    worker = Delivery(
        pool,
        SenderResolver(settings.dns_nameservers, settings.dns_timeout_seconds),
        flaky,
        Options(helo="out.mailplane.test", shared_domain=SHARED, port=sink.port, retry_base=0.05),
    )
    message = await queue(pool, owner, sender, [f"ann@{domain}"])
    assert await worker.run_once() >= 1
    row = await pool.fetchrow(
        "SELECT state, attempts, last_reply FROM deliveries WHERE message_id = $1", message.id
    )
    assert (row["state"], row["attempts"]) == ("queued", 0)
    assert row["last_reply"].startswith("451 4.3.0 DKIM signing unavailable")
    assert sink.of(message.message_id) == []
    await until(worker, settled(pool, message, "sent"))
    await worker.connections.close()
    assert len(sink.of(message.message_id)) == 1


async def test_a_delivery_that_fails_for_a_bug_of_ours_is_deferred_then_bounced_not_leased_forever(
    http: httpx.AsyncClient,
    services: Services,
    settings: Settings,
    tenant: Tenant,
    sink: Sink,
    domain: str,
) -> None:
    pool = services.messages.pool
    owner, sender = await sender_of(http, services, tenant)

    async def broken(account_id: str, signing_domain: str, raw: bytes) -> bytes:
        raise RuntimeError("a bug in signing")

    worker = Delivery(
        pool,
        SenderResolver(settings.dns_nameservers, settings.dns_timeout_seconds),
        broken,
        Options(helo="out.mailplane.test", shared_domain=SHARED, port=sink.port, retry_base=0.05),
    )
    message = await queue(pool, owner, sender, [f"ann@{domain}"])
    await pool.execute(  # only this test's row is due: other tests' rows wait
        "UPDATE deliveries SET next_attempt_at = now() + interval '1 hour'"
        " WHERE message_id <> $1 AND state IN ('queued', 'deferred')",
        message.id,
    )
    assert await worker.run_once() >= 1
    await asyncio.sleep(0.2)
    row = await pool.fetchrow(
        "SELECT state, attempts, last_reply FROM deliveries WHERE message_id = $1", message.id
    )
    assert (row["state"], row["attempts"]) == ("deferred", 1)
    assert row["last_reply"].startswith("451 4.3.0 Local error")
    # Past its lifetime, the next failure bounces it for good.
    await pool.execute(
        "UPDATE deliveries SET expires_at = now() - interval '1 second', next_attempt_at = now()"
        " WHERE message_id = $1",
        message.id,
    )
    await until(worker, settled(pool, message, "bounced"))
    await worker.connections.close()
    assert sink.of(message.message_id) == []
