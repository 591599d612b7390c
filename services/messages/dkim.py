"""DKIM signing of outbound mail (DESIGN §7.5; RFC 6376): the header block is built
and hashed here, the RSA step is made by the domains service, which holds the keys
(``SignDkim``), so a private key never crosses the wire.

The signature is ``rsa-sha256`` with ``relaxed/relaxed`` canonicalization (RFC 6376
§3.4.2, §3.4.4), the signing domain ``d=`` the From domain, over the headers of
:data:`SIGNED_HEADERS` the message has, From always and once more than it appears
(RFC 6376 §5.4.2, §8.15: a From added later breaks the signature). Splitting,
canonicalization, folding and the header hash are dkimpy's own (``dkim.DKIM``,
``CanonicalizationPolicy``, ``dkim.hash_headers``, ``dkim.fold``), the same code its
``dkim.sign`` runs; only its pure-Python RSA (about 110 signatures/s) is replaced.

The selector ``s=`` is inside the hashed header, so it must be known before the
digest: the signer uses :data:`DEFAULT_SELECTOR` and, should the domains service
answer another selector, builds the block again with that one and remembers it
per domain.
"""

from __future__ import annotations

import base64
import hashlib
import time
from dataclasses import dataclass

import dkim
import grpc
from dkim.canonicalization import CanonicalizationPolicy
from mailplane.domains.v1 import domains_pb2, domains_pb2_grpc

from services.chassis.auth import INTERNAL_TOKEN_METADATA
from services.chassis.errors import MailplaneError
from services.chassis.rpc import call_peer

#: The header fields signed when present, lower case (RFC 6376 §5.4.1's list,
#: narrowed to what outbound mail carries); ``from`` is signed always.
SIGNED_HEADERS = (
    b"from",
    b"to",
    b"cc",
    b"subject",
    b"date",
    b"message-id",
    b"in-reply-to",
    b"references",
    b"reply-to",
    b"mime-version",
    b"content-type",
)
#: The selector the domains service signs with (its keys' ``<s>._domainkey`` name).
DEFAULT_SELECTOR = "mailplane"
HEADER_NAME = b"DKIM-Signature"
_CANONICALIZATION = b"relaxed/relaxed"
_POLICY = CanonicalizationPolicy.from_c_value(_CANONICALIZATION)
#: The ``b=`` placeholder: long enough that folding puts ``b=`` on a line of its
#: own, so the signature fills it in without moving the other tags (dkimpy's trick).
_PLACEHOLDER = b"0" * 60


@dataclass(frozen=True)
class HeaderBlock:
    """A DKIM-Signature waiting for its ``b=``.

    Attributes:
        tags: the tag-value pairs in order, ``b`` last with the placeholder.
        digest: SHA-256 (32 bytes) of the canonicalized signed headers followed by
            this header with ``b=`` empty (RFC 6376 §3.7).
        linesep: the message's line ending, which the header uses too.
    """

    tags: tuple[tuple[bytes, bytes], ...]
    digest: bytes
    linesep: bytes

    def header(self, signature: bytes) -> bytes:
        """Returns the whole ``DKIM-Signature: …`` field, folded, with its line ending.

        Args:
            signature: RSASSA-PKCS1-v1_5 over ``digest`` (256 bytes for RSA-2048).
        """
        tags = [*self.tags[:-1], (b"b", base64.b64encode(signature))]
        value = b"; ".join(b"=".join(tag) for tag in tags) + self.linesep
        return HEADER_NAME + b": " + dkim.fold(value, len(HEADER_NAME), self.linesep)


