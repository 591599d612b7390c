"""SMTP submission (issue 14; DESIGN §7.1, §7.5): Python's ``smtplib`` against
the real listeners, logging in with the credentials ``POST /v1/inboxes`` handed
out, through the real inboxes service and the real send path."""

from __future__ import annotations

import asyncio
import smtplib
import ssl
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from deploy.tls import ensure_dev_certificate
from services.chassis.config import Settings
from services.chassis.rpc import open_channel
from services.messages.outbox_store import OutboxStore, SenderRow
from services.messages.server import outbox_of
from services.messages.submission import InboxLogins, SubmissionHandler, serve_submission
from tests.conftest import Services, Tenant, free_port
from tests.messages.test_inbound import route


@asynccontextmanager
async def listening(
    services: Services, settings: Settings, folder: Path
) -> AsyncIterator[tuple[int, int, Path]]:
    """Runs the STARTTLS and implicit-TLS listeners with a fresh certificate in
    ``folder``; yields their ports and the certificate (its own CA)."""
    cert, key = ensure_dev_certificate(folder)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    inboxes, pods = open_channel(settings.inboxes_addr), open_channel(settings.pods_addr)
    pool = services.messages.pool
    store = OutboxStore(pool)

    async def sender(account_id: str, inbox_id: str) -> SenderRow | None:
        return await store.sender(account_id, inbox_id, settings.shared_domain)

    handler = SubmissionHandler(
        outbox_of(settings, pool, pods),
        InboxLogins(inboxes, 5.0, settings.internal_token.get_secret_value()),
        sender,
    )
    ports = free_port(), free_port()
    servers = [
        await serve_submission(
            handler,
            tls,
            "127.0.0.1",
            port,
            implicit_tls=implicit,
            max_bytes=settings.max_message_bytes,
            hostname="mx.mailplane.test",
        )
        for port, implicit in zip(ports, (False, True), strict=True)
    ]
    try:
        yield ports[0], ports[1], cert
    finally:
        for server in servers:
            server.close()
            await server.wait_closed()
        await inboxes.close()
        await pods.close()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def submission(
    services: Services, settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[int, int, Path]]:
    """The submission listeners; yields their ports and the CA file."""
    async with listening(services, settings, tmp_path_factory.mktemp("tls")) as found:
        yield found


async def new_inbox(http: httpx.AsyncClient, services: Services, tenant: Tenant) -> dict[str, Any]:
    answer = await http.post(
        "/v1/inboxes", json={"username": f"sub{uuid.uuid4().hex[:10]}"}, headers=tenant.headers
    )
    assert answer.status_code == 201, answer.text
    inbox: dict[str, Any] = answer.json()
    await route(services, inbox["email"], {**inbox, "accountId": tenant.account_id}, "inbox")
    return inbox


def mail(sender: str, to: str, subject: str = "Submitted") -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = subject
    message["Message-ID"] = f"<{uuid.uuid4().hex}@client.example>"
    message.set_content("Sent from a mail client.")
    return message


def starttls_client(port: int, cafile: Path) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", port, timeout=10)
    client.ehlo("client.example")
    client.starttls(context=ssl.create_default_context(cafile=str(cafile)))
    client.ehlo("client.example")
    return client


async def messages_of(http: httpx.AsyncClient, tenant: Tenant, inbox: dict[str, Any]) -> Any:
    answer = await http.get(f"/v1/inboxes/{inbox['id']}/messages", headers=tenant.headers)
    assert answer.status_code == 200, answer.text
    return answer.json()["messages"]


