"""SQL of the mail store (schema ``messages``): the spool, raw blobs, messages,
threads, attachments and the events written with them.

Every read filters on ``account_id`` and on the caller's reach (a pod, or a set
of owners), except the SMTP edge's route lookup and the ingest worker, which
start from an address or a spool row and act for whichever account owns it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from services.chassis import ids
from services.chassis.pagination import Page, page_of
from services.messages import mime
from services.messages.models import (
    AttachmentMeta,
    MailboxPolicy,
    Message,
    Owner,
    Thread,
    message_of,
    thread_of,
)

_MESSAGE_LIST_COLUMNS = (
    "id, thread_id, account_id, pod_id, owner_id, direction, status, labels, from_address,"
    " to_addresses, cc_addresses, bcc_addresses, reply_to, subject, preview, extracted_text,"
    " rfc_message_id, in_reply_to, refs, authentication, size, created_at, updated_at"
)
_MESSAGE_COLUMNS = _MESSAGE_LIST_COLUMNS + ", text_body, html_body"
_THREAD_COLUMNS = (
    "id, account_id, pod_id, owner_id, subject, labels, preview, message_count, senders,"
    " recipients, folder_id, last_message_at, created_at, updated_at"
)


@dataclass(frozen=True)
class Reach:
    """The rows a caller may see within its account: every row (both ``None``),
    one pod's, or a set of owners' (inbox and mailbox keys)."""

    pod_id: str | None = None
    owner_ids: tuple[str, ...] | None = None

    def allows(self, pod_id: str, owner_id: str) -> bool:
        """Whether a row of ``pod_id`` and ``owner_id`` is within reach."""
        if self.pod_id is not None and pod_id != self.pod_id:
            return False
        return self.owner_ids is None or owner_id in self.owner_ids


@dataclass(frozen=True)
class Recipient:
    """One accepted RCPT of a spooled message: the address and its owner."""

    address: str
    owner: Owner

    def to_json(self) -> dict[str, str]:
        """The spool's JSON shape."""
        return {
            "address": self.address,
            "ownerId": self.owner.id,
            "accountId": self.owner.account_id,
            "podId": self.owner.pod_id,
        }


@dataclass(frozen=True)
class Spooled:
    """A spool row taken by the ingest worker."""

    id: int
    peer: str
    helo: str
    mail_from: str
    recipients: list[Recipient]
    raw: bytes
    attempts: int


@dataclass(frozen=True)
class Filing:
    """How a mailbox's rule files the first message of a new thread: extra
    labels (``archived``, ``spam``) and the folder its thread moves to."""

    labels: tuple[str, ...] = ()
    folder_id: str | None = None


@dataclass(frozen=True)
class OwnerState:
    """What ingest needs of one owner: whether it was deleted, and a mailbox's
    policy (``None`` for an inbox, or for a mailbox whose policy has not
    arrived yet)."""

    deleted: bool
    policy: MailboxPolicy | None


@dataclass(frozen=True)
class Outbound:
    """How an outbound message is queued (DESIGN §7.5).

    Attributes:
        recipients: every To, Cc and Bcc address, bare (``user@domain``).
        bcc: the Bcc addresses as given (kept on the message, never in its headers).
        return_path: the envelope sender; ``""`` for a null sender (an auto-reply,
            RFC 3834 §4).
        status: ``queued``, ``scheduled`` (``send_at`` in the future) or ``held``
            (a paused mailbox's scheduled draft).
        send_at: when it goes out, or ``None`` for now.
        labels: the caller's labels besides ``sent``.
        max_hours: hours its deliveries are retried before they bounce
            (``MAILPLANE_DELIVERY_MAX_HOURS``).
        id: the message's ``msg_…`` ID when the caller chose it (its return path
            names it), else a new one.
    """

    recipients: Sequence[str]
    return_path: str
    bcc: Sequence[str] = ()
    status: str = "queued"
    send_at: datetime | None = None
    labels: Sequence[str] = ()
    max_hours: int = 72
    id: str | None = None


# --- the SMTP edge -----------------------------------------------------------------