def header_block(raw: bytes, domain: str, selector: str, timestamp: int) -> HeaderBlock:
    """Builds the DKIM-Signature of ``raw`` without its signature (CPU only, mostly
    dkimpy's body canonicalization: about 0.25 ms for 4 KB; run on the event loop,
    as ``asyncio.to_thread`` measured slower, ``benchmarks/test_dkim_throughput.py``).

    Args:
        raw: the RFC 5322 message (CRLF or LF line endings).
        domain: the signing domain ``d=``, lower case.
        selector: the selector ``s=``.
        timestamp: the signature time ``t=``, Unix seconds.

    Returns:
        The tags and the digest the key holder signs.
    """
    message = dkim.DKIM(raw)
    present = [name.lower() for name, _ in message.headers]
    include = [b"from"] * (present.count(b"from") + 1)
    include += [name for name in SIGNED_HEADERS[1:] for _ in range(present.count(name))]
    body_hash = hashlib.sha256(_POLICY.canonicalize_body(message.body)).digest()
    tags = (
        (b"v", b"1"),
        (b"a", b"rsa-sha256"),
        (b"c", _CANONICALIZATION),
        (b"d", domain.encode("ascii")),
        (b"s", selector.encode("ascii")),
        (b"t", str(timestamp).encode("ascii")),
        (b"h", b" : ".join(include)),
        (b"bh", base64.b64encode(body_hash)),
        (b"b", _PLACEHOLDER),
    )
    value = dkim.fold(b"; ".join(b"=".join(tag) for tag in tags), len(HEADER_NAME))
    unsigned = (HEADER_NAME, b" " + dkim.RE_BTAG.sub(b"\\1", value))
    hasher = hashlib.sha256()
    dkim.hash_headers(
        hasher, _POLICY, _POLICY.canonicalize_headers(message.headers), include, unsigned, None
    )
    linesep = b"\r\n" if b"\r\n" in raw else b"\n"
    return HeaderBlock(tags, hasher.digest(), linesep)


class DkimSigner:
    """Signs outbound messages with their domain's key, through the domains service.

    Args:
        channel: the process's one channel to the domains service.
        deadline: seconds each signature may take.
        internal_token: the service credential (only it may have signatures made).
    """

    def __init__(self, channel: grpc.aio.Channel, deadline: float, internal_token: str):
        self._stub = domains_pb2_grpc.DomainServiceStub(channel)
        self._deadline = deadline
        self._operator = ((INTERNAL_TOKEN_METADATA, internal_token),)
        self._selectors: dict[str, str] = {}

    async def sign(self, account_id: str, domain: str, raw: bytes) -> bytes:
        """Returns ``raw`` with a ``DKIM-Signature:`` field prepended (RFC 6376 §5).

        Args:
            account_id: the sending account.
            domain: the signing domain (the From address's domain): the shared
                domain or a custom domain of the account.
            raw: the RFC 5322 message as it will be sent.

        Raises:
            MailplaneError: ``domain_not_sendable`` when the account has no such
                custom domain able to send; ``invalid_argument`` for a name that is
                not a domain; ``unavailable`` when the domains service is down or
                slower than the deadline.
        """
        domain = domain.strip().lower()
        timestamp = int(time.time())
        selector = self._selectors.get(domain, DEFAULT_SELECTOR)
        block = header_block(raw, domain, selector, timestamp)
        reply = await self._sign_digest(account_id, domain, block.digest)
        if reply.selector != selector:
            # The key holder signed with another key: redo the block with its selector.
            self._selectors[domain] = reply.selector
            block = header_block(raw, domain, reply.selector, timestamp)
            reply = await self._sign_digest(account_id, domain, block.digest)
            if reply.selector != self._selectors[domain]:
                raise MailplaneError(
                    "unavailable", f"The DKIM selector of {domain} is changing; retry."
                )
        return block.header(reply.signature) + raw

    async def _sign_digest(
        self, account_id: str, domain: str, digest: bytes
    ) -> domains_pb2.SignDkimResponse:
        reply: domains_pb2.SignDkimResponse = await call_peer(
            self._stub.SignDkim,
            domains_pb2.SignDkimRequest(account_id=account_id, domain=domain, digest=digest),
            deadline=self._deadline,
            metadata=self._operator,
        )
        return reply
