"""SQL of outbound delivery (DESIGN §7.5): leasing due deliveries, recording each
attempt's outcome with its event, and settling the message they belong to.

A delivery is one ``deliveries`` row: an outbound message's recipients at one
domain. Its life: ``queued`` → leased (``sending``, ``next_attempt_at`` = the
lease's end) → ``sent`` | ``delivered`` (local) | ``bounced`` | ``rejected`` |
``deferred`` (retried later) | ``held`` (a paused mailbox). An attempt whose
recipients fare differently (one refused at RCPT, another accepted) splits its
row: the leased row keeps the first group, a new row per other group.

Every outcome commits in one transaction with its event (the outbox, DESIGN
§7.6) and the message's settlement: the transaction first locks the message
row, so concurrent outcomes of one message's deliveries settle one after the
other and exactly one of them sees the last delivery close (and counts it).

Each write checks the lease it acts under (``state = 'sending'`` and the
``next_attempt_at`` the lease set): a worker whose lease ran out and was taken
by another records nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from services.messages.models import AttachmentMeta, Message, Owner, message_of, thread_of
from services.messages.store import (
    INSERT_SPOOL,
    RELABEL_THREAD,
    Recipient,
    event_message,
    write_event,
)

#: Statuses of a message whose deliveries are not all settled.
OPEN_STATUSES = frozenset({"queued", "scheduled", "sending", "deferred", "held"})
#: Delivery states that still wait for an attempt.
OPEN_STATES = ("queued", "sending", "deferred")
#: The event each delivery outcome writes (``queued``: tried again later, no event).
EVENT_OF_STATE = {
    "sent": "message.sent",
    "delivered": "message.delivered",
    "bounced": "message.bounced",
    "rejected": "message.rejected",
    "deferred": "message.delayed",
}

#: Takes up to $1 due deliveries for $2 seconds (SKIP LOCKED: workers never wait on
#: each other), with what an attempt needs: the message's envelope and raw bytes,
#: the owner's mailbox status, which recipients are suppressed, and whether the
#: domain is ours ($3: the shared domain; or a domain verified for receiving).
LEASE = """
WITH due AS (
    SELECT id FROM deliveries
    WHERE state IN ('queued', 'deferred', 'sending') AND next_attempt_at <= now()
    ORDER BY next_attempt_at
    LIMIT $1
    FOR UPDATE SKIP LOCKED
), leased AS (
    UPDATE deliveries d SET state = 'sending',
        next_attempt_at = now() + make_interval(secs => $2::float8), updated_at = now()
    FROM due WHERE d.id = due.id
    RETURNING d.id, d.message_id, d.account_id, d.owner_id, d.domain, d.recipients,
        d.attempts, d.expires_at, d.next_attempt_at
)
SELECT l.*, m.pod_id, m.from_address, coalesce(m.return_path, '') AS return_path,
       m.dkim_signed, b.data AS raw, p.status AS owner_status,
       ARRAY(SELECT s.address FROM suppressions s
             WHERE s.account_id = l.account_id AND s.address = ANY(l.recipients)) AS suppressed,
       (l.domain = $3 OR EXISTS (SELECT 1 FROM domains dm
                                 WHERE dm.name = l.domain AND dm.can_receive)) AS local
