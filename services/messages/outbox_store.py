"""SQL of sending (schema ``messages``; DESIGN §7.5): who sends and whether it
may, idempotency keys, send-rate windows, suppressions, drafts, holds and
releases of a paused mailbox's mail, and the counters behind send statistics.

Every query filters on ``account_id`` except the hold and release of a mailbox's
mail, which the mailboxes service drives with the service credential.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import orjson

from services.chassis.pagination import Page, page_of
from services.messages.models import Owner, message_of
from services.messages.store import event_message, write_event

#: The sending address of a live inbox or mailbox, whether it is paused, and whether
#: its domain can send (the shared domain $3 always can).
SELECT_SENDER = """
SELECT r.owner_id, r.account_id, r.pod_id, r.address, r.domain, p.status, p.display_name,
       (r.domain = $3 OR coalesce(d.can_send AND d.account_id = r.account_id, false))
           AS can_send
FROM routes r
LEFT JOIN mailbox_policies p ON p.mailbox_id = r.owner_id
LEFT JOIN domains d ON d.name = r.domain
WHERE r.owner_id = $1 AND r.account_id = $2 AND r.state = 'live' AND r.kind <> 'catch_all'
LIMIT 1
"""
#: Takes an idempotency key: a new one, one older than 24 h, or one left in flight
#: for a minute by a request that died. Returns a row only when taken.
CLAIM_KEY = """
INSERT INTO idempotency_keys AS k (account_id, key, request_sha256) VALUES ($1, $2, $3)
ON CONFLICT (account_id, key) DO UPDATE
SET request_sha256 = EXCLUDED.request_sha256, response = NULL, created_at = now()
WHERE k.created_at < now() - interval '24 hours'
   OR (k.response IS NULL AND k.created_at < now() - interval '1 minute')
RETURNING true
"""
SELECT_KEY = """
SELECT request_sha256, response FROM idempotency_keys WHERE account_id = $1 AND key = $2
"""
FINISH_KEY = "UPDATE idempotency_keys SET response = $3 WHERE account_id = $1 AND key = $2"
FORGET_KEY = """
DELETE FROM idempotency_keys WHERE account_id = $1 AND key = $2 AND response IS NULL
"""
FORGET_OLD_KEYS = "DELETE FROM idempotency_keys WHERE created_at < now() - interval '24 hours'"
#: Counts one send in the owner's current minute and day windows and its hour of
#: seed 004 stats; returns both windows. The rows are the owner's, so a send runs
#: it last in its transaction (their locks are held until commit).
COUNT_SEND = """
WITH sent AS (
    INSERT INTO mail_counts AS c (owner_id, hour, sends) VALUES ($1, date_trunc('hour', now()), 1)
    ON CONFLICT (owner_id, hour) DO UPDATE SET sends = c.sends + 1
)
INSERT INTO send_counts AS s (owner_id, window_kind, window_start, n)
VALUES ($1, 'minute', date_trunc('minute', now()), 1), ($1, 'day', date_trunc('day', now()), 1)
ON CONFLICT (owner_id, window_kind, window_start) DO UPDATE SET n = s.n + 1
RETURNING window_kind, n, extract(epoch FROM window_start + CASE window_kind
    WHEN 'minute' THEN interval '1 minute' ELSE interval '1 day' END - now()) AS seconds_left
"""
FORGET_OLD_COUNTS = "DELETE FROM send_counts WHERE window_start < now() - interval '2 days'"
SELECT_SUPPRESSED = """
SELECT address FROM suppressions WHERE account_id = $1 AND address = ANY($2::text[])
ORDER BY address LIMIT 1
"""
INSERT_SUPPRESSION = """
INSERT INTO suppressions (account_id, address, reason) VALUES ($1, $2, 'manual')
ON CONFLICT (account_id, address) DO UPDATE SET address = EXCLUDED.address
RETURNING address, reason, message_id, created_at
"""
DELETE_SUPPRESSION = "DELETE FROM suppressions WHERE account_id = $1 AND address = $2"
_DRAFT_COLUMNS = (
    "id, account_id, pod_id, owner_id, reply_to_message_id, to_addresses, cc_addresses,"
    " bcc_addresses, reply_to, subject, text_body, html_body, attachments::text AS attachments,"
    " headers::text AS headers, labels, send_at, created_at, updated_at"
)
INSERT_DRAFT = f"""
INSERT INTO drafts (id, account_id, pod_id, owner_id, reply_to_message_id, to_addresses,
    cc_addresses, bcc_addresses, reply_to, subject, text_body, html_body, attachments, headers,
    labels, send_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13::jsonb, $14::jsonb, $15, $16)