#: Every route that could take ``$1`` addresses (exact, sub-address base, catch-all),
#: with whether its domain lets it deliver now. One indexed read (the primary key).
SELECT_ROUTES = """
SELECT r.address, r.kind, r.owner_id, r.account_id, r.pod_id, r.state, r.domain,
       (d.account_id = r.account_id AND d.can_receive) AS domain_ok,
       p.inbound_rate_limit
FROM routes r LEFT JOIN domains d ON d.name = r.domain
LEFT JOIN mailbox_policies p ON p.mailbox_id = r.owner_id
WHERE r.address = ANY($1::text[])
"""
#: Messages accepted for an owner in the rolling hour (≤ 60 rows of the primary key).
SELECT_HOURLY_COUNT = """
SELECT coalesce(sum(n), 0) FROM inbound_counts
WHERE owner_id = $1 AND minute > now() - interval '1 hour'
"""
COUNT_INBOUND = """
INSERT INTO inbound_counts (owner_id, minute, n)
SELECT unnest($1::text[]), date_trunc('minute', now()), 1
ON CONFLICT (owner_id, minute) DO UPDATE SET n = inbound_counts.n + 1
"""
FORGET_OLD_COUNTS = """
DELETE FROM inbound_counts
WHERE owner_id = ANY($1::text[]) AND minute <= now() - interval '1 hour'
"""
SPOOLED_BEYOND = "SELECT count(*) > $1 FROM (SELECT 1 FROM spool LIMIT $1 + 1) AS s"
SELECT_OUR_DOMAIN = """
SELECT EXISTS (SELECT 1 FROM domains WHERE name = $1)
    OR EXISTS (SELECT 1 FROM routes WHERE domain = $1)
"""
INSERT_SPOOL = """
INSERT INTO spool (peer, helo, mail_from, recipients, raw) VALUES ($1, $2, $3, $4::jsonb, $5)
RETURNING id
"""

# --- the ingest worker -------------------------------------------------------------

TAKE_SPOOL = """
SELECT id, peer, helo, mail_from, recipients, raw, attempts FROM spool
WHERE next_attempt_at <= now()
ORDER BY id
LIMIT $1
FOR UPDATE SKIP LOCKED
"""
RETRY_SPOOL = """
UPDATE spool SET attempts = attempts + 1, last_error = $2,
       next_attempt_at = now() + make_interval(secs => least(300, 2 ^ attempts))
WHERE id = $1
"""
DELETE_SPOOL = "DELETE FROM spool WHERE id = $1"
INSERT_BLOB = """
INSERT INTO blobs (sha256, size, data) VALUES ($1, $2, $3) ON CONFLICT (sha256) DO NOTHING
"""
#: Stores the raw bytes (once) and finds the owner's copy of the same message, if
#: any: one round trip.
BLOB_AND_DUPLICATE = """
WITH blob AS (
    INSERT INTO blobs (sha256, size, data) VALUES ($3, $4, $5) ON CONFLICT (sha256) DO NOTHING
)
SELECT id FROM messages WHERE owner_id = $1 AND rfc_message_id = $2 AND raw_sha256 = $3
"""
#: The thread of the first of ``$2`` (In-Reply-To, then References newest first, then
#: the message's own ID, which a reply that arrived first may have recorded).
SELECT_THREAD_BY_REFS = """
SELECT r.thread_id FROM unnest($2::text[]) WITH ORDINALITY AS c(rfc_message_id, n)
JOIN message_refs r ON r.owner_id = $1 AND r.rfc_message_id = c.rfc_message_id
ORDER BY c.n LIMIT 1
"""
INSERT_THREAD = """
INSERT INTO threads (id, account_id, pod_id, owner_id, subject, folder_id, last_message_at)
VALUES ($1, $2, $3, $4, $5, $6, now())
"""
INSERT_MESSAGE = f"""
INSERT INTO messages (id, account_id, pod_id, owner_id, thread_id, direction, status, labels,
    from_address, to_addresses, cc_addresses, bcc_addresses, reply_to, subject, preview,
    text_body, html_body, extracted_text, rfc_message_id, in_reply_to, refs, authentication,
    size, raw_sha256, send_at, return_path)
VALUES ($1, $2, $3, $4, $5, $22, $23, $6, $7, $8, $9, $24, $10, $11, $12, $13,
    $14, $15, $16, $17, $18, $19::jsonb, $20, $21, $25, $26)
RETURNING {_MESSAGE_COLUMNS}
"""
#: Queues an outbound message: one delivery per recipient domain ($4: bare addresses,
#: lower case), due at $6 and given up $7 hours later.
ENQUEUE = """
INSERT INTO deliveries (message_id, account_id, owner_id, domain, recipients, state,
    next_attempt_at, expires_at)
SELECT $1, $2, $3, g.domain, g.recipients, $5, coalesce($6::timestamptz, now()),
    coalesce($6::timestamptz, now()) + make_interval(hours => $7)
FROM (SELECT substring(a FROM '@([^@]*)$') AS domain, array_agg(a ORDER BY a) AS recipients
      FROM unnest($4::text[]) AS a GROUP BY 1) AS g
"""
#: Counts a send in its owner's hour (seed 004 stats). The row is the owner's, so
#: callers run it last in their transaction: its lock is held until commit.
COUNT_SENT = """
INSERT INTO mail_counts AS c (owner_id, hour, sends) VALUES ($1, date_trunc('hour', now()), 1)
ON CONFLICT (owner_id, hour) DO UPDATE SET sends = c.sends + 1
"""
#: Taken shared by ingest for each owner it stores for; an owner's deletion takes
#: it exclusively, so no message lands after the purge (or untrashed after the trash).
LOCK_OWNER_SHARED = "SELECT pg_advisory_xact_lock_shared(hashtextextended('owner:' || $1, 0))"
SELECT_OWNER_STATE = """
SELECT EXISTS (SELECT 1 FROM deleted_owners WHERE owner_id = $1) AS deleted,
       p.mailbox_id, p.account_id, p.pod_id, p.version, p.status, p.address, p.display_name,
       p.inbound_rate_limit, p.paused_auto_reply, p.reply_to, p.rules::text AS rules
FROM (SELECT 1) AS one LEFT JOIN mailbox_policies p ON p.mailbox_id = $1
"""
#: The (mailbox, sender) slot of a paused auto-reply: taken at most once per 24 h.
TAKE_AUTO_REPLY = """
INSERT INTO auto_replies AS a (owner_id, sender, replied_at) VALUES ($1, $2, now())
ON CONFLICT (owner_id, sender) DO UPDATE SET replied_at = now()
WHERE a.replied_at <= now() - interval '24 hours'
RETURNING replied_at
"""
INSERT_ATTACHMENTS = """
INSERT INTO attachments (id, message_id, position, filename, content_type, size, content_id,
    disposition, sha256)
SELECT * FROM unnest($1::text[], $2::text[], $3::int[], $4::text[], $5::text[], $6::int[],
    $7::text[], $8::text[], $9::bytea[])
"""
#: Records the message's IDs for threading ($7 owner, $8 IDs) and adds the message
#: to its thread's aggregates: one round trip.
TOUCH_THREAD = (
    """
WITH refs AS (
    INSERT INTO message_refs (owner_id, rfc_message_id, thread_id)
    SELECT $7, unnest($8::text[]), $1 ON CONFLICT DO NOTHING
)
UPDATE threads SET
    message_count = message_count + 1,
    last_message_at = now(),
    preview = $2,
    senders = CASE WHEN $3 = '' OR $3 = ANY(senders) THEN senders ELSE senders || $3 END,
    recipients = recipients || ARRAY(
        SELECT DISTINCT x FROM unnest($4::text[]) x WHERE NOT x = ANY(recipients)),
    labels = ARRAY(SELECT DISTINCT x FROM unnest(labels || $5::text[]) x ORDER BY x),
    folder_id = coalesce($6, folder_id),
    updated_at = now()
WHERE id = $1
RETURNING """
    + _THREAD_COLUMNS
)
#: The event and the NOTIFY that wakes long-polls (delivered at commit): one round trip.
INSERT_EVENT = """
WITH event AS (
    INSERT INTO events (id, account_id, pod_id, inbox_id, mailbox_id, type, data)
    VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb)
    RETURNING account_id
)
SELECT pg_notify('mailplane_events', account_id) FROM event
"""