FROM leased l JOIN messages m ON m.id = l.message_id
JOIN blobs b ON b.sha256 = m.raw_sha256
LEFT JOIN mailbox_policies p ON p.mailbox_id = l.owner_id
"""
SELECT_RAW = """
SELECT m.dkim_signed, b.data FROM messages m JOIN blobs b ON b.sha256 = m.raw_sha256
WHERE m.account_id = $1 AND m.id = $2
"""
#: Stores the signed bytes and points the message at them, unless another worker
#: signed it first, and drops the unsigned blob when nothing else uses it (the
#: message itself is left out by ID: this statement's snapshot still shows it
#: on the old blob): one round trip. Returns how many messages it signed (0 or 1).
STORE_SIGNED = """
WITH blob AS (
    INSERT INTO blobs (sha256, size, data) VALUES ($3, $4, $5) ON CONFLICT (sha256) DO NOTHING
), old AS (
    SELECT raw_sha256 FROM messages WHERE account_id = $1 AND id = $2 AND NOT dkim_signed
    FOR UPDATE
), signed AS (
    UPDATE messages m SET raw_sha256 = $3, size = $4, dkim_signed = true, updated_at = now()
    FROM old WHERE m.account_id = $1 AND m.id = $2
    RETURNING old.raw_sha256 AS unsigned
), gone AS (
    DELETE FROM blobs b USING signed
    WHERE b.sha256 = signed.unsigned AND b.sha256 <> $3
      AND NOT EXISTS (SELECT 1 FROM messages x WHERE x.raw_sha256 = signed.unsigned AND x.id <> $2)
      AND NOT EXISTS (SELECT 1 FROM attachments a WHERE a.sha256 = signed.unsigned)
)
SELECT count(*) FROM signed
"""
#: The message, locked for this transaction, with its attachments (for events).
LOCK_MESSAGE = """
SELECT id, thread_id, account_id, pod_id, owner_id, direction, status, labels, from_address,
    to_addresses, cc_addresses, bcc_addresses, reply_to, subject, preview, extracted_text,
    rfc_message_id, in_reply_to, refs, authentication, size, created_at, updated_at,
    coalesce((SELECT json_agg(json_build_object('id', a.id, 'filename', a.filename,
                  'contentType', a.content_type, 'size', a.size, 'contentId', a.content_id,
                  'disposition', a.disposition) ORDER BY a.position)
              FROM attachments a WHERE a.message_id = messages.id), '[]')::text AS attachment_list
FROM messages WHERE account_id = $1 AND id = $2 AND direction = 'outbound'
FOR UPDATE
"""
#: Records the leased row's outcome, only while the lease is still ours.
UPDATE_LEASED = """
UPDATE deliveries SET state = $3, recipients = $4, attempts = attempts + $5, last_reply = $6,
    next_attempt_at = now() + make_interval(secs => $7::float8), updated_at = now()
WHERE id = $1 AND state = 'sending' AND next_attempt_at = $2
RETURNING id
"""
_TALLY_COLUMNS = """
       count(*) FILTER (WHERE state IN ('queued', 'sending', 'deferred')) AS open,
       count(*) FILTER (WHERE state = 'held') AS held,
       count(*) FILTER (WHERE state = 'deferred') AS deferred,
       count(*) FILTER (WHERE state = 'bounced') AS bounced,
       count(*) FILTER (WHERE state IN ('bounced', 'rejected')) AS failed,
       count(*) FILTER (WHERE state = 'delivered') AS delivered,
       count(*) AS total
"""
#: ``UPDATE_LEASED`` and then the message's deliveries counted by state ($8: the
#: message), in one round trip: the statement's snapshot shows the leased row
#: as it was, so it is counted from what the update returned.
RECORD_LEASED = f"""
WITH kept AS (
    UPDATE deliveries SET state = $3, recipients = $4, attempts = attempts + $5,
        last_reply = $6, next_attempt_at = now() + make_interval(secs => $7::float8),
        updated_at = now()
    WHERE id = $1 AND state = 'sending' AND next_attempt_at = $2
    RETURNING state
), states AS (
    SELECT state FROM deliveries WHERE message_id = $8 AND id <> $1
    UNION ALL SELECT state FROM kept
)
SELECT (SELECT count(*) FROM kept) AS kept, {_TALLY_COLUMNS} FROM states
"""
#: Another group of a split attempt, beside leased delivery $1 (while the lease
#: is ours; its attempt counted as $6 more).
INSERT_SPLIT = """
INSERT INTO deliveries (message_id, account_id, owner_id, domain, recipients, state, attempts,
    next_attempt_at, expires_at, last_reply, created_at)
SELECT message_id, account_id, owner_id, domain, $3, $4, attempts + $7,
    now() + make_interval(secs => $5::float8), expires_at, $6, created_at
FROM deliveries WHERE id = $1 AND state = 'sending' AND next_attempt_at = $2
"""
SELECT_DELIVERIES = """
SELECT id, state, recipients FROM deliveries WHERE message_id = $1 ORDER BY id
"""
SET_DELIVERY = """
UPDATE deliveries SET state = $2, recipients = $3, last_reply = $4, updated_at = now()
WHERE id = $1
"""
INSERT_BOUNCED = """
INSERT INTO deliveries (message_id, account_id, owner_id, domain, recipients, state, attempts,
    next_attempt_at, expires_at, last_reply, created_at)