RETURNING {_DRAFT_COLUMNS}
"""
UPDATE_DRAFT = f"""
UPDATE drafts SET reply_to_message_id = $3, to_addresses = $4, cc_addresses = $5,
    bcc_addresses = $6, reply_to = $7, subject = $8, text_body = $9, html_body = $10,
    labels = $11, send_at = $12, updated_at = now()
WHERE account_id = $1 AND id = $2
RETURNING {_DRAFT_COLUMNS}
"""
SELECT_DRAFT = f"SELECT {_DRAFT_COLUMNS} FROM drafts WHERE account_id = $1 AND id = $2"
TAKE_DRAFT = f"DELETE FROM drafts WHERE account_id = $1 AND id = $2 RETURNING {_DRAFT_COLUMNS}"
DELETE_DRAFT = "DELETE FROM drafts WHERE account_id = $1 AND id = $2"
#: A paused mailbox's queued and deferred mail is held (never its auto-replies,
#: which go out while it is paused; seed 004). One row per held message.
HOLD = """
WITH held AS (
    UPDATE deliveries d SET state = 'held', updated_at = now()
    FROM messages m
    WHERE d.owner_id = $1 AND d.state IN ('queued', 'deferred') AND m.id = d.message_id
      AND m.return_path <> ''
    RETURNING d.message_id
)
UPDATE messages SET status = 'held',
    labels = ARRAY(SELECT DISTINCT x FROM unnest(labels || '{held}'::text[]) x ORDER BY x),
    updated_at = now()
WHERE id IN (SELECT message_id FROM held)
RETURNING *
"""
#: On resume, held mail goes back to the queue: due at once, or at its send_at.
RELEASE = """
WITH released AS (
    UPDATE deliveries SET state = CASE WHEN attempts > 0 THEN 'deferred' ELSE 'queued' END,
        updated_at = now()
    WHERE owner_id = $1 AND state = 'held'
    RETURNING message_id
)
UPDATE messages SET
    status = CASE WHEN send_at > now() THEN 'scheduled' ELSE 'queued' END,
    labels = array_remove(labels, 'held'),
    updated_at = now()
WHERE id IN (SELECT message_id FROM released)
RETURNING *
"""
RELABEL_THREADS = """
UPDATE threads SET
    labels = coalesce((SELECT array_agg(DISTINCT x ORDER BY x)
                       FROM messages m, unnest(m.labels) x WHERE m.thread_id = threads.id), '{}'),
    updated_at = now()
WHERE id = ANY($1::text[])
"""
#: Seed 004's counters over [now - $3, now] for one owner, plus the all-time sends.
SELECT_STATS = """
SELECT coalesce(sum(sends), 0) AS total,
       coalesce(sum(sends) FILTER (WHERE hour >= date_trunc('hour', now() - $3::interval)), 0)
           AS sends,
       coalesce(sum(delivered) FILTER (WHERE hour >= date_trunc('hour', now() - $3::interval)), 0)
           AS delivered,
       coalesce(sum(bounced) FILTER (WHERE hour >= date_trunc('hour', now() - $3::interval)), 0)
           AS bounced,
       coalesce(sum(complained) FILTER (WHERE hour >= date_trunc('hour', now() - $3::interval)),
           0) AS complained,
       (SELECT count(*) FROM messages WHERE account_id = $1 AND owner_id = $2
            AND direction = 'inbound' AND created_at >= now() - $3::interval) AS inbound,
       (SELECT max(created_at) FROM messages WHERE account_id = $1 AND owner_id = $2
            AND direction = 'outbound') AS last_send_at,
       (SELECT count(*) FROM suppressions WHERE account_id = $1) AS suppressions