# --- reading -----------------------------------------------------------------------

SELECT_OWNER = """
SELECT owner_id, account_id, pod_id FROM routes
WHERE owner_id = $1 AND account_id = $2 AND state IN ('live', 'pending') LIMIT 1
"""
SELECT_MESSAGE = f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE account_id = $1 AND id = $2"
SELECT_ATTACHMENTS = """
SELECT message_id, id, filename, content_type, size, content_id, disposition FROM attachments
WHERE message_id = ANY($1::text[]) ORDER BY message_id, position
"""
SELECT_RAW = """
SELECT b.data FROM messages m JOIN blobs b ON b.sha256 = m.raw_sha256
WHERE m.account_id = $1 AND m.id = $2
"""
SELECT_ATTACHMENT_CONTENT = """
SELECT b.data FROM attachments a JOIN blobs b ON b.sha256 = a.sha256
WHERE a.message_id = $1 AND a.id = $2
"""
SET_MESSAGE_LABELS = f"""
UPDATE messages SET
    labels = ARRAY(SELECT DISTINCT x FROM unnest(labels || $3::text[]) x
                   WHERE NOT x = ANY($4::text[]) ORDER BY x),
    updated_at = now()
WHERE account_id = $1 AND id = $2
RETURNING {_MESSAGE_COLUMNS}
"""
SET_THREAD_MESSAGE_LABELS = """
UPDATE messages SET
    labels = ARRAY(SELECT DISTINCT x FROM unnest(labels || $3::text[]) x
                   WHERE NOT x = ANY($4::text[]) ORDER BY x),
    updated_at = now()
WHERE account_id = $1 AND thread_id = $2
"""
#: A thread's labels are the union of its messages' labels.
RELABEL_THREAD = f"""
UPDATE threads SET
    labels = coalesce((SELECT array_agg(DISTINCT x ORDER BY x)
                       FROM messages m, unnest(m.labels) x WHERE m.thread_id = threads.id), '{{}}'),
    updated_at = now()
WHERE id = $1
RETURNING {_THREAD_COLUMNS}
"""
SELECT_THREAD = f"SELECT {_THREAD_COLUMNS} FROM threads WHERE account_id = $1 AND id = $2"
SELECT_THREAD_MESSAGES = f"""
SELECT {_MESSAGE_COLUMNS} FROM messages WHERE thread_id = $1 ORDER BY created_at, id
"""
DELETE_MESSAGE = "DELETE FROM messages WHERE account_id = $1 AND id = $2 RETURNING thread_id"
#: After a message is deleted: its thread's aggregates, or the thread itself when empty.
SHRINK_THREAD = f"""
WITH left_over AS (
    SELECT count(*) AS n, max(created_at) AS last FROM messages WHERE thread_id = $1
), gone AS (
    DELETE FROM threads WHERE id = $1 AND (SELECT n FROM left_over) = 0
)
UPDATE threads SET
    message_count = (SELECT n FROM left_over),
    last_message_at = coalesce((SELECT last FROM left_over), last_message_at),
    labels = coalesce((SELECT array_agg(DISTINCT x ORDER BY x)
                       FROM messages m, unnest(m.labels) x WHERE m.thread_id = $1), '{{}}'),
    updated_at = now()
WHERE id = $1 AND (SELECT n FROM left_over) > 0
RETURNING {_THREAD_COLUMNS}
"""
DELETE_THREAD = "DELETE FROM threads WHERE account_id = $1 AND id = $2"
#: Blobs no message or attachment refers to any more.
DELETE_ORPHAN_BLOBS = """
DELETE FROM blobs b WHERE b.sha256 = ANY($1::bytea[])
  AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.raw_sha256 = b.sha256)
  AND NOT EXISTS (SELECT 1 FROM attachments a WHERE a.sha256 = b.sha256)
"""
SELECT_THREAD_BLOBS = """
SELECT m.raw_sha256 FROM messages m WHERE m.thread_id = $1
UNION SELECT a.sha256 FROM attachments a JOIN messages m ON m.id = a.message_id
WHERE m.thread_id = $1
"""


