"""SQL of the IMAP front (DESIGN §7.1): folders, UIDs and modification sequences
over the same ``messages`` rows that REST and gRPC read.

Each message's folder, UID and modseq are kept by the triggers of migration
``0010_add_imap_uids`` on every insert, relabel and delete, whichever process
writes; this module only reads them and changes labels. Every query filters on
the account and the owner (the inbox) a login authenticated as.

Folders (RFC 6154 special use): ``INBOX`` (inbound), ``Sent`` (outbound),
``Archive`` (label ``archived``), ``Junk`` (label ``spam``) and ``Trash`` (label
``trash``), in that order of precedence from the last: a trashed message is in
Trash whatever else it carries.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from services.messages.models import Owner, thread_of
from services.messages.store import RELABEL_THREAD, write_event

#: The folders of an inbox, in LIST order, with their RFC 6154 attribute.
FOLDERS: dict[str, bytes | None] = {
    "INBOX": None,
    "Sent": b"\\Sent",
    "Archive": b"\\Archive",
    "Junk": b"\\Junk",
    "Trash": b"\\Trash",
}

_ROW_COLUMNS = "id, imap_uid AS uid, labels, imap_flags, created_at, thread_id, size"

#: What changed in a folder after modseq ``$4``: messages new or changed there
#: ('m'), UIDs that left it ('x', only when ``$5``), the owner's counter ('n') and
#: the highest modseq whose expunge records were pruned ('p'): one statement, so
#: one snapshot; every change numbered up to 'n' is in it (the counter's row lock
#: orders an owner's numbers by commit).
SELECT_CHANGES = f"""
SELECT 'm' AS kind, {_ROW_COLUMNS} FROM messages
WHERE account_id = $1 AND owner_id = $2 AND imap_folder = $3 AND imap_modseq > $4
UNION ALL
SELECT 'x', NULL, uid, NULL, NULL, NULL, NULL, NULL FROM imap_expunges
WHERE account_id = $1 AND owner_id = $2 AND folder = $3 AND modseq > $4 AND $5
UNION ALL
SELECT 'n', NULL, last_value, NULL, NULL, NULL, NULL, NULL FROM imap_owners
WHERE account_id = $1 AND owner_id = $2
UNION ALL
SELECT 'p', NULL, expunges_pruned_through, NULL, NULL, NULL, NULL, NULL FROM imap_owners
WHERE account_id = $1 AND owner_id = $2
"""
#: Deletes up to ``$2`` expunge records older than ``$1`` seconds, and raises
#: each of their owners' ``expunges_pruned_through`` to the highest modseq
#: deleted, in one statement (so a session never sees the records gone but the
#: mark not raised). A maintenance sweep over every owner.
PRUNE_EXPUNGES = """
WITH gone AS (
    DELETE FROM imap_expunges
    WHERE (owner_id, folder, modseq, uid) IN (
        SELECT owner_id, folder, modseq, uid FROM imap_expunges
        WHERE created_at < now() - make_interval(secs => $1)
        LIMIT $2
    )
    RETURNING account_id, owner_id, modseq
), marks AS (
    UPDATE imap_owners o SET expunges_pruned_through = g.modseq
    FROM (SELECT account_id, owner_id, max(modseq) AS modseq FROM gone
          GROUP BY account_id, owner_id) g
    WHERE o.account_id = g.account_id AND o.owner_id = g.owner_id
      AND o.expunges_pruned_through < g.modseq
)
SELECT count(*) FROM gone
"""
SELECT_LAST_VALUE = """
SELECT last_value FROM imap_owners WHERE account_id = $1 AND owner_id = $2
"""
SELECT_UID_VALIDITY = """
SELECT uid_validity FROM imap_owners WHERE account_id = $1 AND owner_id = $2
"""
#: UIDVALIDITY of an owner, made on first use (RFC 3501 §2.3.1.1: it never changes).
ENSURE_OWNER = """
WITH made AS (
    INSERT INTO imap_owners (owner_id, account_id) VALUES ($2, $1)
    ON CONFLICT (owner_id) DO NOTHING
    RETURNING uid_validity
)
SELECT uid_validity FROM made
UNION ALL
SELECT uid_validity FROM imap_owners WHERE account_id = $1 AND owner_id = $2
LIMIT 1
"""
#: SELECT/STATUS counts of a folder: messages, unread ones, the sequence number of
#: the first unread, and the counter (UIDNEXT is beyond it).
SELECT_SUMMARY = """
WITH f AS (
    SELECT imap_uid, 'unread' = ANY(labels) AS unread FROM messages
    WHERE account_id = $1 AND owner_id = $2 AND imap_folder = $3
)
SELECT (SELECT count(*) FROM f) AS total,
       (SELECT count(*) FROM f WHERE unread) AS unseen,
       (SELECT count(*) FROM f WHERE imap_uid <= (SELECT min(imap_uid) FROM f WHERE unread))
           AS first_unseen,
       coalesce((SELECT last_value FROM imap_owners
                 WHERE account_id = $1 AND owner_id = $2), 0) AS last_value
