"""The DNS records a custom domain publishes, its DKIM key, and how an observed
DNS answer is judged.

Records (DESIGN §4 Domains): MX at the domain → ``MAILPLANE_MAIL_HOST``
(receiving); SPF TXT at the domain with ``include:<MAILPLANE_SPF_INCLUDE>``
(sending); DKIM TXT at ``mailplane._domainkey.<domain>`` with a fresh RSA-2048
public key (RFC 6376 §3.6.1); DMARC TXT at ``_dmarc.<domain>`` (RFC 7489,
recommended, not required). A domain is verified when MX, SPF and DKIM are valid;
it can send with SPF and DKIM, receive with MX and DKIM.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

import idna
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from services.chassis.errors import invalid_argument
from services.domains.models import DnsRecord, RecordStatus

DKIM_SELECTOR = "mailplane"
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
MAX_NAME_LENGTH = 253


def normalize_name(raw: str, shared_domain: str) -> str:
    """Returns a domain name in lower-case IDNA (punycode) form.

    Raises:
        MailplaneError: ``invalid_argument`` naming ``domain`` when it is not a
            real hostname of at least two labels under 254 characters, ends in a
            dot, or is the platform's shared domain (or under it).
    """
    name = raw.strip()
    if not name:
        raise invalid_argument("domain", "is required, e.g. `mail.example.com`.")
    if name.endswith("."):
        raise invalid_argument("domain", f"{raw!r} ends with a dot; send it without the dot.")
    try:
        ascii_name = idna.encode(name, uts46=True).decode("ascii").lower()
    except idna.IDNAError:
        raise invalid_argument(
            "domain", f"{raw!r} is not a valid domain name; use a hostname like `example.com`."
        ) from None
    labels = ascii_name.split(".")
    if (
        len(ascii_name) > MAX_NAME_LENGTH
        or len(labels) < 2
        or not all(_LABEL.fullmatch(label) for label in labels)
        or labels[-1].isdigit()
    ):
        raise invalid_argument(
            "domain",
            f"{raw!r} is not a valid domain name: it needs two or more labels of letters, "
            "digits and inner hyphens, at most 253 characters in all.",
        )
    if ascii_name == shared_domain or ascii_name.endswith("." + shared_domain):
        raise invalid_argument(
            "domain", f"{ascii_name} is the platform's shared domain; add a domain you own."
        )
    return ascii_name


@dataclass(frozen=True)
class DkimKey:
    """A DKIM key pair: the TXT value to publish and the encrypted private key."""

    public_txt: str
    private_encrypted: bytes


def new_dkim_key(cipher: Fernet) -> DkimKey:
    """Generates an RSA-2048 key pair (CPU-bound: ~0.1 s; run it in a thread).

    Returns:
        The ``v=DKIM1; k=rsa; p=…`` value and the PKCS#8 PEM private key
        encrypted with ``cipher``; the plain private key is never kept.
    """
    private_pem = new_dkim_private_pem()
    return DkimKey(
        public_txt=dkim_txt(load_dkim_private_key(private_pem).public_key()),
        private_encrypted=cipher.encrypt(private_pem),
    )


def new_dkim_private_pem() -> bytes:
    """Generates an RSA-2048 private key (CPU-bound: ~0.1 s) as PKCS#8 PEM."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_dkim_private_key(pem: bytes | str) -> rsa.RSAPrivateKey:
    """Loads an unencrypted RSA private key from PEM (PKCS#8 or PKCS#1).

    Args:
        pem: the PEM text; in a ``str``, newlines may be written ``\\n``, as an
            environment variable holds them on one line.

    Raises:
        ValueError: not an unencrypted RSA private key in PEM (the message never
            quotes the key).
    """
    data = pem.replace("\\n", "\n").strip().encode() if isinstance(pem, str) else pem
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise ValueError("not an unencrypted PEM private key") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("not an RSA private key (DKIM here signs rsa-sha256)")
    return key


def dkim_txt(public_key: rsa.RSAPublicKey) -> str:
    """Returns the DKIM key record's value for ``public_key``: ``v=DKIM1; k=rsa;
    p=<base64 SubjectPublicKeyInfo DER>`` (RFC 6376 §3.6.1)."""
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"


def dkim_record_name(domain: str, selector: str = DKIM_SELECTOR) -> str:
    """Returns where a domain's DKIM key record lives: ``<selector>._domainkey.<domain>``
    (RFC 6376 §3.6.2.1)."""
    return f"{selector}._domainkey.{domain}"


@dataclass(frozen=True)
class MailTargets:
    """Where published records point (from settings)."""

    mail_host: str
    mx_priority: int
    spf_include: str


def expected_records(name: str, dkim_value: str, targets: MailTargets) -> tuple[DnsRecord, ...]:
    """Returns the four records to publish for ``name``, all ``missing``."""
    return (
        DnsRecord("MX", name, f"{targets.mx_priority} {targets.mail_host}", "receiving"),
        DnsRecord("TXT", name, f"v=spf1 include:{targets.spf_include} ~all", "sending"),
        DnsRecord("TXT", dkim_record_name(name), dkim_value, "dkim"),
        DnsRecord("TXT", f"_dmarc.{name}", "v=DMARC1; p=none", "dmarc"),
    )


def _squash(text: str) -> str:
    return re.sub(r"\s+", "", text)


def _judge(record: DnsRecord, answers: Sequence[str], targets: MailTargets) -> RecordStatus:
    if record.purpose == "receiving":
        hosts = [a.split()[-1].rstrip(".").lower() for a in answers if a.split()]
        return "valid" if targets.mail_host.lower() in hosts else "invalid"
    if record.purpose == "sending":
        spf = [a for a in answers if a.lower().startswith("v=spf1")]
        if not spf:
            return "missing"
        # RFC 7208 §4.5: more than one SPF record is a permanent error.
        ok = len(spf) == 1 and f"include:{targets.spf_include}" in spf[0].lower().split()
        return "valid" if ok else "invalid"
    if record.purpose == "dkim":
        return "valid" if any(_squash(a) == _squash(record.value) for a in answers) else "invalid"
    dmarc = [a for a in answers if a.upper().startswith("V=DMARC1")]
    return "valid" if dmarc else ("invalid" if answers else "missing")


def judge(
    records: Sequence[DnsRecord], answers: Sequence[Sequence[str] | None], targets: MailTargets
) -> tuple[DnsRecord, ...]:
    """Returns ``records`` with status and observed value from DNS ``answers``.

    Args:
        records: the expected records.
        answers: per record, the strings DNS returned at its name and type
            (``None`` or empty: nothing there).
    """
    judged = []
    for record, found in zip(records, answers, strict=True):
        if not found:
            judged.append(replace(record, status="missing", observed=None))
            continue
        status = _judge(record, found, targets)
        judged.append(replace(record, status=status, observed=" | ".join(found)))
    return tuple(judged)


def capabilities(records: Sequence[DnsRecord]) -> tuple[bool, bool, bool]:
    """Returns ``(verified, can_send, can_receive)`` of judged records."""
    valid = {r.purpose for r in records if r.status == "valid"}
    can_send = {"sending", "dkim"} <= valid
    can_receive = {"receiving", "dkim"} <= valid
    return can_send and can_receive, can_send, can_receive