class _Where:
    """A WHERE clause built from fixed SQL fragments, only for the filters given,
    so each shape of a listing is its own prepared statement and the planner sees
    plain equalities (one owner: the owner's index, in order) rather than
    ``$n IS NULL OR …`` that a generic plan cannot use."""

    def __init__(self, account_id: str):
        self.parts = ["account_id = $1"]
        self.args: list[Any] = [account_id]

    def add(self, fragment: str, *values: Any) -> None:
        """Adds ``fragment`` with ``{}`` for each value's parameter."""
        first = len(self.args) + 1
        self.args.extend(values)
        self.parts.append(fragment.format(*(f"${first + i}" for i in range(len(values)))))

    def reach(self, reach: Reach) -> None:
        """Narrows to the caller's pod or owners."""
        if reach.pod_id is not None:
            self.add("pod_id = {}", reach.pod_id)
        if reach.owner_ids is not None:
            if len(reach.owner_ids) == 1:
                self.add("owner_id = {}", reach.owner_ids[0])
            else:
                self.add("owner_id = ANY({}::text[])", list(reach.owner_ids))

    def labels(self, labels: Sequence[str], hidden: Sequence[str]) -> None:
        """Every one of ``labels``, none of ``hidden``."""
        if labels:
            self.add("labels @> {}::text[]", list(labels))
        if hidden:
            self.add("NOT labels && {}::text[]", list(hidden))

    @property
    def sql(self) -> str:
        """The conditions joined with AND."""
        return " AND ".join(self.parts)


