"""The SMTP edge: the MX listener of ``python -m services.messages smtp``
(DESIGN §7.1, §7.3), on aiosmtpd.

At RCPT the recipient is looked up in the address directory with one indexed
read (its exact address, its sub-address base ``local@`` of ``local+tag@``
(RFC 5233), and its domain's catch-all ``*@domain``, in that precedence):

- a live route → ``250``; a tombstone or no route on one of our domains →
  ``550 5.1.1``; a domain that is not ours → ``550 5.7.1`` (never an open relay);
- a pending route (its inbox or mailbox is being created) or a database that
  does not answer → ``451 4.3.0`` (try again later);
- a mailbox over its ``inboundRateLimit`` (messages accepted in the rolling
  hour, from a per-minute counter: one more indexed read, only for mailboxes
  with a limit) → ``451 4.7.1`` (DESIGN §7.3).

After DATA the message is committed to the spool, and only then answered
``250``; any failure before that is ``451`` (DESIGN §7.3: 250 means durable).
aiosmtpd enforces SIZE (``MAILPLANE_MAX_MESSAGE_BYTES``, 552 above it) and,
since 1.4.5, refuses bare line feeds (SMTP smuggling).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
from aiosmtpd.smtp import SMTP, Envelope, Session

from services.chassis import metrics
from services.chassis.addresses import domain_key
from services.chassis.logs import get_logger
from services.messages.models import Owner
from services.messages.store import MailStore, Recipient

_log = get_logger("mailplane.smtp")
#: Most recipients one message may have (RFC 5321 §4.5.3.1.8 requires ≥ 100).
MAX_RECIPIENTS = 100

UNKNOWN = "550 5.1.1 No such recipient here"
RELAY_DENIED = "550 5.7.1 Relaying denied: this server accepts mail only for its own domains"
TRY_LATER = "451 4.3.0 Temporary failure; try again later"
CREATING = "451 4.2.0 This address is being set up; try again later"
RATE_LIMITED = (
    "451 4.7.1 This mailbox is receiving mail at a rate that prevents additional messages"
    " from being delivered; try again later"
)
TOO_MANY = "452 4.5.3 Too many recipients"
BACKED_UP = "452 4.3.1 Too much mail is waiting to be filed; try again later"
#: Seconds between two reads of the spool's backlog.
BACKLOG_SECONDS = 0.5
BAD_ADDRESS = "501 5.1.3 Bad recipient address syntax"
DB_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)


@dataclass(frozen=True)
class Lookup:
    """The addresses one RCPT may route to, in precedence order."""

    exact: str
    base: str | None
    catch_all: str
    domain: str

    @property
    def candidates(self) -> list[str]:
        """Every address to read, exact first."""
        return [self.exact, *([self.base] if self.base else []), self.catch_all]


def lookup_of(address: str) -> Lookup | None:
    """Splits an RCPT address into its lookups (RFC 5233 sub-addressing), or
    ``None`` when it is not ``local@domain``."""
    local, sep, domain = address.strip().rpartition("@")
    if not sep or not local or not domain or len(address) > 320:
        return None
    domain = domain_key(domain)
    local = local.lower()
    base = local.split("+", 1)[0] if "+" in local else None
    return Lookup(
        exact=f"{local}@{domain}",
        base=f"{base}@{domain}" if base else None,
        catch_all=f"*@{domain}",
        domain=domain,
    )


def route_of(lookup: Lookup, rows: Sequence[Any], shared_domain: str) -> Owner | str:
    """Chooses the route of one RCPT from the directory rows read for it.

    Returns:
        The owner to deliver to, or the SMTP reply that refuses it.
    """
    by_address = {row["address"]: row for row in rows}
    for address in lookup.candidates:
        row = by_address.get(address)
        if row is None:
            continue
        if row["state"] == "tombstone":
            if address == lookup.catch_all:
                continue
            return UNKNOWN
        if row["state"] == "pending":
            return CREATING
        if lookup.domain != shared_domain and not row["domain_ok"]:
            return UNKNOWN  # a custom domain not (or no longer) verified by its account
        return Owner(row["owner_id"], row["account_id"], row["pod_id"])
    return ""  # no route: the caller tells unknown from relay


class Backlog:
    """Whether the spool holds more than ``high_water`` messages not yet ingested,
    read at most every ``BACKLOG_SECONDS`` with one bounded count, so the edge
    stops taking mail (``452 4.3.1``, RFC 5321 §4.5.3.1.10: senders retry later)
    instead of letting the spool grow without bound when the workers fall behind.

    Args:
        store: the mail store.
        high_water: spooled messages beyond which RCPT answers 452; 0 never.
    """

    def __init__(self, store: MailStore, high_water: int):
        self._store = store
        self._high_water = high_water
        self._full = False
        self._read_at = -BACKLOG_SECONDS

    async def full(self) -> bool:
        """Whether the spool is over its high-water mark (as last read)."""
        if self._high_water <= 0:
            return False
        now = asyncio.get_running_loop().time()
        if now - self._read_at >= BACKLOG_SECONDS:
            self._read_at = now
            self._full = await self._store.spooled_beyond(self._high_water)
        return self._full


class InboundHandler:
    """aiosmtpd handler of the MX listener.

    Args:
        store: the mail store (routes and spool).
        shared_domain: the platform's own domain (DESIGN §1).
        backlog: the spool's high-water check.
    """

    def __init__(self, store: MailStore, shared_domain: str, backlog: Backlog):
        self._store = store
        self._shared = shared_domain
        self._backlog = backlog

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        """Accepts or refuses one recipient (DESIGN §7.3)."""
        if len(envelope.rcpt_tos) >= MAX_RECIPIENTS:
            return TOO_MANY
        lookup = lookup_of(address)
        if lookup is None:
            return BAD_ADDRESS
        try:
            if await self._backlog.full():
                return BACKED_UP
            rows = await self._store.routes(lookup.candidates)
            choice = route_of(lookup, rows, self._shared)
            if choice == "":
                ours = lookup.domain == self._shared or await self._store.is_our_domain(
                    lookup.domain
                )
                choice = UNKNOWN if ours else RELAY_DENIED
        except DB_ERRORS:
            _log.warning("rcpt_lookup_failed", exc_info=True)
            return TRY_LATER
        if isinstance(choice, str):
            return choice
        owners: list[Recipient] = getattr(envelope, "owners", [])
        counted: list[str] = getattr(envelope, "counted", [])
        if all(r.owner.id != choice.id for r in owners):  # one copy per owner
            limit = next(
                (r["inbound_rate_limit"] for r in rows if r["owner_id"] == choice.id), None
            )
            if limit is not None:
                # inboundRateLimit (seed 004): messages per rolling hour, over it 451 4.7.1.
                try:
                    if await self._store.hourly_count(choice.id) >= limit:
                        return RATE_LIMITED
                except DB_ERRORS:
                    _log.warning("rcpt_count_failed", exc_info=True)
                    return TRY_LATER
                counted.append(choice.id)
            owners.append(Recipient(lookup.exact, choice))
        envelope.rcpt_tos.append(address)
        envelope.owners = owners  # type: ignore[attr-defined]
        envelope.counted = counted  # type: ignore[attr-defined]
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """Commits the message to the spool, then answers 250 (DESIGN §7.3)."""
        owners: list[Recipient] = getattr(envelope, "owners", [])
        raw = envelope.original_content or b""
        peer = session.peer[0] if isinstance(session.peer, tuple) else str(session.peer)
        try:
            spool_id = await self._store.spool(
                peer,
                session.host_name or "",
                envelope.mail_from or "",
                owners,
                raw,
                getattr(envelope, "counted", []),
            )
        except DB_ERRORS:
            _log.warning("spool_failed", exc_info=True)
            return TRY_LATER
        return f"250 2.0.0 OK queued as {spool_id}"


async def serve_inbound(
    store: MailStore,
    shared_domain: str,
    host: str,
    port: int,
    max_bytes: int,
    hostname: str,
    high_water: int = 0,
) -> asyncio.AbstractServer:
    """Starts the MX listener on ``host:port`` in the running loop; returns the server.

    Args:
        max_bytes: the largest message accepted (advertised with SIZE).
        hostname: the name the listener greets with.
        high_water: spooled messages beyond which RCPT answers 452 (0: never).
    """
    handler = metrics.CountedReplies(
        InboundHandler(store, shared_domain, Backlog(store, high_water)), "mx"
    )
    loop = asyncio.get_running_loop()

    def factory() -> SMTP:
        return SMTP(
            handler,
            data_size_limit=max_bytes,
            hostname=hostname,
            enable_SMTPUTF8=True,
            timeout=300,
        )

    server = await loop.create_server(factory, host, port)
    _log.info("smtp_listening", address=f"{host}:{port}", kind="inbound")
    return server
