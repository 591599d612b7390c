"""Outbound DKIM (DESIGN §7.5; RFC 6376) through the real messages-side signer, the
real domains service and the loopback DNS server: a signed message verifies with
dkimpy's verifier against the published key record, for the shared domain and for
a verified custom domain; a tampered message does not; a domain that cannot send is
refused; what a verification finds about sending reaches the messages service."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import dkim
import dns.exception
import dns.resolver
import grpc
import httpx
import pytest
import pytest_asyncio
from mailplane.pods.v1 import pods_pb2

from services.chassis.config import Settings
from services.chassis.errors import MailplaneError
from services.domains import records
from services.messages.dkim import DkimSigner
from tests.conftest import Services, Tenant, Zone
from tests.domains.test_domains import new_name, publish
from tests.inboxes.test_inboxes import verified_domain

#: A dnspython-backed ``dnsfunc`` for dkimpy: ``(name bytes, timeout) → TXT bytes | None``.
TxtLookup = Callable[..., bytes | None]


def message(domain: str, body: bytes = b"Hello from the agent.\r\n") -> bytes:
    """An outbound RFC 5322 message from ``agent@domain``, CRLF line endings."""
    return (
        f"From: Agent <agent@{domain}>\r\n"
        "To: Ada <ada@example.org>\r\n"
        "Cc: bob@example.org\r\n"
        "Subject: Re: Quote for 100 units\r\n"
        "Date: Sat, 21 Nov 2026 10:00:00 +0000\r\n"
        f"Message-ID: <{uuid.uuid4().hex}@{domain}>\r\n"
        "In-Reply-To: <q1@example.org>\r\n"
        "References: <q1@example.org>\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "X-Mailer: mailplane\r\n"
        "\r\n"
    ).encode() + body * 40


@pytest_asyncio.fixture
async def sender(make_tenant) -> Tenant:  # type: ignore[no-untyped-def]
    """An account that may add any number of domains."""
    return await make_tenant("Sender", pods_pb2.PLAN_ENTERPRISE)  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def loopback_txt(dns_zone: Zone) -> TxtLookup:
    """dkimpy's DNS lookup, asking the loopback DNS server the tests publish in."""
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = ["127.0.0.1"]
    resolver.port = dns_zone.port

    def get_txt(name: bytes, timeout: float = 5) -> bytes | None:
        try:
            answer = resolver.resolve(name.decode(), "TXT", lifetime=timeout)
        except dns.exception.DNSException:
            return None
        return b"".join(answer[0].strings)  # type: ignore[attr-defined]

    return get_txt


async def verifies(signed: bytes, lookup: TxtLookup) -> bool:
    """dkimpy's verification (RFC 6376 §6), off the loop: its DNS lookup blocks."""
    return bool(await asyncio.to_thread(dkim.verify, signed, dnsfunc=lookup))


@pytest_asyncio.fixture(scope="session")
async def signer(services: Services, settings: Settings) -> AsyncIterator[DkimSigner]:
    """The messages service's signer over its own channel to the domains service."""
    async with grpc.aio.insecure_channel(settings.domains_addr) as channel:
        yield DkimSigner(
            channel, settings.peer_deadline_seconds, settings.internal_token.get_secret_value()
        )


@pytest.fixture(scope="session")
def shared_record(settings: Settings, dns_zone: Zone) -> str:
    """Publishes the shared domain's DKIM key record, from the setting's key."""
    assert settings.shared_dkim_private_key is not None
    key = records.load_dkim_private_key(settings.shared_dkim_private_key.get_secret_value())
    value = records.dkim_txt(key.public_key())
    name = records.dkim_record_name(settings.shared_domain)
    dns_zone.clear(name, "TXT")
    dns_zone.publish(name, "TXT", value)
    return value


def dkim_tags(signed: bytes) -> dict[bytes, bytes]:
    """The tags of the first header of ``signed``, a DKIM-Signature."""
    header = dkim.DKIM(signed).headers[0]
    assert header[0] == b"DKIM-Signature"
    return dict(dkim.util.parse_tag_value(header[1]))


async def test_a_shared_domain_message_verifies_against_the_published_key(
    signer: DkimSigner,
    tenant: Tenant,
    settings: Settings,
    shared_record: str,
    loopback_txt: TxtLookup,
) -> None:
    raw = message(settings.shared_domain)
    signed = await signer.sign(tenant.account_id, settings.shared_domain.upper(), raw)
    assert signed.endswith(raw) and signed.startswith(b"DKIM-Signature: ")
    tags = dkim_tags(signed)
    assert tags[b"a"] == b"rsa-sha256" and tags[b"c"] == b"relaxed/relaxed"
    assert tags[b"d"] == settings.shared_domain.encode() and tags[b"s"] == b"mailplane"
    signed_names = [h.strip() for h in tags[b"h"].split(b":")]
    assert sorted(set(signed_names)) == sorted(
        [
            b"from",
            b"to",
            b"cc",
            b"subject",
            b"date",
            b"message-id",
            b"in-reply-to",
            b"references",
            b"mime-version",
            b"content-type",
        ]
    )
    assert signed_names.count(b"from") == 2  # one more than present: no From can be added
    assert await verifies(signed, loopback_txt)