async def test_auth_needs_tls_and_the_handed_out_password(
    http: httpx.AsyncClient,
    services: Services,
    tenant: Tenant,
    submission: tuple[int, int, Path],
) -> None:
    port, _, cafile = submission
    inbox = await new_inbox(http, services, tenant)
    smtp = inbox["credentials"]["smtp"]
    assert smtp["username"] == inbox["email"]

    def before_tls() -> tuple[int, bytes]:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.ehlo("client.example")
            assert not client.has_extn("auth")
            return client.docmd("AUTH", "PLAIN AGFkYQBzZWNyZXQ=")

    code, _ = await asyncio.to_thread(before_tls)
    assert code in (530, 538)

    def wrong_then_right() -> None:
        with starttls_client(port, cafile) as client:
            assert client.has_extn("auth")
            with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
                client.login(smtp["username"], "not-the-password")
            assert refused.value.smtp_code == 535
            code, _ = client.login(smtp["username"], smtp["password"])
            assert code == 235

    await asyncio.to_thread(wrong_then_right)


async def test_a_submitted_message_takes_the_send_path_once(
    http: httpx.AsyncClient,
    services: Services,
    tenant: Tenant,
    submission: tuple[int, int, Path],
) -> None:
    port, implicit_port, cafile = submission
    inbox = await new_inbox(http, services, tenant)
    smtp = inbox["credentials"]["smtp"]
    message = mail(inbox["email"], "ada@example.com")

    def submit() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        with starttls_client(port, cafile) as client:
            client.login(smtp["username"], smtp["password"])
            with pytest.raises(smtplib.SMTPSenderRefused) as spoofed:
                client.send_message(message, from_addr="boss@example.com")
            assert spoofed.value.smtp_code == 553
            client.rset()
            first = client.send_message(message, to_addrs=["ada@example.com", "bcc@example.org"])
            again = client.send_message(message, to_addrs=["ada@example.com", "bcc@example.org"])
        context = ssl.create_default_context(cafile=str(cafile))
        with smtplib.SMTP_SSL("127.0.0.1", implicit_port, context=context, timeout=10) as client:
            client.login(smtp["username"], smtp["password"])
            other = client.send_message(mail(inbox["email"], "bob@example.com", "Over TLS"))
        return first, again, other

    assert await asyncio.to_thread(submit) == ({}, {}, {})
    got = await messages_of(http, tenant, inbox)
    assert sorted(m["subject"] for m in got) == ["Over TLS", "Submitted"]  # sent once
    (sent,) = [m for m in got if m["subject"] == "Submitted"]
    assert sent["direction"] == "outbound" and sent["status"] == "queued"
    assert sent["messageId"] == message["Message-ID"] and sent["bcc"] == ["bcc@example.org"]
    rows = await services.messages.pool.fetch(
        "SELECT domain, recipients FROM deliveries WHERE message_id = $1 ORDER BY domain",
        sent["id"],
    )
    assert [(r["domain"], list(r["recipients"])) for r in rows] == [
        ("example.com", ["ada@example.com"]),
        ("example.org", ["bcc@example.org"]),
    ]


async def test_suppressed_recipients_are_refused_at_rcpt_and_logins_are_throttled(
    http: httpx.AsyncClient,
    services: Services,
    tenant: Tenant,
    submission: tuple[int, int, Path],
) -> None:
    port, _, cafile = submission
    inbox = await new_inbox(http, services, tenant)
    smtp = inbox["credentials"]["smtp"]
    made = await http.post(
        "/v1/suppressions", json={"address": "gone@example.com"}, headers=tenant.headers
    )
    assert made.status_code == 201

    def suppressed() -> Any:
        with starttls_client(port, cafile) as client:
            client.login(smtp["username"], smtp["password"])
            with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
                client.send_message(mail(inbox["email"], "gone@example.com"))
            return refused.value.recipients

    refused = await asyncio.to_thread(suppressed)
    assert refused["gone@example.com"][0] == 550

    def hammer() -> int:
        with starttls_client(port, cafile) as client:
            for _ in range(5):
                with pytest.raises(smtplib.SMTPAuthenticationError):
                    client.login(smtp["username"], "wrong")
            with pytest.raises(smtplib.SMTPAuthenticationError) as throttled:
                client.login(smtp["username"], smtp["password"])  # even the right one, for now
            return throttled.value.smtp_code

    assert await asyncio.to_thread(hammer) == 454