class MailStore:
    """The ``messages`` schema.

    Args:
        pool: the service's pool (search_path ``messages``).
    """

    def __init__(self, pool: asyncpg.Pool):
        self._pool = pool

    @property
    def pool(self) -> asyncpg.Pool:
        """The pool, for the processes that hold a connection of their own."""
        return self._pool

    # --- edge ----------------------------------------------------------------------

    async def routes(self, addresses: Sequence[str]) -> list[asyncpg.Record]:
        """Returns the route rows of ``addresses`` (lower case) with ``domain_ok``."""
        return list(await self._pool.fetch(SELECT_ROUTES, list(addresses)))

    async def spooled_beyond(self, count: int) -> bool:
        """Whether the spool holds more than ``count`` messages (reads at most
        ``count + 1`` index entries)."""
        return bool(await self._pool.fetchval(SPOOLED_BEYOND, count))

    async def is_our_domain(self, domain: str) -> bool:
        """Whether ``domain`` is a custom domain some account added (or routes to)."""
        return bool(await self._pool.fetchval(SELECT_OUR_DOMAIN, domain))

    async def hourly_count(self, owner_id: str) -> int:
        """Messages accepted for ``owner_id`` in the rolling hour (counted only
        for owners with an ``inboundRateLimit``)."""
        return int(await self._pool.fetchval(SELECT_HOURLY_COUNT, owner_id))

    async def spool(
        self,
        peer: str,
        helo: str,
        mail_from: str,
        recipients: Sequence[Recipient],
        raw: bytes,
        counted: Sequence[str] = (),
    ) -> int:
        """Commits one accepted message to the spool; returns its spool ID. The
        edge answers 250 only after this returns (DESIGN §7.3).

        Args:
            counted: the owners with an hourly limit, whose counters this
                message increments in the same transaction.
        """
        payload = orjson.dumps([r.to_json() for r in recipients]).decode()
        if not counted:
            spool_id: int = await self._pool.fetchval(
                INSERT_SPOOL, peer, helo, mail_from, payload, raw
            )
            return spool_id
        owners = sorted(set(counted))  # one lock order for concurrent sessions
        async with self._pool.acquire() as conn, conn.transaction():
            spool_id = await conn.fetchval(INSERT_SPOOL, peer, helo, mail_from, payload, raw)
            await conn.execute(COUNT_INBOUND, owners)
            await conn.execute(FORGET_OLD_COUNTS, owners)
        return spool_id

    # --- ingest --------------------------------------------------------------------

    async def take(self, conn: asyncpg.Connection, limit: int) -> list[Spooled]:
        """Locks up to ``limit`` due spool rows for this transaction (SKIP LOCKED)."""
        rows = await conn.fetch(TAKE_SPOOL, limit)
        out = []
        for row in rows:
            recipients = [
                Recipient(r["address"], Owner(r["ownerId"], r["accountId"], r["podId"]))
                for r in orjson.loads(row["recipients"])
            ]
            out.append(
                Spooled(
                    row["id"],
                    row["peer"],
                    row["helo"],
                    row["mail_from"],
                    recipients,
                    bytes(row["raw"]),
                    row["attempts"],
                )
            )
        return out

    async def retry_later(self, spool_id: int, error: str) -> None:
        """Puts a spool row that failed to ingest back with a backoff (≤ 5 min)."""
        await self._pool.execute(RETRY_SPOOL, spool_id, error[:1000])

    async def owner_state(self, conn: asyncpg.Connection, owner: Owner) -> OwnerState:
        """Locks ``owner`` against its deletion for the caller's transaction
        (shared) and reads whether it is deleted and, for a mailbox, its policy."""
        await conn.execute(LOCK_OWNER_SHARED, owner.id)
        row = await conn.fetchrow(SELECT_OWNER_STATE, owner.id)
        policy = None
        if row["mailbox_id"] is not None:
            policy = MailboxPolicy(
                mailbox_id=row["mailbox_id"],
                account_id=row["account_id"],
                pod_id=row["pod_id"],
                version=row["version"],
                status=row["status"],
                address=row["address"],
                display_name=row["display_name"],
                inbound_rate_limit=row["inbound_rate_limit"],
                paused_auto_reply=row["paused_auto_reply"],
                reply_to=row["reply_to"],
                rules=orjson.loads(row["rules"]),
            )
        return OwnerState(bool(row["deleted"]), policy)

    async def store_inbound(
        self,
        conn: asyncpg.Connection,
        owner: Owner,
        parsed: mime.Parsed,
        raw: bytes,
        labels: Sequence[str],
        authentication: dict[str, str],
        event_type: str,
        filing: Filing | None = None,
    ) -> Message | None:
        """Stores a received message for one owner, threads it and writes its
        event, in the caller's transaction.

        Args:
            filing: how a mailbox's rule files the message if it starts a new
                thread (a ``spam`` label makes the event ``message.received.spam``).

        Returns:
            The stored message; ``None`` when this owner already has it (the same
            Message-ID and bytes: a retried SMTP transaction or a re-run ingest).
        """
        duplicate = await conn.fetchval(
            BLOB_AND_DUPLICATE, owner.id, parsed.message_id, parsed.sha256, len(raw), raw
        )
        if duplicate is not None:
            return None
        candidates = [
            *([parsed.in_reply_to] if parsed.in_reply_to else []),
            *reversed(parsed.references),
            parsed.message_id,
        ]
        thread_id = await conn.fetchval(SELECT_THREAD_BY_REFS, owner.id, candidates)
        folder_id = None
        if thread_id is None:
            if filing is not None:
                labels = [*labels, *filing.labels]
                folder_id = filing.folder_id
                if "spam" in filing.labels:
                    event_type = "message.received.spam"
            thread_id = ids.new_id("thr")
            await conn.execute(
                INSERT_THREAD,
                thread_id,
                owner.account_id,
                owner.pod_id,
                owner.id,
                parsed.subject[:998],
                folder_id,
            )
        return await self._insert_message(
            conn,
            owner,
            thread_id,
            parsed,
            labels,
            authentication,
            ("inbound", "received"),
            candidates,
            folder_id,
            event_type,
        )

    async def take_auto_reply(self, conn: asyncpg.Connection, owner: Owner, sender: str) -> bool:
        """Takes the (mailbox, sender) auto-reply slot in the caller's
        transaction; ``False`` when one was sent in the last 24 h."""
        return await conn.fetchval(TAKE_AUTO_REPLY, owner.id, sender.lower()) is not None

    async def store_outbound(
        self,
        conn: asyncpg.Connection,
        owner: Owner,
        thread_id: str | None,
        parsed: mime.Parsed,
        raw: bytes,
        outbound: Outbound,
    ) -> Message:
        """Stores an outbound message of ``owner`` and queues it, with its
        ``message.queued`` event (or ``message.held`` for a paused mailbox's), in
        the caller's transaction (DESIGN §7.5; the delivery worker takes it). The
        caller counts the send (``COUNT_SENT``) last, before it commits.

        Args:
            thread_id: the thread it continues (a reply), or ``None`` to thread it
                by its own In-Reply-To/References, else in a new thread.
            outbound: its envelope, labels and schedule.

        Returns:
            The stored message, ``queued``, ``scheduled`` or ``held``.
        """
        await conn.execute(INSERT_BLOB, parsed.sha256, len(raw), raw)
        refs = [
            *([parsed.in_reply_to] if parsed.in_reply_to else []),
            *reversed(parsed.references),
        ]
        if thread_id is None and refs:
            thread_id = await conn.fetchval(SELECT_THREAD_BY_REFS, owner.id, refs)
        if thread_id is None:
            thread_id = ids.new_id("thr")
            await conn.execute(
                INSERT_THREAD,
                thread_id,
                owner.account_id,
                owner.pod_id,
                owner.id,
                parsed.subject[:998],
                None,
            )
        status = outbound.status
        message = await self._insert_message(
            conn,
            owner,
            thread_id,
            parsed,
            ["sent", *outbound.labels, *(["held"] if status == "held" else [])],
            {},
            ("outbound", status),
            [parsed.message_id],
            None,
            "message.held" if status == "held" else "message.queued",
            bcc=outbound.bcc,
            send_at=outbound.send_at,
            return_path=outbound.return_path,
            message_id=outbound.id,
        )
        await conn.execute(
            ENQUEUE,
            message.id,
            owner.account_id,
            owner.id,
            sorted({a.lower() for a in outbound.recipients}),
            "held" if status == "held" else "queued",
            outbound.send_at,
            outbound.max_hours,
        )
        return message

    async def count_sent(self, conn: asyncpg.Connection, owner: Owner) -> None:
        """Counts one send of ``owner`` in its hour (seed 004 stats), in the caller's
        transaction; run it last (the row is locked until commit)."""
        await conn.execute(COUNT_SENT, owner.id)

    async def _insert_message(
        self,
        conn: asyncpg.Connection,
        owner: Owner,
        thread_id: str,
        parsed: mime.Parsed,
        labels: Sequence[str],
        authentication: dict[str, str],
        direction_status: tuple[str, str],
        refs: Sequence[str],
        folder_id: str | None,
        event_type: str,
        *,
        bcc: Sequence[str] = (),
        send_at: datetime | None = None,
        return_path: str | None = None,
        message_id: str | None = None,
    ) -> Message:
        message_id = message_id or ids.new_id("msg")
        row = await conn.fetchrow(
            INSERT_MESSAGE,
            message_id,
            owner.account_id,
            owner.pod_id,
            owner.id,
            thread_id,
            sorted(set(labels)),
            parsed.sender,
            parsed.to,
            parsed.cc,
            parsed.reply_to,
            parsed.subject,
            parsed.preview,
            parsed.text,
            parsed.html,
            parsed.extracted_text,
            parsed.message_id,
            parsed.in_reply_to,
            parsed.references,
            orjson.dumps(authentication).decode(),
            parsed.size,
            parsed.sha256,
            *direction_status,
            list(bcc),
            send_at,
            return_path,
        )
        attachments = await self._insert_attachments(conn, message_id, parsed.attachments)
        thread_row = await conn.fetchrow(
            TOUCH_THREAD,
            thread_id,
            parsed.preview,
            parsed.sender,
            [*parsed.to, *parsed.cc],
            sorted(set(labels)),
            folder_id,
            owner.id,
            list({*refs}),
        )
        message = message_of(row, attachments)
        await self.record_event(
            conn,
            owner,
            event_type,
            {
                "message": event_message(message),
                "thread": {"id": thread_id, "messageCount": thread_row["message_count"]},
            },
        )
        return message

    async def _insert_attachments(
        self, conn: asyncpg.Connection, message_id: str, parts: Sequence[mime.Part]
    ) -> list[AttachmentMeta]:
        if not parts:
            return []
        import hashlib

        metas, digests = [], []
        for part in parts:
            digest = hashlib.sha256(part.content).digest()
            await conn.execute(INSERT_BLOB, digest, len(part.content), part.content)
            digests.append(digest)
            metas.append(
                AttachmentMeta(
                    ids.new_id("att"),
                    part.filename,
                    part.content_type,
                    len(part.content),
                    part.content_id,
                    part.disposition,
                )
            )
        await conn.execute(
            INSERT_ATTACHMENTS,
            [m.id for m in metas],
            [message_id] * len(metas),
            list(range(len(metas))),
            [m.filename for m in metas],
            [m.content_type for m in metas],
            [m.size for m in metas],
            [m.content_id for m in metas],
            [m.disposition for m in metas],
            digests,
        )
        return metas

    async def record_event(
        self,
        conn: asyncpg.Connection,
        owner: Owner | None,
        event_type: str,
        data: dict[str, Any],
        *,
        account_id: str | None = None,
    ) -> str:
        """Writes one event in the caller's transaction (``write_event``)."""
        return await write_event(conn, owner, event_type, data, account_id=account_id)

    async def forget_spool(self, conn: asyncpg.Connection, spool_id: int) -> None:
        """Deletes an ingested spool row (in the ingest's transaction)."""
        await conn.execute(DELETE_SPOOL, spool_id)

    # --- reading -------------------------------------------------------------------

    async def owner(self, account_id: str, owner_id: str) -> Owner | None:
        """The account's inbox or mailbox ``owner_id`` as the directory knows it."""
        row = await self._pool.fetchrow(SELECT_OWNER, owner_id, account_id)
        return Owner(row["owner_id"], row["account_id"], row["pod_id"]) if row else None

    async def list_messages(
        self,
        account_id: str,
        reach: Reach,
        labels: Sequence[str],
        hidden: Sequence[str],
        before: datetime | None,
        after: datetime | None,
        resume: list[Any] | None,
        limit: int,
    ) -> Page[Message]:
        """A page of messages newest first (keyset on ``created_at, id``)."""
        where = _Where(account_id)
        where.reach(reach)
        where.labels(labels, hidden)
        if before is not None:
            where.add("created_at < {}", before)
        if after is not None:
            where.add("created_at > {}", after)
        if resume:
            where.add(
                "(created_at, id) < ({}, {}::text)", datetime.fromisoformat(resume[0]), resume[1]
            )
        sql = (
            f"SELECT {_MESSAGE_LIST_COLUMNS} FROM messages WHERE {where.sql}"
            f" ORDER BY created_at DESC, id DESC LIMIT ${len(where.args) + 1}"
        )
        rows = await self._pool.fetch(sql, *where.args, limit + 1)
        messages = [message_of(r) for r in rows]
        await self._attach(messages)
        return page_of(messages, limit, lambda m: [m.created_at.isoformat(), m.id])

    async def _attach(self, messages: list[Message]) -> None:
        if not messages:
            return
        by_id = {m.id: m for m in messages}
        for row in await self._pool.fetch(SELECT_ATTACHMENTS, list(by_id)):
            by_id[row["message_id"]].attachments.append(_attachment_of(row))

    async def get_message(self, account_id: str, message_id: str) -> Message | None:
        """A message with bodies and attachments, or ``None``."""
        row = await self._pool.fetchrow(SELECT_MESSAGE, account_id, message_id)
        if row is None:
            return None
        message = message_of(row)
        await self._attach([message])
        return message

    async def raw(self, account_id: str, message_id: str) -> bytes | None:
        """A message's RFC 5322 bytes, or ``None``."""
        data = await self._pool.fetchval(SELECT_RAW, account_id, message_id)
        return bytes(data) if data is not None else None

    async def attachment(self, message_id: str, attachment_id: str) -> bytes | None:
        """An attachment's bytes (the caller checked the message's reach), or ``None``."""
        data = await self._pool.fetchval(SELECT_ATTACHMENT_CONTENT, message_id, attachment_id)
        return bytes(data) if data is not None else None

    async def relabel_message(
        self, account_id: str, message: Message, add: Sequence[str], remove: Sequence[str]
    ) -> Message:
        """Adds and removes labels of a message and refreshes its thread's labels."""
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(SET_MESSAGE_LABELS, account_id, message.id, add, remove)
            thread = await conn.fetchrow(RELABEL_THREAD, message.thread_id)
            await self._thread_event(conn, thread)
        updated = message_of(row)
        updated.attachments = message.attachments
        return updated

    async def _thread_event(self, conn: asyncpg.Connection, row: Any) -> None:
        if row is None:
            return
        thread = thread_of(row)
        await self.record_event(
            conn,
            Owner(thread.owner_id, thread.account_id, thread.pod_id),
            "thread.updated",
            {"thread": {"id": thread.id, "labels": thread.labels, "folderId": thread.folder_id}},
        )

    async def delete_message(self, account_id: str, message_id: str) -> bool:
        """Deletes a message for good (and its thread when it was the last)."""
        async with self._pool.acquire() as conn, conn.transaction():
            thread_id = await conn.fetchval(DELETE_MESSAGE, account_id, message_id)
            if thread_id is None:
                return False
            await conn.fetchrow(SHRINK_THREAD, thread_id)
        return True

    async def list_threads(
        self,
        account_id: str,
        reach: Reach,
        labels: Sequence[str],
        hidden: Sequence[str],
        folder_id: str | None,
        resume: list[Any] | None,
        limit: int,
    ) -> Page[Thread]:
        """A page of threads, latest activity first (keyset on ``last_message_at, id``)."""
        where = _Where(account_id)
        where.reach(reach)
        where.labels(labels, hidden)
        if folder_id is not None:
            where.add("folder_id = {}", folder_id)
        if resume:
            where.add(
                "(last_message_at, id) < ({}, {}::text)",
                datetime.fromisoformat(resume[0]),
                resume[1],
            )
        sql = (
            f"SELECT {_THREAD_COLUMNS} FROM threads WHERE {where.sql}"
            f" ORDER BY last_message_at DESC, id DESC LIMIT ${len(where.args) + 1}"
        )
        rows = await self._pool.fetch(sql, *where.args, limit + 1)
        return page_of(
            [thread_of(r) for r in rows], limit, lambda t: [t.last_message_at.isoformat(), t.id]
        )

    async def get_thread(self, account_id: str, thread_id: str) -> Thread | None:
        """A thread, without its messages, or ``None``."""
        row = await self._pool.fetchrow(SELECT_THREAD, account_id, thread_id)
        return thread_of(row) if row else None

    async def thread_messages(self, thread_id: str) -> list[Message]:
        """A thread's messages with bodies, oldest first."""
        messages = [
            message_of(r) for r in await self._pool.fetch(SELECT_THREAD_MESSAGES, thread_id)
        ]
        await self._attach(messages)
        return messages

    async def relabel_thread(
        self, account_id: str, thread_id: str, add: Sequence[str], remove: Sequence[str]
    ) -> Thread | None:
        """Adds and removes labels on every message of a thread; writes ``thread.updated``."""
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(SET_THREAD_MESSAGE_LABELS, account_id, thread_id, add, remove)
            row = await conn.fetchrow(RELABEL_THREAD, thread_id)
            await self._thread_event(conn, row)
        return thread_of(row) if row else None

    async def purge_thread(self, account_id: str, thread_id: str) -> None:
        """Deletes a thread, its messages and attachments, and blobs left unused."""
        async with self._pool.acquire() as conn, conn.transaction():
            blobs = [r[0] for r in await conn.fetch(SELECT_THREAD_BLOBS, thread_id)]
            await conn.execute(DELETE_THREAD, account_id, thread_id)
            await conn.execute(DELETE_ORPHAN_BLOBS, blobs)


