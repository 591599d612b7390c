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


def spf_domain(zone: Zone, record: str) -> str:
    """Returns a new domain publishing the SPF ``record``."""
    domain = new_domain()
    zone.publish(domain, "TXT", record)
    return domain


async def test_spf_passes_a_client_in_an_ip4_mechanism_and_no_other(
    dns_zone: Zone, resolver: SenderResolver
) -> None:
    domain = spf_domain(dns_zone, "v=spf1 ip4:192.0.2.0/24 -all")

    inside = await check(message(domain), resolver, f"bounce@{domain}")
    outside = await check(message(domain), resolver, f"bounce@{domain}", client_ip=OTHER_IP)

    assert (inside.spf, outside.spf) == ("pass", "fail")
    assert passed(inside)
    assert not passed(outside)


async def test_spf_of_a_client_outside_the_record_follows_the_all_qualifier(
    dns_zone: Zone, resolver: SenderResolver
) -> None:
    results = []
    for qualifier in "-~?":
        domain = spf_domain(dns_zone, f"v=spf1 ip4:192.0.2.0/24 {qualifier}all")
        auth = await check(message(domain), resolver, f"bounce@{domain}", client_ip=OTHER_IP)
        results.append(auth.spf)
    assert results == ["fail", "softfail", "neutral"]


async def test_spf_is_none_without_a_record(dns_zone: Zone, resolver: SenderResolver) -> None:
    without = spf_domain(dns_zone, "google-site-verification=not-spf")
    with_record = spf_domain(dns_zone, "v=spf1 ip4:192.0.2.10 -all")

    none = await check(message(without), resolver, f"bounce@{without}")
    authorized = await check(message(with_record), resolver, f"bounce@{with_record}")

    assert (none.spf, authorized.spf) == ("none", "pass")


async def test_spf_is_permerror_for_a_malformed_record(
    dns_zone: Zone, resolver: SenderResolver
) -> None:
    malformed = spf_domain(dns_zone, "v=spf1 ip4:192.0.2.0/24 frobnicate -all")
    wellformed = spf_domain(dns_zone, "v=spf1 ip4:192.0.2.0/24 -all")

    bad = await check(message(malformed), resolver, f"bounce@{malformed}")
    good = await check(message(wellformed), resolver, f"bounce@{wellformed}")

    assert (bad.spf, good.spf) == ("permerror", "pass")


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
    domain = spf_domain(dns_zone, "v=spf1 ip4:192.0.2.0/24 -all")

    malformed = await check(message(domain), resolver, f"bounce@{domain}", client_ip="not-an-ip")
    wellformed = await check(message(domain), resolver, f"bounce@{domain}")

    assert (malformed.spf, wellformed.spf) == ("permerror", "pass")


# --- DKIM -----------------------------------------------------------------------------


async def test_dkim_passes_a_signature_made_with_the_published_key(
    dns_zone: Zone, resolver: SenderResolver, rsa_key: tuple[bytes, str]
) -> None:
    domain = new_domain()
    raw = signed(message(domain), domain, rsa_key, dns_zone)
    retitled = raw.replace(b"Subject: Quarterly numbers", b"Subject: Urgent wire transfer")

    auth = await check(raw, resolver, "")
    forged = await check(retitled, resolver, "")

    assert (auth.dkim, forged.dkim) == ("pass", "fail")  # Subject is a signed header
    assert passed(auth)


async def test_dkim_fails_after_the_body_is_tampered_with(
    dns_zone: Zone, resolver: SenderResolver, rsa_key: tuple[bytes, str]
) -> None:
    domain = new_domain()
    raw = signed(message(domain, b"Pay invoice 1001.\r\n"), domain, rsa_key, dns_zone)
    tampered = raw.replace(b"invoice 1001", b"invoice 6666")

    original = await check(raw, resolver, "")
    auth = await check(tampered, resolver, "")

    assert (original.dkim, auth.dkim) == ("pass", "fail")
    assert not passed(auth)


async def test_dkim_fails_a_signature_the_published_key_did_not_make(
    dns_zone: Zone, resolver: SenderResolver, rsa_key: tuple[bytes, str]
) -> None:
    domain = new_domain()
    raw = message(domain)
    right = signed(raw, domain, rsa_key, dns_zone, selector="right")
    wrong = signed(raw, domain, rsa_key, dns_zone, selector="wrong")
    other = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    der = other.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    dns_zone.clear(f"wrong._domainkey.{domain}", "TXT")
    dns_zone.publish(f"wrong._domainkey.{domain}", "TXT", f"p={base64.b64encode(der).decode()}")

    assert (await check(right, resolver, "")).dkim == "pass"
    assert (await check(wrong, resolver, "")).dkim == "fail"