SELECT message_id, account_id, owner_id, domain, $2, 'bounced', attempts, now(), expires_at, $3,
    created_at
FROM deliveries WHERE id = $1
"""
#: Every still-open delivery of a message that cannot be sent.
REJECT_OPEN = """
UPDATE deliveries SET state = 'rejected', last_reply = $2, updated_at = now()
WHERE message_id = $1 AND state IN ('queued', 'sending', 'deferred', 'held')
RETURNING recipients
"""
#: Hard bounces join the account's suppression list (DESIGN §7.5).
SUPPRESS = """
INSERT INTO suppressions (account_id, address, reason, message_id)
SELECT $1, lower(a), 'hard_bounce', $3 FROM unnest($2::text[]) AS a
ON CONFLICT (account_id, address) DO NOTHING
"""
TALLY = f"SELECT {_TALLY_COLUMNS} FROM deliveries WHERE message_id = $1"
#: The message's status and labels, and its count in ``mail_counts`` ($4
#: delivered, $5 bounced; nothing when both are 0) on the hour it was stored.
SET_MESSAGE_STATE = """
WITH counted AS (
    INSERT INTO mail_counts AS c (owner_id, hour, delivered, bounced)
    SELECT owner_id, date_trunc('hour', created_at), $4, $5 FROM messages
    WHERE id = $1 AND ($4 <> 0 OR $5 <> 0)
    ON CONFLICT (owner_id, hour) DO UPDATE
    SET delivered = c.delivered + excluded.delivered, bounced = c.bounced + excluded.bounced
)
UPDATE messages SET status = $2, labels = $3, updated_at = now() WHERE id = $1
RETURNING updated_at
"""
#: Settled messages on the hour their message was stored (seed 004 stats).
COUNT_SETTLED = """
INSERT INTO mail_counts AS c (owner_id, hour, delivered, bounced)
VALUES ($1, date_trunc('hour', $2::timestamptz), $3, $4)
ON CONFLICT (owner_id, hour) DO UPDATE
SET delivered = c.delivered + $3, bounced = c.bounced + $4
"""
#: Holds only while the mailbox is paused, reading its policy row under a share
#: lock: a resume that commits first is seen; one that commits after waits for
#: this transaction and then finds the row held, so releases it.
POLICY_PAUSED = """
SELECT status = 'paused' FROM mailbox_policies WHERE mailbox_id = $1 FOR SHARE
"""


@dataclass(frozen=True)
class Lease:
    """A delivery taken by this worker until ``lease_until``.

    Attributes:
        recipients: bare addresses at ``domain``, lower case.
        return_path: the envelope sender (``""``: a null sender, RFC 3834 §4).
        raw: the message's stored RFC 5322 bytes (signed when ``dkim_signed``).
        owner_paused: whether the owner is a mailbox whose status is ``paused``.
        suppressed: the recipients on the account's suppression list now.
        local: whether ``domain`` is ours (its mail never leaves the store).
    """

    id: int
    message_id: str
    account_id: str
    owner_id: str
    pod_id: str
    domain: str
    recipients: tuple[str, ...]
    attempts: int
    expires_at: datetime
    lease_until: datetime
    from_address: str
    return_path: str
    dkim_signed: bool
    raw: bytes
    owner_paused: bool
    suppressed: frozenset[str]
    local: bool

    @property
    def owner(self) -> Owner:
        """The inbox or mailbox that sent the message."""
        return Owner(self.owner_id, self.account_id, self.pod_id)


@dataclass(frozen=True)
class Outcome:
    """What became of some of a lease's recipients in one attempt.

    Attributes:
        state: ``sent``, ``delivered``, ``bounced``, ``rejected``, ``deferred``
            (an attempt that failed for now) or ``queued`` (not attempted: tried
            again after ``delay`` seconds without counting an attempt).
        recipients: the addresses it applies to.
        reply: the SMTP reply (``"250 2.0.0 Ok: queued"``) or our own reason,
            in the same shape.
        delay: seconds until the next attempt (``deferred`` and ``queued``).
    """

    state: str
    recipients: tuple[str, ...]
    reply: str
    delay: float = 0.0


@dataclass(frozen=True)
class LocalHandoff:
    """Local recipients' copy, spooled for the ingest worker in the outcome's
    transaction (DESIGN §7.3: the same parsing and authentication as mail from
    outside)."""

    peer: str
    helo: str
    mail_from: str
    recipients: Sequence[Recipient]
    raw: bytes


@dataclass(frozen=True)
class _Tally:
    """A message's deliveries counted by state."""

    open: int
    held: int
    deferred: int
    bounced: int
    failed: int
    delivered: int
    total: int