FROM mail_counts WHERE owner_id = $2
"""
SELECT_DAILY_SENDS = """
SELECT to_char(d.day, 'YYYY-MM-DD') AS day, coalesce(sum(c.sends), 0) AS count
FROM generate_series(date_trunc('day', now() - $2::interval + interval '1 hour'),
                     date_trunc('day', now()), interval '1 day') AS d(day)
LEFT JOIN mail_counts c ON c.owner_id = $1 AND date_trunc('day', c.hour) = d.day
GROUP BY d.day ORDER BY d.day
"""


@dataclass(frozen=True)
class SenderRow:
    """Who sends: the owner, its address and domain, a mailbox's status and
    display name (``None`` for an inbox), and whether its domain can send."""

    owner: Owner
    address: str
    domain: str
    status: str | None
    display_name: str | None
    can_send: bool


@dataclass(frozen=True)
class Suppression:
    """A suppressed address of the account."""

    address: str
    reason: str
    message_id: str | None
    created_at: datetime


@dataclass
class Draft:
    """A stored draft; ``attachments`` are ``{"filename", "contentType", "sha256",
    "size", "contentId", "disposition"}`` with the bytes in ``blobs``."""

    id: str
    account_id: str
    pod_id: str
    owner_id: str
    reply_to_message_id: str | None
    to: list[str]
    cc: list[str]
    bcc: list[str]
    reply_to: list[str]
    subject: str
    text: str | None
    html: str | None
    attachments: list[dict[str, Any]]
    headers: dict[str, str]
    labels: list[str]
    send_at: datetime | None
    created_at: datetime
    updated_at: datetime


def _draft_of(row: Any) -> Draft:
    return Draft(
        id=row["id"],
        account_id=row["account_id"],
        pod_id=row["pod_id"],
        owner_id=row["owner_id"],
        reply_to_message_id=row["reply_to_message_id"],
        to=list(row["to_addresses"]),
        cc=list(row["cc_addresses"]),
        bcc=list(row["bcc_addresses"]),
        reply_to=list(row["reply_to"]),
        subject=row["subject"],
        text=row["text_body"],
        html=row["html_body"],
        attachments=orjson.loads(row["attachments"]),
        headers=orjson.loads(row["headers"]),
        labels=list(row["labels"]),
        send_at=row["send_at"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _suppression_of(row: Any) -> Suppression:
    return Suppression(row["address"], row["reason"], row["message_id"], row["created_at"])


async def hold_mail(conn: asyncpg.Connection, owner: Owner) -> int:
    """Holds a paused mailbox's queued and deferred mail, with a ``message.held``
    event per message, in the caller's transaction (seed 004). Returns how many."""
    rows = await conn.fetch(HOLD, owner.id)
    await _moved(conn, owner, rows, "message.held")
    return len(rows)


async def release_mail(conn: asyncpg.Connection, owner: Owner) -> int:
    """Puts a resumed mailbox's held mail back in the queue, with a
    ``message.released`` event per message, in the caller's transaction."""
    rows = await conn.fetch(RELEASE, owner.id)
    await _moved(conn, owner, rows, "message.released")
    return len(rows)


async def _moved(conn: asyncpg.Connection, owner: Owner, rows: list[Any], event: str) -> None:
    if not rows:
        return
    await conn.execute(RELABEL_THREADS, list({r["thread_id"] for r in rows}))
    for row in rows:
        await write_event(conn, owner, event, {"message": event_message(message_of(row))})