async def test_dkim_is_none_for_an_unsigned_message(
    dns_zone: Zone, resolver: SenderResolver, rsa_key: tuple[bytes, str]
) -> None:
    domain = new_domain()
    unsigned = await check(message(domain), resolver, "")
    signed_copy = await check(signed(message(domain), domain, rsa_key, dns_zone), resolver, "")
    assert (unsigned.dkim, signed_copy.dkim) == ("none", "pass")


async def test_dkim_is_permerror_when_no_key_is_published(
    dns_zone: Zone, resolver: SenderResolver, rsa_key: tuple[bytes, str]
) -> None:
    domain = new_domain()
    kept = signed(message(domain), domain, rsa_key, dns_zone, selector="kept")
    gone = signed(message(domain), domain, rsa_key, dns_zone, selector="gone")
    dns_zone.clear(f"gone._domainkey.{domain}", "TXT")

    assert (await check(kept, resolver, "")).dkim == "pass"
    assert (await check(gone, resolver, "")).dkim == "permerror"


async def test_dkim_passes_when_any_of_several_signatures_is_valid(
    dns_zone: Zone, resolver: SenderResolver, rsa_key: tuple[bytes, str]
) -> None:
    domain, relay = new_domain(), new_domain()
    # An outer signature whose key was withdrawn over one that verifies.
    raw = signed(message(domain), domain, rsa_key, dns_zone)
    both = signed(raw, relay, rsa_key, dns_zone, selector="old")
    only_withdrawn = signed(message(domain), relay, rsa_key, dns_zone, selector="old")
    dns_zone.clear(f"old._domainkey.{relay}", "TXT")

    assert (await check(both, resolver, "")).dkim == "pass"
    assert (await check(only_withdrawn, resolver, "")).dkim == "permerror"


# --- DMARC ----------------------------------------------------------------------------


async def test_dmarc_passes_an_aligned_dkim_signature_although_spf_fails(
    dns_zone: Zone, resolver: SenderResolver, rsa_key: tuple[bytes, str]
) -> None:
    domain = spf_domain(dns_zone, "v=spf1 -all")
    dns_zone.publish(f"_dmarc.{domain}", "TXT", "v=DMARC1; p=reject")
    raw = signed(message(domain), f"mail.{domain}", rsa_key, dns_zone)  # relaxed: same org

    aligned = await check(raw, resolver, f"bounce@{domain}")
    unsigned = await check(message(domain), resolver, f"bounce@{domain}")

    assert aligned == Authentication(spf="fail", dkim="pass", dmarc="pass")
    assert unsigned == Authentication(spf="fail", dkim="none", dmarc="fail")


async def test_dmarc_passes_an_aligned_spf_domain_of_an_unsigned_message(
    dns_zone: Zone, resolver: SenderResolver
) -> None:
    domain = new_domain()
    dns_zone.publish(f"bounces.{domain}", "TXT", "v=spf1 ip4:192.0.2.10 -all")
    dns_zone.publish(f"_dmarc.{domain}", "TXT", "v=DMARC1; p=quarantine")

    authorized = await check(message(domain), resolver, f"b-123@bounces.{domain}")
    elsewhere = await check(
        message(domain), resolver, f"b-123@bounces.{domain}", client_ip=OTHER_IP
    )

    assert authorized == Authentication(spf="pass", dkim="none", dmarc="pass")
    assert elsewhere == Authentication(spf="fail", dkim="none", dmarc="fail")


async def test_dmarc_fails_with_p_reject_when_only_unaligned_checks_pass(
    dns_zone: Zone, resolver: SenderResolver, rsa_key: tuple[bytes, str]
) -> None:
    domain = new_domain()
    impostor = spf_domain(dns_zone, "v=spf1 ip4:192.0.2.10 -all")
    dns_zone.publish(f"_dmarc.{domain}", "TXT", "v=DMARC1; p=reject; rua=mailto:d@example.org")

    unaligned = signed(message(domain), impostor, rsa_key, dns_zone)
    own = signed(message(domain), domain, rsa_key, dns_zone)

    assert await check(unaligned, resolver, f"bounce@{impostor}") == Authentication(
        spf="pass", dkim="pass", dmarc="fail"
    )
    assert (await check(own, resolver, f"bounce@{impostor}")).dmarc == "pass"


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
    domain, unpublished = new_domain(), new_domain()
    dns_zone.publish(f"_dmarc.{domain}", "TXT", "v=DMARC1; p=reject; sp=none")

    sub = await check(message(f"news.{domain}"), resolver, f"bounce@news.{domain}")
    other = await check(message(f"news.{unpublished}"), resolver, f"bounce@news.{unpublished}")

    assert (sub.dmarc, other.dmarc) == ("fail", "none")


