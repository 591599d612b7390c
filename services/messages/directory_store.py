"""SQL of the route directory (schema ``messages``, tables ``routes`` and
``domains``; DESIGN §7.2). The directory spans accounts by design: an address is
unique across all of them, so these statements filter on the address or the
owner, never on an account."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

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
SET_DOMAIN_OWNER = """
INSERT INTO domains (name, account_id, can_receive) VALUES ($1, $2, true)
ON CONFLICT (name) DO UPDATE SET account_id = $2, can_receive = true, updated_at = now()
"""
STOP_DOMAIN = """
UPDATE domains SET can_receive = false, updated_at = now()
WHERE name = $1 AND account_id = $2 AND can_receive
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
UPDATE routes SET state = 'live', state_changed_at = now()
WHERE address = $1 AND owner_id = $2 AND state = 'pending'
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
        it is already live."""
        row = await self._pool.fetchrow(CONFIRM, *_values(route))
        return _route(row) if row else None

    async def get(self, address: str) -> Route | None:
        """The route of ``address``, whatever its state."""
        row = await self._pool.fetchrow(SELECT_ROUTE, address)
        return _route(row) if row else None

    async def release(self, owner_id: str, address: str | None, reclaim_days: int) -> int:
        """Releases the owner's routes (one address, or all); how many changed."""
        return int(await self._pool.fetchval(RELEASE, owner_id, address, reclaim_days))

    async def set_domain_status(self, name: str, account_id: str, routes_deliver: bool) -> None:
        """Makes ``account_id`` the domain's delivering owner, or stops its delivery."""
        if routes_deliver:
            await self._pool.execute(SET_DOMAIN_OWNER, name, account_id)
        else:
            await self._pool.execute(STOP_DOMAIN, name, account_id)

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


def _values(route: Route) -> tuple[str, str, str, str, str, str]:
    return (
        route.address,
        route.domain,
        route.kind,
        route.owner_id,
        route.account_id,
        route.pod_id,
    )