class OutboxStore:
    """The sending tables of the ``messages`` schema.

    Args:
        pool: the service's pool (search_path ``messages``).
    """

    def __init__(self, pool: asyncpg.Pool):
        self._pool = pool

    async def sender(self, account_id: str, owner_id: str, shared_domain: str) -> SenderRow | None:
        """The live inbox or mailbox ``owner_id`` of the account, as a sender."""
        row = await self._pool.fetchrow(SELECT_SENDER, owner_id, account_id, shared_domain)
        if row is None:
            return None
        return SenderRow(
            Owner(row["owner_id"], row["account_id"], row["pod_id"]),
            row["address"],
            row["domain"],
            row["status"],
            row["display_name"],
            row["can_send"],
        )

    async def claim_key(
        self, account_id: str, key: str, request_sha256: bytes
    ) -> tuple[bool, bytes | None, bytes | None]:
        """Takes an idempotency key for a request.

        Returns:
            ``(taken, stored_request_sha256, stored_response)``: taken, or the
            stored hash and response (``None`` while in flight) of the first use.
        """
        if await self._pool.fetchval(CLAIM_KEY, account_id, key, request_sha256):
            return True, None, None
        row = await self._pool.fetchrow(SELECT_KEY, account_id, key)
        if row is None:  # deleted between the two statements: the first use failed
            return await self.claim_key(account_id, key, request_sha256)
        return False, bytes(row["request_sha256"]), row["response"]

    async def forget_key(self, account_id: str, key: str) -> None:
        """Frees a key whose request failed, so a retry may use it."""
        await self._pool.execute(FORGET_KEY, account_id, key)

    @staticmethod
    async def finish_key(
        conn: asyncpg.Connection, account_id: str, key: str, response: bytes
    ) -> None:
        """Records a request's response under its key, in the send's transaction."""
        await conn.execute(FINISH_KEY, account_id, key, response)

    @staticmethod
    async def count_send(conn: asyncpg.Connection, owner_id: str) -> dict[str, tuple[int, float]]:
        """Counts one send in the caller's transaction; returns ``{"minute"|"day":
        (sends in the window, seconds until it ends)}``."""
        rows = await conn.fetch(COUNT_SEND, owner_id)
        return {r["window_kind"]: (r["n"], float(r["seconds_left"])) for r in rows}

    async def suppressed(self, account_id: str, addresses: Sequence[str]) -> str | None:
        """The first of ``addresses`` (bare, lower case) the account suppresses."""
        return await self._pool.fetchval(SELECT_SUPPRESSED, account_id, list(addresses))  # type: ignore[no-any-return]

    async def add_suppression(self, account_id: str, address: str) -> Suppression:
        """Suppresses ``address`` (``manual``; an existing entry is kept as it is)."""
        return _suppression_of(await self._pool.fetchrow(INSERT_SUPPRESSION, account_id, address))

    async def remove_suppression(self, account_id: str, address: str) -> bool:
        """Removes a suppression; whether there was one."""
        done = await self._pool.execute(DELETE_SUPPRESSION, account_id, address)
        return bool(done.endswith(" 1"))

    async def list_suppressions(
        self, account_id: str, resume: list[Any] | None, limit: int
    ) -> Page[Suppression]:
        """A page of the account's suppressions, newest first."""
        sql = (
            "SELECT address, reason, message_id, created_at FROM suppressions WHERE account_id = $1"
        )
        args: list[Any] = [account_id]
        if resume:
            sql += " AND (created_at, address) < ($2, $3::text)"
            args += [datetime.fromisoformat(resume[0]), resume[1]]
        sql += f" ORDER BY created_at DESC, address DESC LIMIT ${len(args) + 1}"
        rows = [_suppression_of(r) for r in await self._pool.fetch(sql, *args, limit + 1)]
        return page_of(rows, limit, lambda s: [s.created_at.isoformat(), s.address])

    async def insert_draft(self, draft: Draft) -> Draft:
        """Stores a new draft (its attachments' blobs must be stored already)."""
        row = await self._pool.fetchrow(
            INSERT_DRAFT,
            draft.id,
            draft.account_id,
            draft.pod_id,
            draft.owner_id,
            draft.reply_to_message_id,
            draft.to,
            draft.cc,
            draft.bcc,
            draft.reply_to,
            draft.subject,
            draft.text,
            draft.html,
            orjson.dumps(draft.attachments).decode(),
            orjson.dumps(draft.headers).decode(),
            draft.labels,
            draft.send_at,
        )
        return _draft_of(row)

    async def update_draft(self, draft: Draft) -> Draft | None:
        """Writes a draft's editable fields; ``None`` when it is gone."""
        row = await self._pool.fetchrow(
            UPDATE_DRAFT,
            draft.account_id,
            draft.id,
            draft.reply_to_message_id,
            draft.to,
            draft.cc,
            draft.bcc,
            draft.reply_to,
            draft.subject,
            draft.text,
            draft.html,
            draft.labels,
            draft.send_at,
        )
        return _draft_of(row) if row else None

    async def draft(self, account_id: str, draft_id: str) -> Draft | None:
        """The account's draft ``draft_id``."""
        row = await self._pool.fetchrow(SELECT_DRAFT, account_id, draft_id)
        return _draft_of(row) if row else None

    @staticmethod
    async def take_draft(conn: asyncpg.Connection, account_id: str, draft_id: str) -> Draft | None:
        """Deletes a draft being sent, in the send's transaction; ``None`` when a
        concurrent send took it first."""
        row = await conn.fetchrow(TAKE_DRAFT, account_id, draft_id)
        return _draft_of(row) if row else None

    async def delete_draft(self, account_id: str, draft_id: str) -> bool:
        """Deletes a draft; whether there was one."""
        done = await self._pool.execute(DELETE_DRAFT, account_id, draft_id)
        return bool(done.endswith(" 1"))

    async def list_drafts(
        self,
        account_id: str,
        pod_id: str | None,
        owner_ids: Sequence[str] | None,
        resume: list[Any] | None,
        limit: int,
    ) -> Page[Draft]:
        """A page of drafts, latest change first, of a pod, some owners, or all."""
        sql = f"SELECT {_DRAFT_COLUMNS} FROM drafts WHERE account_id = $1"
        args: list[Any] = [account_id]
        if pod_id is not None:
            args.append(pod_id)
            sql += f" AND pod_id = ${len(args)}"
        if owner_ids is not None:
            args.append(list(owner_ids))
            sql += f" AND owner_id = ANY(${len(args)}::text[])"
        if resume:
            args += [datetime.fromisoformat(resume[0]), resume[1]]
            sql += f" AND (updated_at, id) < (${len(args) - 1}, ${len(args)}::text)"
        sql += f" ORDER BY updated_at DESC, id DESC LIMIT ${len(args) + 1}"
        rows = [_draft_of(r) for r in await self._pool.fetch(sql, *args, limit + 1)]
        return page_of(rows, limit, lambda d: [d.updated_at.isoformat(), d.id])

    async def blob(self, sha256: bytes) -> bytes | None:
        """A stored blob's bytes."""
        return await self._pool.fetchval("SELECT data FROM blobs WHERE sha256 = $1", sha256)  # type: ignore[no-any-return]

    async def put_blob(self, sha256: bytes, data: bytes) -> None:
        """Stores bytes once by SHA-256."""
        await self._pool.execute(
            "INSERT INTO blobs (sha256, size, data) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            sha256,
            len(data),
            data,
        )

    async def stats(
        self, account_id: str, owner_id: str, period: timedelta
    ) -> tuple[dict[str, Any], list[tuple[str, int]]]:
        """Seed 004's counters of one owner over ``period`` and its sends per day."""
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(SELECT_STATS, account_id, owner_id, period)
            days = await conn.fetch(SELECT_DAILY_SENDS, owner_id, period)
        return dict(row), [(d["day"], d["count"]) for d in days]

    async def sweep(self) -> None:
        """Forgets idempotency keys past 24 h and send windows past two days."""
        await self._pool.execute(FORGET_OLD_KEYS)
        await self._pool.execute(FORGET_OLD_COUNTS)
