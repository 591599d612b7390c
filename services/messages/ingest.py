"""The ingest worker: spool → parsed, threaded, stored messages and their events
(DESIGN §7.3; research/mailflow.md §5.4 step 2).

A batch of due spool rows is locked with ``FOR UPDATE SKIP LOCKED`` (so several
workers share the spool), each message is parsed once and stored once per
owner, with its event, and its spool row deleted, all in one transaction. A
message that fails (among others, one for a mailbox whose policy has not
arrived yet) is rolled back to its savepoint and retried later with a backoff;
the rest of the batch commits; a spool row is never dropped. A crash leaves the spool rows locked by
nobody, so they are taken again, and the per-owner dedupe
``(owner, Message-ID, SHA-256)`` makes the re-run store nothing twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import asyncpg

from services.chassis.logs import get_logger
from services.messages import mime
from services.messages.authentication import authenticate
from services.messages.delivery import BOUNCE_TAG, bounce_report, bounced_message_of
from services.messages.delivery_store import DeliveryStore
from services.messages.policy import auto_reply, auto_reply_to, filing_of
from services.messages.resolver import SenderResolver
from services.messages.store import MailStore, Outbound, Recipient, Spooled

_log = get_logger("mailplane.ingest")
#: Spool rows taken per transaction.
BATCH = 20
#: Seconds between polls when no NOTIFY arrives (a safety net; NOTIFY wakes it first).
IDLE_POLL = 1.0
#: Drains side by side in one worker process.
LOOPS = 2

#: Computes SPF/DKIM/DMARC of a message: ``(raw, client_ip, helo, mail_from) → results``.
Authenticator = Callable[[bytes, str, str, str], Awaitable[dict[str, str]]]


async def no_authentication(raw: bytes, ip: str, helo: str, mail_from: str) -> dict[str, str]:
    """Results when sender authentication is not checked: ``none`` for all three."""
    return {"spf": "none", "dkim": "none", "dmarc": "none"}


def sender_authentication(resolver: SenderResolver) -> Authenticator:
    """The SPF/DKIM/DMARC check of ``services.messages.authentication`` over one
    process-wide caching resolver (``MAILPLANE_DNS_NAMESERVERS``)."""

    async def check(raw: bytes, ip: str, helo: str, mail_from: str) -> dict[str, str]:
        return (await authenticate(raw, ip, helo, mail_from, resolver)).as_dict()

    return check


def labels_of(authentication: dict[str, str]) -> tuple[list[str], str]:
    """The arrival labels and the event type of an inbound message (DESIGN §7.3):
    ``received``, ``unread``, plus ``unauthenticated`` when no check passed."""
    labels = ["received", "unread"]
    if "pass" not in authentication.values():
        labels.append("unauthenticated")
        return labels, "message.received.unauthenticated"
    return labels, "message.received"


class PolicyNotKnown(Exception):
    """A mailbox's policy has not reached this service yet: its message waits in
    the spool (retried with a backoff), never stored without its rules."""


class Ingest:
    """Drains the spool into the store.

    Args:
        store: the mail store.
        authenticate: the sender-authentication check.
        hostname: the domain of the Message-IDs of auto-replies.
    """

    def __init__(
        self,
        store: MailStore,
        authenticate: Authenticator = no_authentication,
        hostname: str = "localhost",
    ):
        self._store = store
        self._authenticate = authenticate
        self._hostname = hostname
        self._deliveries = DeliveryStore(store.pool)

    async def run_once(self, limit: int = BATCH) -> int:
        """Ingests up to ``limit`` due spool rows; returns how many were taken."""
        async with self._store.pool.acquire() as conn, conn.transaction():
            batch = await self._store.take(conn, limit)
            failed: list[tuple[int, str]] = []
            for spooled in batch:
                try:
                    async with conn.transaction():  # a savepoint per message
                        await self._ingest(conn, spooled)
                except (asyncpg.InterfaceError, OSError):
                    raise  # the connection is gone: the whole batch is retried
                except PolicyNotKnown as exc:  # expected until the mailboxes sweep publishes it
                    _log.warning("ingest_waiting_for_policy", spool_id=spooled.id, error=str(exc))
                    failed.append((spooled.id, f"{type(exc).__name__}: {exc}"))
                except Exception as exc:  # one bad message must not block the spool
                    _log.exception("ingest_failed", spool_id=spooled.id)
                    failed.append((spooled.id, f"{type(exc).__name__}: {exc}"))
        for spool_id, error in failed:
            await self._store.retry_later(spool_id, error)
        return len(batch)

    async def _ingest(self, conn: asyncpg.Connection, spooled: Spooled) -> None:
        parsed = mime.parse(spooled.raw)
        authentication = await self._authenticate(
            spooled.raw, spooled.peer, spooled.helo, spooled.mail_from
        )
        labels, event_type = labels_of(authentication)
        for recipient in spooled.recipients:
            await self._deliver(
                conn, spooled, recipient, parsed, labels, authentication, event_type
            )
        await self._store.forget_spool(conn, spooled.id)

    async def _deliver(
        self,
        conn: asyncpg.Connection,
        spooled: Spooled,
        recipient: Recipient,
        parsed: mime.Parsed,
        labels: list[str],
        authentication: dict[str, str],
        event_type: str,
    ) -> None:
        """Stores the message for one owner with its mailbox semantics (DESIGN
        §7.3): a deleted inbox gets nothing, a deleted mailbox gets it trashed; a
        mailbox's rules file a new thread; a paused mailbox may auto-reply. A
        bounce report to an outbound message's VERP return path settles that
        message instead of being stored (DESIGN §7.5)."""
        owner = recipient.owner
        state = await self._store.owner_state(conn, owner)
        if state.deleted and owner.kind == "inbox":
            return  # its mail was purged with it (DESIGN §7.4)
        if BOUNCE_TAG in recipient.address and await self._bounce(conn, spooled, recipient):
            return
        policy = state.policy
        filing = None
        if state.deleted:
            labels = [*labels, "trash"]
        elif owner.kind == "mailbox":
            if policy is None:
                raise PolicyNotKnown(f"No policy recorded yet for mailbox {owner.id}.")
            filing = filing_of(policy, parsed, recipient.address)
        message = await self._store.store_inbound(
            conn, owner, parsed, spooled.raw, labels, authentication, event_type, filing
        )
        if message is None or policy is None or state.deleted:
            return
        to = auto_reply_to(policy, parsed, spooled.mail_from, message.labels)
        if to and await self._store.take_auto_reply(conn, owner, to):
            reply = auto_reply(policy, parsed, to, self._hostname)
            # A null return path: nothing answers an auto-reply (RFC 3834 §4).
            await self._store.store_outbound(
                conn,
                owner,
                message.thread_id,
                mime.parse(reply),
                reply,
                Outbound(recipients=[to], return_path=""),
            )
            await self._store.count_sent(conn, owner)

    async def _bounce(
        self, conn: asyncpg.Connection, spooled: Spooled, recipient: Recipient
    ) -> bool:
        """Records a bounce report sent to the VERP return path of one of the
        owner's outbound messages; ``False`` when the address names no such
        message or the mail is no report (then it is stored as mail)."""
        message_id = bounced_message_of(recipient.address)
        if message_id is None:
            return False
        report = bounce_report(spooled.raw)
        if report is None:
            return False
        failed, reply = report
        return await self._deliveries.record_bounce_report(
            conn, recipient.owner, message_id, failed, reply
        )

    async def run_forever(self, listen_dsn: str, loops: int = LOOPS) -> None:
        """Ingests until cancelled, woken by ``NOTIFY mailplane_spool`` (and a poll
        every ``IDLE_POLL`` seconds); survives database outages by retrying.

        ``loops`` drains run side by side, each with its own connection and batch
        (SKIP LOCKED keeps their batches apart), so one parses while another
        waits on the database.
        """
        wake = asyncio.Event()
        listener: asyncpg.Connection | None = None
        drains = [asyncio.create_task(self._drain(wake)) for _ in range(loops)]
        try:
            while True:
                try:
                    if listener is None or listener.is_closed():
                        listener = await asyncpg.connect(listen_dsn)
                        await listener.add_listener("mailplane_spool", lambda *_: wake.set())
                    await asyncio.sleep(IDLE_POLL)
                    wake.set()  # the safety net: a lost NOTIFY waits at most this long
                except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError):
                    _log.warning("ingest_listener_waiting_for_database", exc_info=True)
                    listener = None
        finally:
            for task in drains:
                task.cancel()
            await asyncio.gather(*drains, return_exceptions=True)
            if listener is not None:
                await listener.close()

    async def _drain(self, wake: asyncio.Event) -> None:
        """One drain: batch after batch while the spool is full, then waits."""
        while True:
            try:
                wake.clear()  # a NOTIFY during the batch sets it again: no wait then
                if await self.run_once() == BATCH:
                    continue
                await wake.wait()
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError):
                _log.warning("ingest_waiting_for_database", exc_info=True)
                await asyncio.sleep(1.0)