def _tally_of(row: Any) -> _Tally:
    return _Tally(
        row["open"],
        row["held"],
        row["deferred"],
        row["bounced"],
        row["failed"],
        row["delivered"],
        row["total"],
    )


class _LeaseLost(Exception):
    """The lease ran out and another worker took the delivery."""


def lease_of(row: Any) -> Lease:
    """A ``Lease`` from a ``LEASE`` row."""
    return Lease(
        id=row["id"],
        message_id=row["message_id"],
        account_id=row["account_id"],
        owner_id=row["owner_id"],
        pod_id=row["pod_id"],
        domain=row["domain"],
        recipients=tuple(row["recipients"]),
        attempts=row["attempts"],
        expires_at=row["expires_at"],
        lease_until=row["next_attempt_at"],
        from_address=row["from_address"],
        return_path=row["return_path"],
        dkim_signed=row["dkim_signed"],
        raw=bytes(row["raw"]),
        owner_paused=row["owner_status"] == "paused",
        suppressed=frozenset(row["suppressed"]),
        local=bool(row["local"]),
    )


class DeliveryStore:
    """The ``deliveries`` queue and the outbound side of ``messages``.

    Args:
        pool: the messages service's pool (search_path ``messages``).
    """

    def __init__(self, pool: asyncpg.Pool):
        self._pool = pool

    async def lease(self, limit: int, seconds: float, shared_domain: str) -> list[Lease]:
        """Takes up to ``limit`` due deliveries for ``seconds`` (they are due
        again after that if this worker dies), oldest due first.

        Args:
            shared_domain: the platform's own domain, whose recipients are local.
        """
        rows = await self._pool.fetch(LEASE, limit, seconds, shared_domain)
        return [lease_of(r) for r in rows]

    async def raw(self, account_id: str, message_id: str) -> tuple[bool, bytes]:
        """A message's current ``(dkim_signed, raw bytes)``."""
        row = await self._pool.fetchrow(SELECT_RAW, account_id, message_id)
        return bool(row["dkim_signed"]), bytes(row["data"])

    async def store_signed(self, lease: Lease, signed: bytes, sha256: bytes) -> bytes:
        """Stores ``signed`` as the message's raw bytes, marked DKIM-signed, and
        drops the unsigned blob if nothing else refers to it.

        Returns:
            The message's signed bytes: ``signed``, or those another worker
            stored first (two deliveries of one message may race to sign it).
        """
        stored = await self._pool.fetchval(
            STORE_SIGNED, lease.account_id, lease.message_id, sha256, len(signed), signed
        )
        if stored:
            return signed
        _, raw = await self.raw(lease.account_id, lease.message_id)
        return raw

    async def hold(self, lease: Lease) -> bool:
        """Holds a paused mailbox's delivery (``held``; the message ``held`` with
        event ``message.held``; never dropped, DESIGN §7.5).

        Returns:
            ``True`` when this worker is done with the lease (held, or the lease
            was lost, or the message deleted); ``False`` when the mailbox is no
            longer paused: deliver it.
        """
        async with self._pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval(POLICY_PAUSED, lease.owner_id):
                return False
            message = await self._lock(conn, lease.account_id, lease.message_id)
            if message is None:
                return True
            held = await conn.fetchval(
                UPDATE_LEASED,
                lease.id,
                lease.lease_until,
                "held",
                list(lease.recipients),
                0,
                None,
                0.0,
            )
            if held is not None:
                await self._settle_message(conn, message)
        return True

    async def record(
        self, lease: Lease, outcomes: Sequence[Outcome], handoff: LocalHandoff | None = None
    ) -> bool:
        """Records one attempt's outcomes, their events and suppressions, the
        local handoff if any, and settles the message, in one transaction.

        The first outcome takes the leased row; each other one gets a row of its
        own. ``bounced`` recipients are suppressed (``hard_bounce``).

        Returns:
            ``False`` when the lease was lost (ran out and taken again): nothing
            was recorded.
        """
        try:
            return await self._record(lease, outcomes, handoff)
        except _LeaseLost:
            return False

    async def _record(
        self, lease: Lease, outcomes: Sequence[Outcome], handoff: LocalHandoff | None
    ) -> bool:
        async with self._pool.acquire() as conn, conn.transaction():
            message = await self._lock(conn, lease.account_id, lease.message_id)
            if message is None:
                return False  # deleted meanwhile (the rows went with it)
            first, *others = outcomes
            counted = 0 if first.state == "queued" else 1
            for outcome in others:
                await conn.execute(
                    INSERT_SPLIT,
                    lease.id,
                    lease.lease_until,
                    list(outcome.recipients),
                    outcome.state,
                    outcome.delay,
                    outcome.reply[:1000],
                    counted,
                )
            row = await conn.fetchrow(
                RECORD_LEASED,
                lease.id,
                lease.lease_until,
                first.state,
                list(first.recipients),
                counted,
                first.reply[:1000],
                first.delay,
                lease.message_id,
            )
            if not row["kept"]:
                raise _LeaseLost  # rolls back the split rows, if any
            if handoff is not None:
                payload = orjson.dumps([r.to_json() for r in handoff.recipients]).decode()
                await conn.execute(
                    INSERT_SPOOL,
                    handoff.peer,
                    handoff.helo,
                    handoff.mail_from,
                    payload,
                    handoff.raw,
                )
            bounced = [a for o in outcomes if o.state == "bounced" for a in o.recipients]
            if bounced:
                await conn.execute(SUPPRESS, lease.account_id, bounced, lease.message_id)
            message = await self._settle_message(conn, message, _tally_of(row))
            owner = Owner(message.owner_id, message.account_id, message.pod_id)
            for outcome in outcomes:
                event_type = EVENT_OF_STATE.get(outcome.state)
                if event_type is not None:
                    await write_event(
                        conn, owner, event_type, _event_data(message, outcome.recipients, outcome)
                    )
        return True

    async def fail(self, lease: Lease, reason: str) -> None:
        """Fails the whole message for good (its domain cannot send): every
        open delivery ``rejected``, the message ``failed``, event
        ``message.rejected`` with the reason."""
        async with self._pool.acquire() as conn, conn.transaction():
            message = await self._lock(conn, lease.account_id, lease.message_id)
            if message is None:
                return
            rows = await conn.fetch(REJECT_OPEN, lease.message_id, reason[:1000])
            if not rows:
                return
            labels = [x for x in message.labels if x != "held"]
            await conn.execute(SET_MESSAGE_STATE, message.id, "failed", labels, 0, 0)
            if labels != message.labels:
                await self._relabel_thread(conn, message.thread_id)
            recipients = tuple(a for r in rows for a in r["recipients"])
            outcome = Outcome("rejected", recipients, reason)
            await write_event(
                conn,
                Owner(message.owner_id, message.account_id, message.pod_id),
                "message.rejected",
                _event_data(replace(message, labels=labels), recipients, outcome),
            )

    async def record_bounce_report(
        self,
        conn: asyncpg.Connection,
        owner: Owner,
        message_id: str,
        failed: Sequence[str],
        reply: str,
    ) -> bool:
        """Marks recipients of an outbound message bounced from a delivery
        status notification that arrived later (RFC 3464), in the caller's
        (ingest's) transaction: the recipients' deliveries ``bounced``, the
        addresses suppressed, label ``bounced``, event ``message.bounced``, the
        message ``bounced`` when nothing else was delivered, and its count moved
        from delivered to bounced if it had been counted delivered.

        Args:
            owner: the owner the report was addressed to (its VERP return path).
            message_id: the ``msg_…`` ID the return path names.
            failed: the addresses the report says failed for good; only the
                message's own recipients count (a report cannot suppress others).

        Returns:
            Whether ``message_id`` is an outbound message of ``owner``.
        """
        message = await self._lock(conn, owner.account_id, message_id)
        if message is None or message.owner_id != owner.id:
            return False
        failed_set = {a.lower() for a in failed}
        matched: list[str] = []
        for row in await conn.fetch(SELECT_DELIVERIES, message_id):
            if row["state"] == "bounced":
                continue
            hit = [a for a in row["recipients"] if a in failed_set]
            if not hit:
                continue
            matched.extend(hit)
            rest = [a for a in row["recipients"] if a not in failed_set]
            if rest:
                await conn.execute(SET_DELIVERY, row["id"], row["state"], rest, None)
                await conn.execute(INSERT_BOUNCED, row["id"], hit, reply[:1000])
            else:
                await conn.execute(SET_DELIVERY, row["id"], "bounced", hit, reply[:1000])
        if not matched:
            return True
        settled_statuses = {"sent", "delivered"}
        counted_delivered = message.status in settled_statuses and "bounced" not in message.labels
        await conn.execute(SUPPRESS, owner.account_id, matched, message_id)
        settled = await self._settle_message(conn, message)
        if counted_delivered:
            await conn.execute(COUNT_SETTLED, message.owner_id, message.created_at, -1, 1)
        outcome = Outcome("bounced", tuple(matched), reply)
        await write_event(
            conn, owner, "message.bounced", _event_data(settled, outcome.recipients, outcome)
        )
        return True

    async def _lock(
        self, conn: asyncpg.Connection, account_id: str, message_id: str
    ) -> Message | None:
        row = await conn.fetchrow(LOCK_MESSAGE, account_id, message_id)
        if row is None:
            return None
        attachments = [
            AttachmentMeta(
                a["id"],
                a["filename"],
                a["contentType"],
                a["size"],
                a["contentId"],
                a["disposition"],
            )
            for a in orjson.loads(row["attachment_list"])
        ]
        return message_of(row, attachments)

    async def _settle_message(
        self, conn: asyncpg.Connection, message: Message, tally: _Tally | None = None
    ) -> Message:
        """Derives the message's status and labels from its deliveries (the
        caller holds its row lock) and counts it when its last delivery closes.

        Open: ``held`` if any delivery is held, else ``deferred`` if any is
        deferred, else ``sending``. Settled: ``delivered`` if every delivery was
        delivered locally, ``bounced`` if every one bounced or was rejected, else
        ``sent``. Label ``bounced`` once any recipient bounced; ``held`` while
        any delivery is held. A message settling counts once in ``mail_counts``
        on its own hour: ``delivered`` if nothing bounced, else ``bounced``.
        """
        t = tally or _tally_of(await conn.fetchrow(TALLY, message.id))
        if t.open or t.held:
            status = "held" if t.held else "deferred" if t.deferred else "sending"
        elif t.delivered == t.total:
            status = "delivered"
        elif t.failed == t.total:
            status = "bounced"
        else:
            status = "sent"
        labels = set(message.labels)
        if t.bounced:
            labels.add("bounced")
        if t.held:
            labels.add("held")
        else:
            labels.discard("held")
        new_labels = sorted(labels)
        if status == message.status and new_labels == message.labels:
            return message
        delivered = bounced = 0
        if message.status in OPEN_STATUSES and status not in OPEN_STATUSES:
            if "bounced" in labels or status == "bounced":
                bounced = 1
            else:
                delivered = 1
        updated_at = await conn.fetchval(
            SET_MESSAGE_STATE, message.id, status, new_labels, delivered, bounced
        )
        settled = replace(message, status=status, labels=new_labels, updated_at=updated_at)
        if new_labels != message.labels:
            await self._relabel_thread(conn, message.thread_id)
        if status == "held" and message.status != "held":
            owner = Owner(message.owner_id, message.account_id, message.pod_id)
            await write_event(conn, owner, "message.held", {"message": event_message(settled)})
        return settled

    async def _relabel_thread(self, conn: asyncpg.Connection, thread_id: str) -> None:
        row = await conn.fetchrow(RELABEL_THREAD, thread_id)
        if row is None:
            return
        thread = thread_of(row)
        await write_event(
            conn,
            Owner(thread.owner_id, thread.account_id, thread.pod_id),
            "thread.updated",
            {"thread": {"id": thread.id, "labels": thread.labels, "folderId": thread.folder_id}},
        )


def _event_data(message: Message, recipients: Sequence[str], outcome: Outcome) -> dict[str, Any]:
    """An outbound event's data: the message as events carry it (DESIGN §7.6),
    the recipients the event is about, and the server's (or our) reply."""
    return {
        "message": event_message(message),
        "recipients": list(recipients),
        "reply": outcome.reply,
    }
