"""SQL of the route directory (schema ``messages``, tables ``routes`` and
``domains``; DESIGN §7.2). The directory spans accounts by design: an address is
unique across all of them, so these statements filter on the address or the
owner, never on an account."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg
import orjson

from services.messages.models import MailboxPolicy, Owner, message_of
from services.messages.outbox_store import hold_mail, release_mail
from services.messages.store import event_message, write_event

_COLUMNS = "address, domain, kind, owner_id, account_id, pod_id, state"
#: A pending claim: inserted, or taken over from a tombstone its own pod may
#: reclaim (within the window) or anyone may (after it). Returns no row when the
#: address is held.
CLAIM = f"""
INSERT INTO routes AS r (address, domain, kind, owner_id, account_id, pod_id, state)
VALUES ($1, $2, $3, $4, $5, $6, 'pending')
ON CONFLICT (address) DO UPDATE
SET domain = EXCLUDED.domain, kind = EXCLUDED.kind, owner_id = EXCLUDED.owner_id,
    account_id = EXCLUDED.account_id, pod_id = EXCLUDED.pod_id, state = 'pending',
    state_changed_at = now(), tombstone_until = NULL
WHERE r.state = 'tombstone'
  AND (r.tombstone_until <= now() OR (r.pod_id = EXCLUDED.pod_id
                                      AND r.account_id = EXCLUDED.account_id))
RETURNING {_COLUMNS}
"""
#: The owner's route made live: its pending claim, or the address inserted live
#: when the claim is gone (swept) and the address free or reclaimable.
CONFIRM = f"""
INSERT INTO routes AS r (address, domain, kind, owner_id, account_id, pod_id, state)
VALUES ($1, $2, $3, $4, $5, $6, 'live')
ON CONFLICT (address) DO UPDATE
SET domain = EXCLUDED.domain, kind = EXCLUDED.kind, owner_id = EXCLUDED.owner_id,
    account_id = EXCLUDED.account_id, pod_id = EXCLUDED.pod_id, state = 'live',
    state_changed_at = now(), tombstone_until = NULL
WHERE (r.owner_id = EXCLUDED.owner_id AND r.state = 'pending')
   OR (r.state = 'tombstone'
       AND (r.tombstone_until <= now() OR (r.pod_id = EXCLUDED.pod_id
                                           AND r.account_id = EXCLUDED.account_id)))
RETURNING {_COLUMNS}
"""
SELECT_ROUTE = f"SELECT {_COLUMNS} FROM routes WHERE address = $1"
#: Pending claims are removed; live inbox routes become tombstones for $3 days;
#: other live routes are removed. ``$2`` NULL: every route of the owner.
RELEASE = """
WITH gone AS (
    DELETE FROM routes
    WHERE owner_id = $1 AND ($2::text IS NULL OR address = $2)
      AND (state = 'pending' OR (state = 'live' AND kind <> 'inbox'))
    RETURNING address
), buried AS (
    UPDATE routes SET state = 'tombstone', state_changed_at = now(),
        tombstone_until = now() + make_interval(days => $3)
    WHERE owner_id = $1 AND ($2::text IS NULL OR address = $2)
      AND state = 'live' AND kind = 'inbox'
    RETURNING address
)
SELECT (SELECT count(*) FROM gone) + (SELECT count(*) FROM buried)
"""
#: Serializes an owner's deletion with the ingest of its mail (``ingest`` takes it shared).
LOCK_OWNER = "SELECT pg_advisory_xact_lock(hashtextextended('owner:' || $1, 0))"
SELECT_OWNER_ACCOUNT = "SELECT account_id FROM routes WHERE owner_id = $1 LIMIT 1"
MARK_DELETED = "INSERT INTO deleted_owners (owner_id) VALUES ($1) ON CONFLICT DO NOTHING"
UNMARK_DELETED = "DELETE FROM deleted_owners WHERE owner_id = ANY($1::text[])"
#: An inbox's blobs, before its threads go (messages_dedupe_key leads with owner_id).
SELECT_OWNER_BLOBS = """
SELECT m.raw_sha256 FROM messages m WHERE m.owner_id = $1
UNION SELECT a.sha256 FROM attachments a JOIN messages m ON m.id = a.message_id
WHERE m.owner_id = $1
"""
#: An inbox's threads with their messages, attachments and references (ON DELETE CASCADE).
PURGE_OWNER_THREADS = """
DELETE FROM threads WHERE id IN (SELECT thread_id FROM messages WHERE owner_id = $1)
"""
DELETE_ORPHAN_BLOBS = """
DELETE FROM blobs b WHERE b.sha256 = ANY($1::bytea[])
  AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.raw_sha256 = b.sha256)
  AND NOT EXISTS (SELECT 1 FROM attachments a WHERE a.sha256 = b.sha256)