"""
SELECT_BY_UIDS = f"""
SELECT {_ROW_COLUMNS} FROM messages
WHERE account_id = $1 AND owner_id = $2 AND imap_folder = $3 AND imap_uid = ANY($4::bigint[])
ORDER BY imap_uid
"""
LOCK_BY_UIDS = f"""
SELECT {_ROW_COLUMNS} FROM messages
WHERE account_id = $1 AND owner_id = $2 AND imap_folder = $3 AND imap_uid = ANY($4::bigint[])
ORDER BY imap_uid
FOR UPDATE
"""
SELECT_RAWS = """
SELECT m.id, b.data FROM messages m JOIN blobs b ON b.sha256 = m.raw_sha256
WHERE m.account_id = $1 AND m.owner_id = $2 AND m.id = ANY($3::text[])
"""
#: The stored bytes of messages up to their first CRLF CRLF (the end of the header
#: block, RFC 5322 §2.1), cut out by the database so the body never leaves it; a
#: message without one yields its first 3 bytes, which the caller rejects.
SELECT_HEADERS = """
SELECT m.id, substring(b.data FROM 1 FOR position(decode('0d0a0d0a', 'hex') IN b.data) + 3)
    AS head
FROM messages m JOIN blobs b ON b.sha256 = m.raw_sha256
WHERE m.account_id = $1 AND m.owner_id = $2 AND m.id = ANY($3::text[])
"""
#: Sets a message's labels and IMAP flags; the trigger moves it between folders.
SET_LABELS_AND_FLAGS = f"""
UPDATE messages SET
    labels = ARRAY(SELECT DISTINCT x FROM unnest(labels || $4::text[]) x
                   WHERE NOT x = ANY($5::text[]) ORDER BY x),
    imap_flags = $6::text[],
    updated_at = now()
WHERE account_id = $1 AND owner_id = $2 AND id = $3
RETURNING {_ROW_COLUMNS}, imap_folder
"""


@dataclass(frozen=True)
class Row:
    """A message as IMAP sees it: ID, UID, labels, IMAP-only flags, internal
    date, thread and size in bytes."""

    id: str
    uid: int
    labels: tuple[str, ...]
    imap_flags: tuple[str, ...]
    created_at: datetime
    thread_id: str
    size: int


def _row(record: Any) -> Row:
    return Row(
        record["id"],
        record["uid"],
        tuple(record["labels"]),
        tuple(record["imap_flags"]),
        record["created_at"],
        record["thread_id"],
        record["size"],
    )


@dataclass(frozen=True)
class Changes:
    """What changed in a folder since a modseq: rows new or changed, UIDs gone,
    and the modseq the caller has now seen. With ``complete``, ``rows`` are all
    the folder's messages and ``expunged`` is empty: expunge records the caller
    had not seen were pruned, so it must drop every UID it knows that is not
    among ``rows``."""

    rows: list[Row]
    expunged: list[int]
    modseq: int
    complete: bool = False


@dataclass(frozen=True)
class Summary:
    """A folder's counts for SELECT and STATUS (RFC 3501 §6.3.1, §6.3.10)."""

    total: int
    unseen: int
    first_unseen: int | None
    next_uid: int


@dataclass(frozen=True)
class Relabel:
    """One message's label change: labels to add and remove, and its IMAP-only
    flags as they should be afterwards."""

    message_id: str
    add: tuple[str, ...]
    remove: tuple[str, ...]
    imap_flags: tuple[str, ...]