async def test_a_tampered_body_or_signed_header_fails_verification(
    signer: DkimSigner,
    tenant: Tenant,
    settings: Settings,
    shared_record: str,
    loopback_txt: TxtLookup,
) -> None:
    signed = await signer.sign(tenant.account_id, settings.shared_domain, message("mailplane.test"))
    assert await verifies(signed, loopback_txt)
    body_changed = signed.replace(b"Hello from the agent.", b"Hello from the agenT.", 1)
    subject_changed = signed.replace(b"Subject: Re: Quote", b"Subject: Re: Quota", 1)
    added_from = b"From: mallory@example.net\r\n" + signed
    for tampered in (body_changed, subject_changed, added_from):
        assert tampered != signed
        assert not await verifies(tampered, loopback_txt)
    # An unsigned header may change (X-Mailer is not in h=), and the signature holds.
    assert await verifies(signed.replace(b"X-Mailer: mailplane", b"X-Mailer: other"), loopback_txt)


async def test_a_verified_custom_domain_signs_with_its_published_key(
    signer: DkimSigner,
    http: httpx.AsyncClient,
    sender: Tenant,
    dns_zone: Zone,
    loopback_txt: TxtLookup,
) -> None:
    domain = await verified_domain(http, sender, dns_zone)
    assert domain["canSend"] is True
    signed = await signer.sign(sender.account_id, domain["domain"], message(domain["domain"]))
    assert dkim_tags(signed)[b"d"] == domain["domain"].encode()
    assert await verifies(signed, loopback_txt)
    # Not with the shared domain's key, nor with another domain's record.
    dns_zone.clear(records.dkim_record_name(domain["domain"]), "TXT")
    other = await verified_domain(http, sender, dns_zone)
    dns_zone.publish(
        records.dkim_record_name(domain["domain"]),
        "TXT",
        next(r["value"] for r in other["records"] if r["purpose"] == "dkim"),
    )
    assert not await verifies(signed, loopback_txt)


async def expect_not_sendable(signer: DkimSigner, account_id: str, domain: str) -> None:
    with pytest.raises(MailplaneError) as raised:
        await signer.sign(account_id, domain, message(domain))
    assert raised.value.code == "domain_not_sendable", raised.value
    assert raised.value.details == {"domain": domain}


async def test_an_unverified_unknown_or_other_accounts_domain_is_not_sendable(
    signer: DkimSigner,
    http: httpx.AsyncClient,
    sender: Tenant,
    other_tenant: Tenant,
    dns_zone: Zone,
) -> None:
    pending = await http.post("/v1/domains", json={"domain": new_name()}, headers=sender.headers)
    assert pending.status_code == 201, pending.text
    await expect_not_sendable(signer, sender.account_id, pending.json()["domain"])
    await expect_not_sendable(signer, sender.account_id, new_name())
    theirs = await verified_domain(http, other_tenant, dns_zone)
    await expect_not_sendable(signer, sender.account_id, theirs["domain"])
    # A verification that finds the DKIM record wrong takes sending away.
    failed = await http.post("/v1/domains", json={"domain": new_name()}, headers=sender.headers)
    publish(dns_zone, failed.json(), wrong={"dkim": "v=DKIM1; k=rsa; p=AAAA"})
    checked = await http.post(f"/v1/domains/{failed.json()['id']}/verify", headers=sender.headers)
    assert checked.json()["canSend"] is False, checked.text
    await expect_not_sendable(signer, sender.account_id, failed.json()["domain"])


async def test_the_domains_service_down_is_unavailable(settings: Settings) -> None:
    async with grpc.aio.insecure_channel("127.0.0.1:9") as channel:
        down = DkimSigner(channel, 1.0, settings.internal_token.get_secret_value())
        with pytest.raises(MailplaneError) as raised:
            await down.sign("acc_x", settings.shared_domain, message(settings.shared_domain))
    assert raised.value.code == "unavailable"


async def can_send_row(services: Services, name: str) -> dict[str, Any] | None:
    row = await services.messages.pool.fetchrow(
        "SELECT account_id, can_send, can_receive FROM domains WHERE name = $1", name
    )
    return dict(row) if row is not None else None


async def test_what_a_verification_finds_about_sending_reaches_the_messages_service(
    services: Services,
    http: httpx.AsyncClient,
    sender: Tenant,
    dns_zone: Zone,
) -> None:
    domain = await verified_domain(http, sender, dns_zone)
    name, domain_id = domain["domain"], domain["id"]
    assert await can_send_row(services, name) == {
        "account_id": sender.account_id,
        "can_send": True,
        "can_receive": True,
    }

    async def verify_with(**skip: Any) -> dict[str, Any]:
        publish(dns_zone, domain, **skip)
        reply = await http.post(f"/v1/domains/{domain_id}/verify", headers=sender.headers)
        assert reply.status_code == 200, reply.text
        return reply.json()  # type: ignore[no-any-return]

    # Without MX it can still send, not receive.
    assert (await verify_with(skip=("receiving",)))["canSend"] is True
    assert await can_send_row(services, name) == {
        "account_id": sender.account_id,
        "can_send": True,
        "can_receive": False,
    }
    # Without SPF it can do neither.
    assert (await verify_with(skip=("sending",)))["canSend"] is False
    assert await can_send_row(services, name) == {
        "account_id": sender.account_id,
        "can_send": False,
        "can_receive": False,
    }
    # Everything back: both again.
    assert (await verify_with())["status"] == "verified"
    assert await can_send_row(services, name) == {
        "account_id": sender.account_id,
        "can_send": True,
        "can_receive": True,
    }