"""
#: What only a live owner needs: auto-reply slots, rate counters, send windows
#: and drafts (which nothing could send any more; DESIGN §7.4).
FORGET_OWNER_COUNTERS = """
WITH a AS (DELETE FROM auto_replies WHERE owner_id = $1),
     s AS (DELETE FROM send_counts WHERE owner_id = $1),
     d AS (DELETE FROM drafts WHERE owner_id = $1)
DELETE FROM inbound_counts WHERE owner_id = $1
"""
#: A deleted mailbox's messages and threads, labelled ``trash`` (seed 004).
TRASH_OWNER = """
WITH trashed AS (
    UPDATE messages SET labels = ARRAY(SELECT DISTINCT x FROM unnest(labels || '{trash}') x
                                       ORDER BY x),
        updated_at = now()
    WHERE owner_id = $1 AND NOT 'trash' = ANY(labels)
    RETURNING thread_id
)
UPDATE threads SET labels = ARRAY(SELECT DISTINCT x FROM unnest(labels || '{trash}') x
                                  ORDER BY x),
    updated_at = now()
WHERE id IN (SELECT thread_id FROM trashed)
"""
#: A deleted mailbox's mail not yet handed on is not sent: its waiting deliveries
#: are rejected and their messages fail (one being delivered right now finishes).
STOP_OWNER_DELIVERIES = """
WITH stopped AS (
    UPDATE deliveries SET state = 'rejected', updated_at = now(),
        last_reply = '550 5.7.0 Not sent: its mailbox was deleted'
    WHERE owner_id = $1 AND state IN ('queued', 'deferred', 'held')
    RETURNING message_id
)
UPDATE messages SET status = 'failed', labels = array_remove(labels, 'held'), updated_at = now()
WHERE id IN (SELECT message_id FROM stopped)
RETURNING *
"""
SELECT_DOMAIN_FOR_UPDATE = "SELECT account_id, can_receive FROM domains WHERE name = $1 FOR UPDATE"
SET_DOMAIN_OWNER = """
INSERT INTO domains (name, account_id, can_receive, can_send) VALUES ($1, $2, true, $3)
ON CONFLICT (name) DO UPDATE
SET account_id = $2, can_receive = true, can_send = $3, updated_at = now()
"""
#: The recorded owner's domain stops receiving; whether it can send is kept as told.
STOP_DOMAIN = """
UPDATE domains SET can_receive = false, can_send = $3, updated_at = now()
WHERE name = $1 AND account_id = $2
"""
SELECT_POLICY_FOR_UPDATE = """
SELECT version, status FROM mailbox_policies WHERE mailbox_id = $1 FOR UPDATE
"""
#: A mailbox's policy, replaced only by a higher version.
UPSERT_POLICY = """
INSERT INTO mailbox_policies AS p (mailbox_id, account_id, pod_id, version, status, address,
    display_name, inbound_rate_limit, paused_auto_reply, reply_to, rules)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11::jsonb)
ON CONFLICT (mailbox_id) DO UPDATE
SET account_id = EXCLUDED.account_id, pod_id = EXCLUDED.pod_id, version = EXCLUDED.version,
    status = EXCLUDED.status, address = EXCLUDED.address, display_name = EXCLUDED.display_name,
    inbound_rate_limit = EXCLUDED.inbound_rate_limit,
    paused_auto_reply = EXCLUDED.paused_auto_reply, reply_to = EXCLUDED.reply_to,
    rules = EXCLUDED.rules, updated_at = now()
WHERE p.version < EXCLUDED.version
RETURNING mailbox_id
"""
FORGET_DOMAIN = "DELETE FROM domains WHERE name = $1 AND account_id = $2"
#: Removes another account's route on a custom domain whose verified owner is $3.
EVICT_SQUATTER = """
DELETE FROM routes r USING domains d
WHERE r.address = $1 AND r.owner_id = $2 AND d.name = r.domain
  AND d.account_id = $3 AND r.account_id <> $3
