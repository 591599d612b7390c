"""SQL of the inboxes service (schema ``inboxes``). Every query filters on
``account_id``, except the two that must see every account: who holds an
address (global uniqueness, seed 003; the answer is compared, never shown) and
the credential check of the IMAP/SMTP front, which starts from an address."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from services.chassis.pagination import Page, page_of
from services.inboxes.models import Holder, Inbox

_COLUMNS = (
    "id, account_id, pod_id, username, domain, email, display_name, state, created_at, updated_at"
)

LOCK_ACCOUNT = "SELECT pg_advisory_xact_lock(hashtext('inboxes:' || $1))"
#: One statement: the account's inbox count (only when there is a limit, $8), the
#: pending inbox if under the limit and its address is free, and its password hash.
#: Always one row: ``account_inboxes`` and the inbox's columns (NULL when none).
#: Under READ COMMITTED the count's snapshot is taken after LOCK_ACCOUNT returned,
#: so it sees every create committed by an earlier holder of the lock.
INSERT_PENDING = f"""
WITH counted AS (
    SELECT CASE WHEN $8::bigint IS NULL THEN 0
                ELSE (SELECT count(*) FROM inboxes WHERE account_id = $2) END AS n
), inbox AS (
    INSERT INTO inboxes (id, account_id, pod_id, username, domain, display_name, state)
    SELECT $1, $2, $3, $4, $5, $6, 'pending' FROM counted
    WHERE $8::bigint IS NULL OR counted.n < $8::bigint
    ON CONFLICT DO NOTHING
    RETURNING {_COLUMNS}
), credentials AS (
    INSERT INTO inbox_credentials (inbox_id, password_hash) SELECT id, $7 FROM inbox
)
SELECT counted.n AS account_inboxes, inbox.* FROM counted LEFT JOIN inbox ON true
"""
SELECT_HOLDERS = """
SELECT lower(email) AS email, id, account_id, pod_id, state FROM inboxes
WHERE lower(email) = ANY($1::text[])
"""
MARK_LIVE = f"""
UPDATE inboxes SET state = 'live', state_changed_at = now()
WHERE account_id = $1 AND id = $2 AND state = 'pending'
RETURNING {_COLUMNS}
"""
DELETE_PENDING = "DELETE FROM inboxes WHERE account_id = $1 AND id = $2 AND state = 'pending'"
SELECT_INBOX = f"""
SELECT {_COLUMNS} FROM inboxes WHERE account_id = $1 AND id = $2 AND state = 'live'
"""
LIST_INBOXES = f"""
SELECT {_COLUMNS} FROM inboxes
WHERE account_id = $1 AND state = 'live'
  AND ($2::text IS NULL OR pod_id = $2)
  AND ($3::text IS NULL OR domain = $3)
  AND ($4::timestamptz IS NULL OR (created_at, id) > ($4, $5::text))
ORDER BY created_at, id
LIMIT $6
"""
UPDATE_DISPLAY_NAME = f"""
UPDATE inboxes SET display_name = $3, updated_at = now()
WHERE account_id = $1 AND id = $2 AND state = 'live'
RETURNING {_COLUMNS}
"""
#: A delete's intent (DESIGN §3): the inbox disappears from reads while its route
#: is released; then FINISH_DELETE, or ROLLBACK_DELETE when the directory is down.
BEGIN_DELETE = f"""
UPDATE inboxes SET state = 'deleting', state_changed_at = now()
WHERE account_id = $1 AND id = $2 AND state = 'live'
RETURNING {_COLUMNS}
"""
FINISH_DELETE = "DELETE FROM inboxes WHERE account_id = $1 AND id = $2 AND state = 'deleting'"
#: Back to live, its route to be claimed again by the sweep (a release whose answer
#: was lost may have tombstoned it).
ROLLBACK_DELETE = """
UPDATE inboxes SET state = 'live', state_changed_at = now(), route_state = 'unrouted'
WHERE account_id = $1 AND id = $2 AND state = 'deleting'
"""
SET_PASSWORD_HASH = """
UPDATE inbox_credentials c SET password_hash = $3, rotated_at = now()
FROM inboxes i
WHERE i.id = c.inbox_id AND i.account_id = $1 AND i.id = $2 AND i.state = 'live'
"""
SELECT_LOGIN = """
SELECT i.id, i.account_id, i.pod_id, c.password_hash
FROM inboxes i JOIN inbox_credentials c ON c.inbox_id = i.id
WHERE lower(i.email) = lower($1) AND i.state = 'live'
"""
COUNT_INBOXES = """
SELECT count(*) FROM inboxes
WHERE account_id = $1
  AND ($2::text IS NULL OR pod_id = $2)
  AND ($3::text IS NULL OR domain = $3)
  AND ($4::text IS NULL OR pod_id <> $4)
