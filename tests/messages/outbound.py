"""What the delivery tests and the delivery benchmark share: a loopback MX sink
(aiosmtpd, STARTTLS offered, replies the test scripts), a DKIM signer made with
dkimpy and a fresh RSA key whose public half is published in the loopback DNS
zone, and queueing an outbound message the way the send API does
(``MailStore.store_outbound``)."""

from __future__ import annotations

import asyncio
import base64
import datetime
import ssl
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Any

import asyncpg
import dkim
import dns.resolver
from aiosmtpd.smtp import SMTP, Envelope, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.x509.oid import NameOID

from services.chassis.errors import MailplaneError
from services.messages import mime
from services.messages.models import Message, Owner
from services.messages.store import MailStore, Outbound
from tests.conftest import Zone, free_port

SHARED = "mailplane.test"


@dataclass
class Received:
    """One message the sink accepted."""

    mail_from: str
    rcpt_tos: list[str]
    content: bytes
    tls: bool
    at: float

    @property
    def message_id(self) -> str:
        """The message's Message-ID header."""
        return mime.parse(self.content).message_id


@dataclass
class Sink:
    """A loopback MX. ``rcpt_replies[address]`` and ``data_replies[address]`` are
    queues of replies the next RCPT of that address, or the next DATA of a
    transaction whose first recipient it is, answer with (``250`` once empty).
    Keyed by address, so mail other tests left queued cannot take them."""

    port: int
    received: list[Received] = field(default_factory=list)
    rcpt_replies: dict[str, list[str]] = field(default_factory=dict)
    data_replies: dict[str, list[str]] = field(default_factory=dict)
    sessions: int = 0

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        queued = self.rcpt_replies.get(address.lower())
        if queued:
            return queued.pop(0)
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        queued = self.data_replies.get(envelope.rcpt_tos[0].lower()) if envelope.rcpt_tos else None
        if queued:
            return queued.pop(0)
        self.received.append(
            Received(
                envelope.mail_from or "",
                list(envelope.rcpt_tos),
                envelope.original_content or b"",
                session.ssl is not None,
                asyncio.get_running_loop().time(),
            )
        )
        return "250 2.0.0 Ok: queued"

    def of(self, rfc_message_id: str) -> list[Received]:
        """The copies of one message the sink accepted."""
        return [r for r in self.received if r.message_id == rfc_message_id]


def _tls_context() -> ssl.SSLContext:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sink.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    folder = Path(tempfile.mkdtemp())
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(folder / "cert.pem", folder / "key.pem")
    return context


async def start_sink(tls: bool = True) -> tuple[Sink, asyncio.AbstractServer]:
    """Starts a sink on a free loopback port (STARTTLS offered when ``tls``)."""
    sink = Sink(free_port())
    context = _tls_context() if tls else None

    def factory() -> SMTP:
        sink.sessions += 1
        return SMTP(sink, hostname="sink.test", tls_context=context, enable_SMTPUTF8=True)

    server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", sink.port)
    return sink, server


def publish_mx(zone: Zone, domain: str) -> None:
    """Points ``domain``'s MX at the loopback sink."""
    zone.publish(domain, "MX", f"10 mx.{domain}")
    zone.publish(f"mx.{domain}", "A", "127.0.0.1")


@dataclass
class LoopbackSigner:
    """A DKIM signer for the shared domain (RSA-SHA256, relaxed/simple), as the
    domains service signs: ``sign(account_id, domain, raw) → signed raw``.
    Any other domain is ``domain_not_sendable``. The RSA step runs on OpenSSL
    (``cryptography``), as the issue asks of the production signer."""

    selector: str
    private_pem: bytes
    #: ``(account_id, domain)`` of every signature asked for.
    calls: list[tuple[str, str]] = field(default_factory=list)

    async def sign(self, account_id: str, domain: str, raw: bytes) -> bytes:
        self.calls.append((account_id, domain))
        if domain != SHARED:
            raise MailplaneError(
                "domain_not_sendable", f"Domain {domain} cannot send; verify its SPF and DKIM."
            )
        header = dkim.sign(
            raw,
            self.selector.encode(),
            domain.encode(),
            self.private_pem,
            include_headers=[b"from", b"to", b"subject", b"date", b"message-id"],
        )
        return header + raw