"""
DELETE_EXPIRED_TOMBSTONES = """
DELETE FROM routes WHERE state = 'tombstone' AND tombstone_until <= now() RETURNING address
"""
SELECT_STALE_CLAIMS = """
SELECT address, kind, owner_id FROM routes
WHERE state = 'pending' AND state_changed_at < now() - make_interval(secs => $1)
ORDER BY state_changed_at
LIMIT $2
"""
CONFIRM_STALE = """
WITH live AS (
    UPDATE routes SET state = 'live', state_changed_at = now()
    WHERE address = $1 AND owner_id = $2 AND state = 'pending'
    RETURNING owner_id
)
DELETE FROM deleted_owners WHERE owner_id IN (SELECT owner_id FROM live)
"""
DROP_STALE = """
DELETE FROM routes
WHERE address = $1 AND owner_id = $2 AND state = 'pending'
  AND state_changed_at < now() - make_interval(secs => $3)
"""


@dataclass(frozen=True)
class Route:
    """One row of the directory."""

    address: str
    domain: str
    kind: str
    owner_id: str
    account_id: str
    pod_id: str
    state: str


@dataclass(frozen=True)
class StaleClaim:
    """A pending claim older than the sweep's threshold."""

    address: str
    kind: str
    owner_id: str


def _route(row: asyncpg.Record) -> Route:
    return Route(
        address=row["address"],
        domain=row["domain"],
        kind=row["kind"],
        owner_id=row["owner_id"],
        account_id=row["account_id"],
        pod_id=row["pod_id"],
        state=row["state"],
    )


