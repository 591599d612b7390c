"""Sender authentication of received mail (SPF, DKIM, DMARC) against a real DNS
server on loopback and real RSA keys (DESIGN §7.3; RFC 7208, 6376, 7489).

Each test publishes under its own registrable domain (``<random>.test``), so
tests share neither records nor cached answers.
"""

from __future__ import annotations

import asyncio
import base64
import secrets

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from services.messages.authentication import (
    Authentication,
    authenticate,
    organizational_domain,
    passed,
)
from services.messages.resolver import DnsTemporaryError, SenderResolver
from tests.conftest import Zone, free_port

CLIENT_IP = "192.0.2.10"
OTHER_IP = "198.51.100.20"


def new_domain() -> str:
    return f"s{secrets.token_hex(6)}.test"


@pytest.fixture(scope="module")
def rsa_key() -> tuple[bytes, str]:
    """An RSA-2048 key: the PEM private key and the ``p=`` of its DKIM record."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem, base64.b64encode(der).decode()


@pytest.fixture
def resolver(dns_zone: Zone) -> SenderResolver:
    """A resolver of the test DNS, fresh for each test."""
    return SenderResolver(f"127.0.0.1:{dns_zone.port}", 2.0)


def message(from_domain: str, body: bytes = b"Hello there.\r\n") -> bytes:
    return (
        f"From: Ann Sender <ann@{from_domain}>\r\n"
        "To: agent@mailplane.test\r\n"
        "Subject: Quarterly numbers\r\n"
        f"Message-ID: <{secrets.token_hex(8)}@{from_domain}>\r\n"
        "\r\n"
    ).encode() + body


def signed(
    raw: bytes, domain: str, key: tuple[bytes, str], zone: Zone, selector: str = "s1"
) -> bytes:
    """Returns ``raw`` with a DKIM signature of ``domain``, whose key is published."""
    pem, public = key
    zone.publish(f"{selector}._domainkey.{domain}", "TXT", f"v=DKIM1; k=rsa; p={public}")
    return dkim.sign(raw, selector.encode(), domain.encode(), pem) + raw


async def check(
    raw: bytes,
    resolver: SenderResolver,
    mail_from: str,
    client_ip: str = CLIENT_IP,
    helo: str = "mta.sender.test",
) -> Authentication:
    return await authenticate(raw, client_ip, helo, mail_from, resolver)


# --- SPF ------------------------------------------------------------------------------


async def test_spf_passes_when_the_client_is_in_an_ip4_mechanism(
    dns_zone: Zone, resolver: SenderResolver
) -> None:
    domain = new_domain()
    dns_zone.publish(domain, "TXT", "v=spf1 ip4:192.0.2.0/24 -all")
    auth = await check(message(domain), resolver, f"bounce@{domain}")
    assert auth.spf == "pass"
    assert passed(auth)


async def test_spf_fails_a_client_outside_the_record_under_dash_all(
    dns_zone: Zone, resolver: SenderResolver
) -> None:
    domain = new_domain()
    dns_zone.publish(domain, "TXT", "v=spf1 ip4:192.0.2.0/24 -all")
    auth = await check(message(domain), resolver, f"bounce@{domain}", client_ip=OTHER_IP)
    assert auth.spf == "fail"
    assert not passed(auth)


async def test_spf_softfails_a_client_outside_the_record_under_tilde_all(
    dns_zone: Zone, resolver: SenderResolver
) -> None:
    domain = new_domain()
    dns_zone.publish(domain, "TXT", "v=spf1 ip4:192.0.2.0/24 ~all")
    auth = await check(message(domain), resolver, f"bounce@{domain}", client_ip=OTHER_IP)
    assert auth.spf == "softfail"


async def test_spf_is_none_without_a_record(dns_zone: Zone, resolver: SenderResolver) -> None:
    domain = new_domain()
    dns_zone.publish(domain, "TXT", "google-site-verification=not-spf")
    auth = await check(message(domain), resolver, f"bounce@{domain}")
    assert auth.spf == "none"


async def test_spf_is_permerror_for_a_malformed_record(
    dns_zone: Zone, resolver: SenderResolver
) -> None:
    domain = new_domain()
    dns_zone.publish(domain, "TXT", "v=spf1 ip4:192.0.2.0/24 frobnicate -all")
    auth = await check(message(domain), resolver, f"bounce@{domain}")
    assert auth.spf == "permerror"


async def test_spf_follows_include_a_and_mx_through_our_resolver(
    dns_zone: Zone, resolver: SenderResolver
) -> None:
    domain, provider = new_domain(), new_domain()
    dns_zone.publish(domain, "TXT", f"v=spf1 a:relay.{domain} mx include:_spf.{provider} -all")
    dns_zone.publish(f"relay.{domain}", "A", "203.0.113.1")
    dns_zone.publish(domain, "MX", f"10 mx.{domain}")
    dns_zone.publish(f"mx.{domain}", "A", "203.0.113.2")
    dns_zone.publish(f"_spf.{provider}", "TXT", "v=spf1 ip4:192.0.2.10 -all")

    via_include = await check(message(domain), resolver, f"bounce@{domain}")
    via_mx = await check(message(domain), resolver, f"bounce@{domain}", client_ip="203.0.113.2")
    via_a = await check(message(domain), resolver, f"bounce@{domain}", client_ip="203.0.113.1")
    nowhere = await check(message(domain), resolver, f"bounce@{domain}", client_ip=OTHER_IP)

    assert (via_include.spf, via_mx.spf, via_a.spf, nowhere.spf) == ("pass",) * 3 + ("fail",)


async def test_spf_of_the_null_sender_checks_the_helo_name(
    dns_zone: Zone, resolver: SenderResolver
) -> None:
    helo = f"mta.{new_domain()}"
    dns_zone.publish(helo, "TXT", "v=spf1 ip4:192.0.2.10 -all")

    bounce = await check(message(new_domain()), resolver, "<>", helo=helo)
    forged = await check(message(new_domain()), resolver, "", helo=helo, client_ip=OTHER_IP)

    assert (bounce.spf, forged.spf) == ("pass", "fail")


async def test_spf_of_a_malformed_client_address_is_permerror_not_an_exception(
    dns_zone: Zone, resolver: SenderResolver
) -> None:
    domain = new_domain()
    dns_zone.publish(domain, "TXT", "v=spf1 ip4:192.0.2.0/24 -all")
    auth = await check(message(domain), resolver, f"bounce@{domain}", client_ip="not-an-ip")
    assert auth.spf == "permerror"


# --- DKIM -----------------------------------------------------------------------------


async def test_dkim_passes_a_signature_made_with_the_published_key(
    dns_zone: Zone, resolver: SenderResolver, rsa_key: tuple[bytes, str]
) -> None:
    domain = new_domain()
    auth = await check(signed(message(domain), domain, rsa_key, dns_zone), resolver, "")
    assert auth.dkim == "pass"
    assert passed(auth)


async def test_dkim_fails_after_the_body_is_tampered_with(
    dns_zone: Zone, resolver: SenderResolver, rsa_key: tuple[bytes, str]
) -> None:
    domain = new_domain()
    raw = signed(message(domain, b"Pay invoice 1001.\r\n"), domain, rsa_key, dns_zone)
    tampered = raw.replace(b"invoice 1001", b"invoice 6666")
    auth = await check(tampered, resolver, "")
    assert auth.dkim == "fail"
    assert not passed(auth)


async def test_dkim_fails_a_signature_made_with_another_key(
    dns_zone: Zone, resolver: SenderResolver, rsa_key: tuple[bytes, str]
) -> None:
    domain = new_domain()
    raw = signed(message(domain), domain, rsa_key, dns_zone)
    other = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    der = other.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    dns_zone.clear(f"s1._domainkey.{domain}", "TXT")
    dns_zone.publish(f"s1._domainkey.{domain}", "TXT", f"p={base64.b64encode(der).decode()}")
    auth = await check(raw, resolver, "")
    assert auth.dkim == "fail"


async def test_dkim_is_none_for_an_unsigned_message(
    dns_zone: Zone, resolver: SenderResolver
) -> None:
    domain = new_domain()
    auth = await check(message(domain), resolver, "")
    assert auth.dkim == "none"


async def test_dkim_is_permerror_when_no_key_is_published(
    dns_zone: Zone, resolver: SenderResolver, rsa_key: tuple[bytes, str]
) -> None:
    domain = new_domain()
    raw = signed(message(domain), domain, rsa_key, dns_zone, selector="gone")
    dns_zone.clear(f"gone._domainkey.{domain}", "TXT")
    auth = await check(raw, resolver, "")
    assert auth.dkim == "permerror"


async def test_dkim_passes_when_any_of_several_signatures_is_valid(
    dns_zone: Zone, resolver: SenderResolver, rsa_key: tuple[bytes, str]
) -> None:
    domain, relay = new_domain(), new_domain()
    raw = signed(message(domain), domain, rsa_key, dns_zone)
    # A second, outer signature whose key was withdrawn: only the first verifies.
    raw = signed(raw, relay, rsa_key, dns_zone, selector="old")
    dns_zone.clear(f"old._domainkey.{relay}", "TXT")
    auth = await check(raw, resolver, "")
    assert auth.dkim == "pass"


# --- DMARC ----------------------------------------------------------------------------


async def test_dmarc_passes_an_aligned_dkim_signature_although_spf_fails(
    dns_zone: Zone, resolver: SenderResolver, rsa_key: tuple[bytes, str]
) -> None:
    domain = new_domain()
    dns_zone.publish(domain, "TXT", "v=spf1 -all")
    dns_zone.publish(f"_dmarc.{domain}", "TXT", "v=DMARC1; p=reject")
    raw = signed(message(domain), f"mail.{domain}", rsa_key, dns_zone)  # relaxed: same org
    auth = await check(raw, resolver, f"bounce@{domain}")
    assert auth == Authentication(spf="fail", dkim="pass", dmarc="pass")


async def test_dmarc_passes_an_aligned_spf_domain_of_an_unsigned_message(
    dns_zone: Zone, resolver: SenderResolver
) -> None:
    domain = new_domain()
    dns_zone.publish(f"bounces.{domain}", "TXT", "v=spf1 ip4:192.0.2.10 -all")
    dns_zone.publish(f"_dmarc.{domain}", "TXT", "v=DMARC1; p=quarantine")
    auth = await check(message(domain), resolver, f"b-123@bounces.{domain}")
    assert auth == Authentication(spf="pass", dkim="none", dmarc="pass")


async def test_dmarc_fails_with_p_reject_when_only_unaligned_checks_pass(
    dns_zone: Zone, resolver: SenderResolver, rsa_key: tuple[bytes, str]
) -> None:
    domain, impostor = new_domain(), new_domain()
    dns_zone.publish(f"_dmarc.{domain}", "TXT", "v=DMARC1; p=reject; rua=mailto:d@example.org")
    dns_zone.publish(impostor, "TXT", "v=spf1 ip4:192.0.2.10 -all")
    raw = signed(message(domain), impostor, rsa_key, dns_zone)
    auth = await check(raw, resolver, f"bounce@{impostor}")
    assert auth == Authentication(spf="pass", dkim="pass", dmarc="fail")


async def test_dmarc_strict_dkim_alignment_needs_the_exact_from_domain(
    dns_zone: Zone, resolver: SenderResolver, rsa_key: tuple[bytes, str]
) -> None:
    domain = new_domain()
    dns_zone.publish(f"_dmarc.{domain}", "TXT", "v=DMARC1; p=none; adkim=s")
    exact = signed(message(domain), domain, rsa_key, dns_zone)
    parent_only = signed(message(f"news.{domain}"), domain, rsa_key, dns_zone)

    assert (await check(exact, resolver, "")).dmarc == "pass"
    assert (await check(parent_only, resolver, "")).dmarc == "fail"


async def test_dmarc_of_a_subdomain_uses_the_organizational_domains_record(
    dns_zone: Zone, resolver: SenderResolver
) -> None:
    domain = new_domain()
    dns_zone.publish(f"_dmarc.{domain}", "TXT", "v=DMARC1; p=reject; sp=none")
    auth = await check(message(f"news.{domain}"), resolver, f"bounce@news.{domain}")
    assert (auth.spf, auth.dkim, auth.dmarc) == ("none", "none", "fail")


async def test_dmarc_is_none_without_a_record(
    dns_zone: Zone, resolver: SenderResolver, rsa_key: tuple[bytes, str]
) -> None:
    domain = new_domain()
    raw = signed(message(domain), domain, rsa_key, dns_zone)
    auth = await check(raw, resolver, "")
    assert (auth.dkim, auth.dmarc) == ("pass", "none")


async def test_dmarc_is_permerror_for_a_record_without_a_valid_policy(
    dns_zone: Zone, resolver: SenderResolver
) -> None:
    domain = new_domain()
    dns_zone.publish(f"_dmarc.{domain}", "TXT", "v=DMARC1; p=maybe")
    auth = await check(message(domain), resolver, "")
    assert auth.dmarc == "permerror"


def test_organizational_domain_follows_the_public_suffix_list() -> None:
    assert organizational_domain("mail.example.co.uk") == "example.co.uk"
    assert organizational_domain("a.b.example.com") == "example.com"
    assert organizational_domain("x.y.unlisted-tld") == "y.unlisted-tld"


# --- DNS failures, bounds, cache ------------------------------------------------------


async def test_every_check_is_temperror_when_the_nameserver_does_not_answer(
    dns_zone: Zone, rsa_key: tuple[bytes, str]
) -> None:
    domain = new_domain()
    raw = signed(message(domain), domain, rsa_key, dns_zone)
    silent = SenderResolver(f"127.0.0.1:{free_port()}", 0.3)
    auth = await check(raw, silent, f"bounce@{domain}")
    assert auth == Authentication(spf="temperror", dkim="temperror", dmarc="temperror")
    assert not passed(auth)


async def test_the_overall_timeout_bounds_a_check_whose_lookups_would_wait_longer(
    dns_zone: Zone, rsa_key: tuple[bytes, str]
) -> None:
    domain = new_domain()
    raw = signed(message(domain), domain, rsa_key, dns_zone)
    slow = SenderResolver(f"127.0.0.1:{free_port()}", 30.0)
    async with asyncio.timeout(10):  # a hang guard, not a measurement
        auth = await authenticate(raw, CLIENT_IP, "mta.test", f"b@{domain}", slow, time_limit=0.2)
    assert auth == Authentication(spf="temperror", dkim="temperror", dmarc="temperror")


async def test_a_failed_lookup_is_remembered_briefly() -> None:
    silent = SenderResolver(f"127.0.0.1:{free_port()}", 0.2, failure_ttl=60)
    for _ in range(3):
        with pytest.raises(DnsTemporaryError):
            await silent.txt("down.test")
    assert silent.lookups == 1


async def test_a_burst_from_one_domain_costs_one_lookup_per_record(
    dns_zone: Zone, resolver: SenderResolver, rsa_key: tuple[bytes, str]
) -> None:
    domain = new_domain()
    dns_zone.publish(domain, "TXT", "v=spf1 ip4:192.0.2.0/24 -all")
    dns_zone.publish(f"_dmarc.{domain}", "TXT", "v=DMARC1; p=reject")
    raw = signed(message(domain), domain, rsa_key, dns_zone)

    results = await asyncio.gather(*(check(raw, resolver, f"b@{domain}") for _ in range(20)))

    assert set(results) == {Authentication(spf="pass", dkim="pass", dmarc="pass")}
    assert resolver.lookups == 3  # SPF TXT, _dmarc TXT, DKIM key TXT


async def test_a_message_whose_header_does_not_parse_gets_results_not_an_exception(
    dns_zone: Zone, resolver: SenderResolver
) -> None:
    domain = new_domain()
    dns_zone.publish(domain, "TXT", "v=spf1 ip4:192.0.2.0/24 -all")
    raw = b"From: a@" + domain.encode() + b"\r\n\x00not a header line\r\n\r\nbody"
    auth = await check(raw, resolver, f"bounce@{domain}")
    assert auth == Authentication(spf="pass", dkim="permerror", dmarc="permerror")