class ImapStore:
    """The IMAP front's reads and writes of the ``messages`` schema.

    Args:
        pool: the process's pool (search_path ``messages``).
    """

    #: Owners whose UIDVALIDITY the process keeps (it never changes).
    VALIDITY_CACHE_SIZE = 65536

    def __init__(self, pool: asyncpg.Pool):
        self._pool = pool
        self._validity: OrderedDict[tuple[str, str], int] = OrderedDict()

    async def uid_validity(self, owner: Owner) -> int:
        """The owner's UIDVALIDITY (the same for each of its folders; UIDs are
        unique across them). It never changes (RFC 3501 §2.3.1.1), so after the
        first login a login reads it from the process, not the database; the
        row is made (a write) only on an owner's first login ever."""
        key = (owner.account_id, owner.id)
        value = self._validity.get(key)
        if value is None:
            value = await self._pool.fetchval(SELECT_UID_VALIDITY, *key)
            if value is None:
                value = await self._pool.fetchval(ENSURE_OWNER, *key)
            self._validity[key] = value = int(value)
            if len(self._validity) > self.VALIDITY_CACHE_SIZE:
                self._validity.popitem(last=False)
        else:
            self._validity.move_to_end(key)
        return value

    async def last_value(self, owner: Owner) -> int:
        """The owner's counter: the highest UID or modseq handed out so far."""
        value = await self._pool.fetchval(SELECT_LAST_VALUE, owner.account_id, owner.id)
        return int(value or 0)

    async def changes(self, owner: Owner, folder: str, since: int | None) -> Changes:
        """Messages of ``folder`` changed after modseq ``since`` (all of them when
        ``None``), UIDs that left it after ``since``, and the new modseq."""
        records = await self._pool.fetch(
            SELECT_CHANGES, owner.account_id, owner.id, folder, since or 0, since is not None
        )
        rows, expunged, modseq, pruned = [], [], since or 0, 0
        for record in records:
            if record["kind"] == "m":
                rows.append(_row(record))
            elif record["kind"] == "x":
                expunged.append(record["uid"])
            elif record["kind"] == "n":
                modseq = max(modseq, record["uid"])
            else:
                pruned = record["uid"]
        if since is not None and pruned > since:
            # Some of what left the folder after `since` is no longer recorded.
            full = await self.changes(owner, folder, None)
            return Changes(full.rows, [], full.modseq, complete=True)
        return Changes(rows, expunged, modseq, complete=since is None)

    async def prune_expunges(self, older_than: float, batch: int = 10_000) -> int:
        """Deletes expunge records older than ``older_than`` seconds, in batches
        of ``batch`` (each its own statement); sessions that had not seen them
        resynchronise in full (``changes``).

        Returns:
            How many records were deleted.
        """
        deleted = 0
        while True:
            count = int(await self._pool.fetchval(PRUNE_EXPUNGES, older_than, batch))
            deleted += count
            if count < batch:
                return deleted

    async def summary(self, owner: Owner, folder: str) -> Summary:
        """The folder's counts."""
        record = await self._pool.fetchrow(SELECT_SUMMARY, owner.account_id, owner.id, folder)
        return Summary(
            record["total"],
            record["unseen"],
            record["first_unseen"] or None,
            record["last_value"] + 1,
        )

    async def by_uids(self, owner: Owner, folder: str, uids: Sequence[int]) -> list[Row]:
        """The folder's messages among ``uids``, by UID."""
        records = await self._pool.fetch(
            SELECT_BY_UIDS, owner.account_id, owner.id, folder, list(uids)
        )
        return [_row(r) for r in records]

    async def raws(self, owner: Owner, message_ids: Sequence[str]) -> dict[str, bytes]:
        """The RFC 5322 bytes of the owner's ``message_ids``."""
        records = await self._pool.fetch(SELECT_RAWS, owner.account_id, owner.id, list(message_ids))
        return {r["id"]: bytes(r["data"]) for r in records}

    async def headers(self, owner: Owner, message_ids: Sequence[str]) -> dict[str, bytes]:
        """The owner's ``message_ids``, each up to and including its first CRLF
        CRLF (its first 3 bytes if it has none)."""
        records = await self._pool.fetch(
            SELECT_HEADERS, owner.account_id, owner.id, list(message_ids)
        )
        return {r["id"]: bytes(r["head"]) for r in records}

    async def relabel(
        self, owner: Owner, folder: str, uids: Sequence[int], plan: Any
    ) -> dict[int, tuple[Row, str]]:
        """Changes the labels of the folder's messages among ``uids`` in one
        transaction, as ``plan(row)`` says (a ``Relabel``, or ``None`` to leave
        it), and refreshes their threads' labels with a ``thread.updated`` event
        each (DESIGN §7.6).

        Returns:
            ``{old uid: (row afterwards, folder afterwards)}`` for each message
            found; a message that moved folder has a new UID there.
        """
        out: dict[int, tuple[Row, str]] = {}
        async with self._pool.acquire() as conn, conn.transaction():
            records = await conn.fetch(LOCK_BY_UIDS, owner.account_id, owner.id, folder, list(uids))
            threads: set[str] = set()
            for record in records:
                row = _row(record)
                change: Relabel | None = plan(row)
                if change is None:
                    out[row.uid] = (row, folder)
                    continue
                updated = await conn.fetchrow(
                    SET_LABELS_AND_FLAGS,
                    owner.account_id,
                    owner.id,
                    row.id,
                    list(change.add),
                    list(change.remove),
                    list(change.imap_flags),
                )
                after = _row(updated)
                out[row.uid] = (after, updated["imap_folder"])
                if after.labels != row.labels:
                    threads.add(row.thread_id)
            for thread_id in sorted(threads):
                thread_row = await conn.fetchrow(RELABEL_THREAD, thread_id)
                if thread_row is None:
                    continue
                thread = thread_of(thread_row)
                await write_event(
                    conn,
                    Owner(thread.owner_id, thread.account_id, thread.pod_id),
                    "thread.updated",
                    {
                        "thread": {
                            "id": thread.id,
                            "labels": thread.labels,
                            "folderId": thread.folder_id,
                        }
                    },
                )
        return out