def make_signer(zone: Zone) -> LoopbackSigner:
    """A signer with a fresh key whose public half is published at
    ``<selector>._domainkey.<shared domain>`` in the loopback zone."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    selector = f"s{uuid.uuid4().hex[:8]}"
    zone.publish(
        f"{selector}._domainkey.{SHARED}",
        "TXT",
        f"v=DKIM1; k=rsa; p={base64.b64encode(public).decode()}",
    )
    _use_openssl(key)
    return LoopbackSigner(selector, pem)


_KEYS: dict[int, rsa.RSAPrivateKey] = {}


def _use_openssl(key: rsa.RSAPrivateKey) -> None:
    """Makes dkimpy's RSA signing step use OpenSSL for keys made here (dkimpy's
    own is pure Python, about 110 signatures/s; research/mailflow.md §3)."""
    _KEYS[key.private_numbers().public_numbers.n] = key
    if getattr(dkim, "_openssl_signing", False):
        return
    pure = dkim.RSASSA_PKCS1_v1_5_sign

    def sign(digest: Any, private_key: dict[str, int]) -> bytes:
        fast = _KEYS.get(private_key["modulus"])
        if fast is None:
            return pure(digest, private_key)  # type: ignore[no-any-return]
        return fast.sign(digest.digest(), padding.PKCS1v15(), Prehashed(hashes.SHA256()))

    dkim.RSASSA_PKCS1_v1_5_sign = sign
    dkim._openssl_signing = True  # type: ignore[attr-defined]


def verify_dkim(raw: bytes, zone: Zone) -> bool:
    """Whether ``raw``'s DKIM signature verifies against the key published in
    the loopback DNS zone (dkimpy's verifier, asking the zone over DNS)."""
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = ["127.0.0.1"]
    resolver.port = zone.port

    def txt(name: bytes, timeout: int = 5) -> bytes:
        answer = resolver.resolve(name.decode().rstrip("."), "TXT")
        return b"".join(b"".join(r.strings) for r in answer)

    return bool(dkim.verify(raw, dnsfunc=txt))


def outbound_mail(
    sender: str, to: Sequence[str], subject: str = "Quote", body: str = "Hello.", size: int = 0
) -> bytes:
    """An outbound message as the send API builds it; ``size`` pads the body
    to about that many bytes."""
    mail = EmailMessage()
    mail["From"] = f"Scout <{sender}>"
    mail["To"] = ", ".join(to)
    mail["Subject"] = subject
    mail["Date"] = formatdate(localtime=False)
    mail["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2])
    text = body
    if size:
        line = "The quick brown fox jumps over the lazy dog, again and again.\n"
        text += "\n" + line * max(0, size // len(line))
    mail.set_content(text)
    return mail.as_bytes()


async def queue(
    pool: asyncpg.Pool,
    owner: Owner,
    sender: str,
    to: Sequence[str],
    *,
    return_path: str | None = None,
    size: int = 0,
    subject: str = "Quote",
    verp: bool = False,
    max_hours: int = 72,
) -> Message:
    """Queues an outbound message of ``owner`` as the send API does; the return
    path is ``sender`` unless given (``verp``: the VERP address of the message)."""
    from services.messages.delivery import return_path_of

    raw = outbound_mail(sender, to, subject=subject, size=size)
    async with pool.acquire() as conn, conn.transaction():
        message = await MailStore(pool).store_outbound(
            conn,
            owner,
            None,
            mime.parse(raw),
            raw,
            Outbound(
                recipients=to,
                return_path=sender if return_path is None else return_path,
                max_hours=max_hours,
            ),
        )
        await MailStore(pool).count_sent(conn, owner)
        if verp:
            await conn.execute(
                "UPDATE messages SET return_path = $2 WHERE id = $1",
                message.id,
                return_path_of(sender, message.id),
            )
    return message