"""
#: Creates and deletes a crash left in flight, for the sweep to finish or undo.
SELECT_STALE = """
SELECT id, account_id, lower(email) AS email, state FROM inboxes
WHERE state IN ('pending', 'deleting') AND state_changed_at < now() - make_interval(secs => $1)
ORDER BY state_changed_at
LIMIT $2
"""
#: Live inboxes whose route is yet to be claimed (from before the directory).
SELECT_UNROUTED = """
SELECT id, account_id, pod_id, lower(email) AS email FROM inboxes
WHERE route_state = 'unrouted' AND state = 'live'
ORDER BY created_at, id
LIMIT $1
"""
SET_ROUTE_STATE = """
UPDATE inboxes SET route_state = $3 WHERE account_id = $1 AND id = $2 AND state = 'live'
"""
#: The addresses some inboxes hold, for the directory's sweep (any account).
SELECT_HELD = """
SELECT id, lower(email) AS email, state FROM inboxes
WHERE id = ANY($1::text[]) AND state IN ('pending', 'live')
"""


def _inbox(row: asyncpg.Record) -> Inbox:
    return Inbox(
        id=row["id"],
        account_id=row["account_id"],
        pod_id=row["pod_id"],
        username=row["username"],
        domain=row["domain"],
        email=row["email"],
        display_name=row["display_name"],
        state=row["state"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


@dataclass(frozen=True)
class Unsettled:
    """An inbox a crash left ``pending`` (a create) or ``deleting`` (a delete)."""

    id: str
    account_id: str
    email: str
    state: str


class AddressTaken(Exception):
    """The address was taken between reading its holders and inserting it."""


class InboxStore:
    """Reads and writes the ``inboxes`` schema through the process's pool."""

    def __init__(self, pool: asyncpg.Pool):
        self._pool = pool

    async def holders(self, emails: Sequence[str]) -> dict[str, Holder]:
        """Returns who holds each of ``emails`` (lower case), pending creates included,
        across all accounts: addresses are globally unique (seed 003)."""
        rows = await self._pool.fetch(SELECT_HOLDERS, list(emails))
        return {
            r["email"]: Holder(r["id"], r["account_id"], r["pod_id"], r["state"] == "pending")
            for r in rows
        }

    async def insert_pending(
        self,
        inbox_id: str,
        account_id: str,
        pod_id: str,
        username: str,
        domain: str,
        display_name: str | None,
        password_hash: str,
        limit: int | None,
    ) -> Inbox | None:
        """Inserts a ``pending`` inbox and its password hash if the account is under
        ``limit`` inboxes (pending ones counted, under a per-account lock, so
        concurrent creates cannot overshoot; DESIGN §3).

        With a limit: BEGIN, the lock, one INSERT_PENDING, COMMIT (4 round trips).
        Without one (``None``) nothing is counted, so no lock is needed and the
        single statement is its own transaction (1 round trip).

        Returns:
            The inbox, or ``None`` when the account already has ``limit`` inboxes.

        Raises:
            AddressTaken: another inbox holds the address (the unique index decides).
        """
        args = (inbox_id, account_id, pod_id, username, domain, display_name, password_hash, limit)
        if limit is None:
            row = await self._pool.fetchrow(INSERT_PENDING, *args)
        else:
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute(LOCK_ACCOUNT, account_id)
                row = await conn.fetchrow(INSERT_PENDING, *args)
        assert row is not None
        if row["id"] is None:
            if limit is not None and row["account_inboxes"] >= limit:
                return None
            raise AddressTaken
        return _inbox(row)

    async def mark_live(self, account_id: str, inbox_id: str) -> Inbox | None:
        """Makes a pending inbox live; ``None`` if it is gone (swept)."""
        row = await self._pool.fetchrow(MARK_LIVE, account_id, inbox_id)
        return _inbox(row) if row else None

    async def delete_pending(self, account_id: str, inbox_id: str) -> None:
        """Undoes a pending create (its credentials go with it)."""
        await self._pool.execute(DELETE_PENDING, account_id, inbox_id)

    async def get(self, account_id: str, inbox_id: str) -> Inbox | None:
        """Returns the account's live inbox ``inbox_id``."""
        row = await self._pool.fetchrow(SELECT_INBOX, account_id, inbox_id)
        return _inbox(row) if row else None

    async def list_inboxes(
        self,
        account_id: str,
        pod_id: str | None,
        domain: str | None,
        after: list[object] | None,
        limit: int,
    ) -> Page[Inbox]:
        """Returns up to ``limit`` live inboxes after sort key ``after``, oldest first."""
        created_at, last_id = after if after else (None, None)
        rows = await self._pool.fetch(
            LIST_INBOXES,
            account_id,
            pod_id,
            domain,
            datetime.fromisoformat(str(created_at)) if created_at else None,
            last_id,
            limit + 1,
        )
        return page_of([_inbox(r) for r in rows], limit, lambda i: [i.created_at.isoformat(), i.id])

    async def update_display_name(
        self, account_id: str, inbox_id: str, display_name: str | None
    ) -> Inbox | None:
        """Sets an inbox's display name; ``None`` if there is no such inbox."""
        row = await self._pool.fetchrow(UPDATE_DISPLAY_NAME, account_id, inbox_id, display_name)
        return _inbox(row) if row else None

    async def begin_delete(self, account_id: str, inbox_id: str) -> Inbox | None:
        """Commits a delete's intent: the live inbox becomes ``deleting`` (gone for
        reads); ``None`` if there is no such live inbox."""
        row = await self._pool.fetchrow(BEGIN_DELETE, account_id, inbox_id)
        return _inbox(row) if row else None

    async def finish_delete(self, account_id: str, inbox_id: str) -> None:
        """Deletes a ``deleting`` inbox and its credentials."""
        await self._pool.execute(FINISH_DELETE, account_id, inbox_id)

    async def rollback_delete(self, account_id: str, inbox_id: str) -> None:
        """Makes a ``deleting`` inbox live again, its route to be claimed again."""
        await self._pool.execute(ROLLBACK_DELETE, account_id, inbox_id)

    async def set_password_hash(self, account_id: str, inbox_id: str, password_hash: str) -> bool:
        """Replaces a live inbox's password hash; whether the inbox exists."""
        status = await self._pool.execute(SET_PASSWORD_HASH, account_id, inbox_id, password_hash)
        return status.endswith(" 1")

    async def login(self, email: str) -> tuple[str, str, str, str] | None:
        """Returns ``(inbox_id, account_id, pod_id, password_hash)`` of the live
        inbox at ``email`` (any case), or ``None``."""
        row = await self._pool.fetchrow(SELECT_LOGIN, email)
        if row is None:
            return None
        return row["id"], row["account_id"], row["pod_id"], row["password_hash"]

    async def count(
        self, account_id: str, pod_id: str | None, domain: str | None, outside_pod_id: str | None
    ) -> int:
        """Counts the account's inboxes, pending ones included (DESIGN §3), in a pod
        and/or on a domain, leaving out ``outside_pod_id``'s."""
        return int(
            await self._pool.fetchval(COUNT_INBOXES, account_id, pod_id, domain, outside_pod_id)
        )

    async def stale(self, older_than_seconds: float, limit: int) -> list[Unsettled]:
        """Inboxes ``pending`` or ``deleting`` for longer than ``older_than_seconds``."""
        rows = await self._pool.fetch(SELECT_STALE, older_than_seconds, limit)
        return [Unsettled(r["id"], r["account_id"], r["email"], r["state"]) for r in rows]

    async def unrouted(self, limit: int) -> list[tuple[str, str, str, str]]:
        """Live inboxes whose route is yet to be claimed: ``(id, account_id,
        pod_id, email)``, oldest first."""
        rows = await self._pool.fetch(SELECT_UNROUTED, limit)
        return [(r["id"], r["account_id"], r["pod_id"], r["email"]) for r in rows]

    async def set_route_state(self, account_id: str, inbox_id: str, route_state: str) -> None:
        """Records a live inbox's ``routed`` or ``conflict`` route state."""
        await self._pool.execute(SET_ROUTE_STATE, account_id, inbox_id, route_state)

    async def held_addresses(self, inbox_ids: Sequence[str]) -> list[tuple[str, str, bool]]:
        """``(inbox_id, email, live)`` of those of ``inbox_ids`` that are pending
        or live, in any account."""
        rows = await self._pool.fetch(SELECT_HELD, list(inbox_ids))
        return [(r["id"], r["email"], r["state"] == "live") for r in rows]