class DirectoryStore:
    """Reads and writes the route directory through the process's pool."""

    def __init__(self, pool: asyncpg.Pool):
        self._pool = pool

    async def claim(self, route: Route) -> Route | None:
        """Inserts ``route`` as a pending claim (or takes over a reclaimable
        tombstone); ``None`` when the address is held."""
        row = await self._pool.fetchrow(CLAIM, *_values(route))
        return _route(row) if row else None

    async def confirm(self, route: Route) -> Route | None:
        """Makes the owner's route live; ``None`` when another owner holds it or
        it is already live. A live owner is not deleted: its mark is removed (a
        delete its owner service rolled back)."""
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(CONFIRM, *_values(route))
            await conn.execute(UNMARK_DELETED, [route.owner_id])
        return _route(row) if row else None

    async def get(self, address: str) -> Route | None:
        """The route of ``address``, whatever its state."""
        row = await self._pool.fetchrow(SELECT_ROUTE, address)
        return _route(row) if row else None

    async def release(self, owner_id: str, address: str | None, reclaim_days: int) -> int:
        """Releases the owner's routes (one address, or all); how many changed.

        Releasing all of them deletes the owner (DESIGN §7.4), in the same
        transaction: an inbox's messages, threads, attachments and blobs no
        longer used are purged; a mailbox's threads are trashed and its mail not
        yet sent is not sent (``message.rejected``). Idempotent.
        """
        if address is not None:
            return int(await self._pool.fetchval(RELEASE, owner_id, address, reclaim_days))
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(LOCK_OWNER, owner_id)
            released = int(await conn.fetchval(RELEASE, owner_id, None, reclaim_days))
            await conn.execute(MARK_DELETED, owner_id)
            if owner_id.startswith("inb_"):
                blobs = [r[0] for r in await conn.fetch(SELECT_OWNER_BLOBS, owner_id)]
                await conn.execute(PURGE_OWNER_THREADS, owner_id)
                await conn.execute(DELETE_ORPHAN_BLOBS, blobs)
            else:
                await conn.execute(TRASH_OWNER, owner_id)
                for row in await conn.fetch(STOP_OWNER_DELIVERIES, owner_id):
                    stopped = message_of(row)
                    await write_event(
                        conn,
                        Owner(owner_id, stopped.account_id, stopped.pod_id),
                        "message.rejected",
                        {"message": event_message(stopped), "reason": "mailbox_deleted"},
                    )
            await conn.execute(FORGET_OWNER_COUNTERS, owner_id)
        return released

    async def set_domain_status(
        self, name: str, account_id: str, routes_deliver: bool, can_send: bool
    ) -> None:
        """Makes ``account_id`` the domain's delivering owner, or stops its
        delivery; records ``can_send`` on the row when the account is (or
        becomes) its owner, and on no row otherwise (an account that never
        verified a name holds no address on it). A change of reception writes
        ``domain.verified`` or ``domain.degraded`` in the same transaction
        (DESIGN §7.6)."""
        async with self._pool.acquire() as conn, conn.transaction():
            before = await conn.fetchrow(SELECT_DOMAIN_FOR_UPDATE, name)
            previous = (
                before["account_id"] if before is not None and before["can_receive"] else None
            )
            if routes_deliver:
                await conn.execute(SET_DOMAIN_OWNER, name, account_id, can_send)
                if previous != account_id:
                    await _domain_event(conn, "domain.verified", name, account_id, True)
                if previous is not None and previous != account_id:
                    # Another account verified the name: the previous owner's stops receiving.
                    await _domain_event(conn, "domain.degraded", name, previous, False)
            elif before is not None and before["account_id"] == account_id:
                await conn.execute(STOP_DOMAIN, name, account_id, can_send)
                if before["can_receive"]:
                    await _domain_event(conn, "domain.degraded", name, account_id, False)

    async def set_mailbox_policy(self, policy: MailboxPolicy) -> bool:
        """Records a mailbox's policy unless a newer version is recorded; a status
        entering or leaving ``paused`` writes ``mailbox.paused`` or
        ``mailbox.resumed`` in the same transaction. Returns whether it was recorded."""
        async with self._pool.acquire() as conn, conn.transaction():
            before = await conn.fetchrow(SELECT_POLICY_FOR_UPDATE, policy.mailbox_id)
            if before is not None and before["version"] >= policy.version:
                return False
            recorded = await conn.fetchval(
                UPSERT_POLICY,
                policy.mailbox_id,
                policy.account_id,
                policy.pod_id,
                policy.version,
                policy.status,
                policy.address,
                policy.display_name,
                policy.inbound_rate_limit,
                policy.paused_auto_reply,
                policy.reply_to,
                orjson.dumps(policy.rules).decode(),
            )
            if recorded is None:
                return False
            was_paused = before is not None and before["status"] == "paused"
            owner = Owner(policy.mailbox_id, policy.account_id, policy.pod_id)
            if policy.status == "paused" and not was_paused:
                await hold_mail(conn, owner)
            elif was_paused and policy.status != "paused":
                await release_mail(conn, owner)
            if before is not None and was_paused != (policy.status == "paused"):
                await write_event(
                    conn,
                    Owner(policy.mailbox_id, policy.account_id, policy.pod_id),
                    "mailbox.resumed" if was_paused else "mailbox.paused",
                    {
                        "mailbox": {
                            "id": policy.mailbox_id,
                            "address": policy.address,
                            "status": policy.status,
                        }
                    },
                )
        return True

    async def evict_squatter(self, address: str, holder_id: str, owner_account_id: str) -> bool:
        """Removes ``holder_id``'s route of ``address`` if it belongs to another
        account than the one that verified the address's domain; whether it did."""
        done = await self._pool.execute(EVICT_SQUATTER, address, holder_id, owner_account_id)
        return bool(done.endswith(" 1"))

    async def forget_domain(self, name: str, account_id: str) -> None:
        """Removes the domain's row if ``account_id`` owns it."""
        await self._pool.execute(FORGET_DOMAIN, name, account_id)

    async def delete_expired_tombstones(self) -> list[str]:
        """Deletes tombstones past their reclaim window; their addresses."""
        return [r["address"] for r in await self._pool.fetch(DELETE_EXPIRED_TOMBSTONES)]

    async def stale_claims(self, older_than_seconds: float, limit: int) -> list[StaleClaim]:
        """Pending claims older than ``older_than_seconds``, oldest first."""
        rows = await self._pool.fetch(SELECT_STALE_CLAIMS, older_than_seconds, limit)
        return [StaleClaim(r["address"], r["kind"], r["owner_id"]) for r in rows]

    async def confirm_stale(self, claims: Sequence[StaleClaim]) -> None:
        """Makes these pending claims live (their owners are live)."""
        if claims:
            await self._pool.executemany(CONFIRM_STALE, [(c.address, c.owner_id) for c in claims])

    async def drop_stale(self, claims: Sequence[StaleClaim], older_than_seconds: float) -> None:
        """Removes these pending claims if still pending and stale (their owners
        do not hold the address)."""
        if claims:
            await self._pool.executemany(
                DROP_STALE, [(c.address, c.owner_id, older_than_seconds) for c in claims]
            )


async def _domain_event(
    conn: asyncpg.Connection, event_type: str, name: str, account_id: str, can_receive: bool
) -> None:
    await write_event(
        conn,
        None,
        event_type,
        {"domain": {"name": name, "canReceive": can_receive}},
        account_id=account_id,
    )


def _values(route: Route) -> tuple[str, str, str, str, str, str]:
    return (
        route.address,
        route.domain,
        route.kind,
        route.owner_id,
        route.account_id,
        route.pod_id,
    )