async def write_event(
    conn: asyncpg.Connection,
    owner: Owner | None,
    event_type: str,
    data: dict[str, Any],
    *,
    account_id: str | None = None,
) -> str:
    """Writes one event in the caller's transaction and wakes the long-polls
    (NOTIFY is delivered at commit); returns its ``evt_`` ID.

    Args:
        owner: the inbox or mailbox the event is about, or ``None`` for an
            account-wide event (then ``account_id`` names the account).
    """
    event_id = ids.new_id("evt")
    account = owner.account_id if owner is not None else account_id
    await conn.execute(
        INSERT_EVENT,
        event_id,
        account,
        owner.pod_id if owner is not None else None,
        owner.id if owner is not None and owner.kind == "inbox" else None,
        owner.id if owner is not None and owner.kind == "mailbox" else None,
        event_type,
        orjson.dumps(data).decode(),
    )
    return event_id


def _attachment_of(row: Any) -> AttachmentMeta:
    return AttachmentMeta(
        row["id"],
        row["filename"],
        row["content_type"],
        row["size"],
        row["content_id"],
        row["disposition"],
    )


#: Characters of ``preview`` and ``extractedText`` kept in an event (DESIGN §7.6).
EVENT_TEXT_CHARS = 32_768


def event_message(message: Message) -> dict[str, Any]:
    """A message as an event carries it: metadata, no ``text``/``html``, with
    ``extractedText`` cut at 32 KB (``truncated`` says so; DESIGN §7.6)."""
    extracted = message.extracted_text
    return {
        "id": message.id,
        "threadId": message.thread_id,
        "podId": message.pod_id,
        "inboxId": message.owner_id if message.owner_id.startswith("inb_") else None,
        "mailboxId": message.owner_id if message.owner_id.startswith("mbx_") else None,
        "direction": message.direction,
        "labels": message.labels,
        "from": message.sender,
        "to": message.to,
        "cc": message.cc,
        "subject": message.subject,
        "preview": message.preview,
        "extractedText": extracted[:EVENT_TEXT_CHARS],
        "truncated": len(extracted) > EVENT_TEXT_CHARS,
        "messageId": message.message_id,
        "attachments": [
            {"id": a.id, "filename": a.filename, "contentType": a.content_type, "size": a.size}
            for a in message.attachments
        ],
        "size": message.size,
        "createdAt": message.created_at.isoformat().replace("+00:00", "Z"),
    }