async def test_dmarc_is_none_without_a_record(
    dns_zone: Zone, resolver: SenderResolver, rsa_key: tuple[bytes, str]
) -> None:
    without, with_record = new_domain(), new_domain()
    dns_zone.publish(f"_dmarc.{with_record}", "TXT", "v=DMARC1; p=none")

    none = await check(signed(message(without), without, rsa_key, dns_zone), resolver, "")
    aligned = await check(
        signed(message(with_record), with_record, rsa_key, dns_zone), resolver, ""
    )

    assert (none.dkim, none.dmarc) == ("pass", "none")
    assert (aligned.dkim, aligned.dmarc) == ("pass", "pass")


async def test_dmarc_is_permerror_for_a_record_without_a_valid_policy(
    dns_zone: Zone, resolver: SenderResolver
) -> None:
    malformed, wellformed = new_domain(), new_domain()
    dns_zone.publish(f"_dmarc.{malformed}", "TXT", "v=DMARC1; p=maybe")
    dns_zone.publish(f"_dmarc.{wellformed}", "TXT", "v=DMARC1; p=reject")

    bad = await check(message(malformed), resolver, "")
    good = await check(message(wellformed), resolver, "")

    assert (bad.dmarc, good.dmarc) == ("permerror", "fail")


def test_organizational_domain_follows_the_public_suffix_list() -> None:
    assert organizational_domain("mail.example.co.uk") == "example.co.uk"
    assert organizational_domain("a.b.example.com") == "example.com"
    assert organizational_domain("x.y.unlisted-tld") == "y.unlisted-tld"


# --- DNS failures, bounds, cache ------------------------------------------------------


async def test_every_check_is_temperror_when_the_nameserver_does_not_answer(
    dns_zone: Zone, resolver: SenderResolver, rsa_key: tuple[bytes, str]
) -> None:
    domain = spf_domain(dns_zone, "v=spf1 ip4:192.0.2.10 -all")
    dns_zone.publish(f"_dmarc.{domain}", "TXT", "v=DMARC1; p=reject")
    raw = signed(message(domain), domain, rsa_key, dns_zone)
    silent = SenderResolver(f"127.0.0.1:{free_port()}", 0.3)

    unanswered = await check(raw, silent, f"bounce@{domain}")
    answered = await check(raw, resolver, f"bounce@{domain}")

    assert unanswered == Authentication(spf="temperror", dkim="temperror", dmarc="temperror")
    assert not passed(unanswered)
    assert answered == Authentication(spf="pass", dkim="pass", dmarc="pass")


async def test_the_time_limit_bounds_a_check_whose_lookups_would_wait_longer(
    dns_zone: Zone, resolver: SenderResolver, rsa_key: tuple[bytes, str]
) -> None:
    domain = spf_domain(dns_zone, "v=spf1 ip4:192.0.2.10 -all")
    raw = signed(message(domain), domain, rsa_key, dns_zone)
    slow = SenderResolver(f"127.0.0.1:{free_port()}", 30.0)

    async with asyncio.timeout(10):  # a hang guard, not a measurement
        cut = await authenticate(raw, CLIENT_IP, "mta.test", f"b@{domain}", slow, time_limit=0.2)
    answered = await authenticate(raw, CLIENT_IP, "mta.test", f"b@{domain}", resolver)

    assert cut == Authentication(spf="temperror", dkim="temperror", dmarc="temperror")
    assert answered == Authentication(spf="pass", dkim="pass", dmarc="none")


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
    domain = spf_domain(dns_zone, "v=spf1 ip4:192.0.2.0/24 -all")
    broken = b"From: a@" + domain.encode() + b"\r\n\x00not a header line\r\n\r\nbody"

    auth = await check(broken, resolver, f"bounce@{domain}")
    intact = await check(message(domain), resolver, f"bounce@{domain}")

    assert auth == Authentication(spf="pass", dkim="permerror", dmarc="permerror")
    assert intact == Authentication(spf="pass", dkim="none", dmarc="none")
