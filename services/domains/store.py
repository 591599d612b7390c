"""SQL of the domains service (schema ``domains``). Every query filters on
``account_id``, except the cross-account uniqueness of verified names, which the
database enforces with a partial unique index."""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime

import asyncpg

from services.chassis.errors import MailplaneError
from services.chassis.pagination import Page, page_of
from services.domains.models import DnsRecord, Domain

_COLUMNS = (
    "id, account_id, name, pod_id, state, target_pod_id, status, records::text AS records, "
    "can_send, can_receive, created_at, verified_at"
)

INSERT_DOMAIN = f"""
INSERT INTO domains (id, account_id, name, pod_id, state, records, dkim_private_key_encrypted)
VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7)
RETURNING {_COLUMNS}
"""
LOCK_ACCOUNT = "SELECT pg_advisory_xact_lock(hashtext('domains:' || $1))"
COUNT_ACCOUNT_DOMAINS = "SELECT count(*) FROM domains WHERE account_id = $1"
SELECT_DOMAIN = f"""
SELECT {_COLUMNS} FROM domains
WHERE account_id = $1 AND (id = $2 OR name = $2) AND state <> 'pending'
"""
LIST_DOMAINS = f"""
SELECT {_COLUMNS} FROM domains
WHERE account_id = $1 AND state <> 'pending'
  AND ($2::text IS NULL OR pod_id = $2)
  AND ($3::text IS NULL OR status = $3)
  AND ($4::timestamptz IS NULL OR (created_at, id) > ($4, $5::text))
  AND ($7::text IS NULL OR pod_id IS NULL OR pod_id = $7)
ORDER BY created_at, id
LIMIT $6
"""
MARK_LIVE = """
UPDATE domains SET state = 'live', state_changed_at = now()
WHERE account_id = $1 AND id = $2 AND state = 'pending'
"""
DELETE_PENDING = "DELETE FROM domains WHERE account_id = $1 AND id = $2 AND state = 'pending'"
COUNT_DOMAINS = """
SELECT count(*) FROM domains
WHERE account_id = $1
  AND ($2::text IS NULL OR pod_id = $2 OR (state = 'rescoping' AND target_pod_id = $2))
"""
BEGIN_INTENT = f"""
UPDATE domains SET state = $3, target_pod_id = $4, state_changed_at = now()
WHERE account_id = $1 AND id = $2 AND state = 'live'
RETURNING {_COLUMNS}
"""
FINISH_RESCOPE = f"""
UPDATE domains SET pod_id = target_pod_id, target_pod_id = NULL, state = 'live',
    state_changed_at = now(), updated_at = now()
WHERE account_id = $1 AND id = $2 AND state = 'rescoping'
RETURNING {_COLUMNS}
"""
ROLLBACK_INTENT = """
UPDATE domains SET state = 'live', target_pod_id = NULL, state_changed_at = now()
WHERE account_id = $1 AND id = $2 AND state IN ('rescoping', 'deleting')
"""
DELETE_DELETING = """
DELETE FROM domains WHERE account_id = $1 AND id = $2 AND state = 'deleting' RETURNING id
"""
INSERT_ATTEMPT = """
INSERT INTO verification_attempts (domain_id, account_id, records, verified)
VALUES ($1, $2, $3::jsonb, $4)
"""
RECORD_VERIFICATION = f"""
UPDATE domains SET status = $3, records = $4::jsonb, can_send = $5, can_receive = $6,
    verified_at = CASE WHEN $3 = 'verified' THEN now() ELSE verified_at END, updated_at = now()
WHERE account_id = $1 AND id = $2
RETURNING {_COLUMNS}
"""
#: The account's domain a DKIM signature is asked for: its ID and whether it can send.
SELECT_SENDING_DOMAIN = """
SELECT id, can_send FROM domains WHERE account_id = $1 AND name = $2 AND state <> 'pending'
"""
SELECT_DKIM_KEY = """
SELECT dkim_private_key_encrypted FROM domains WHERE account_id = $1 AND id = $2
"""
SWEEP_PENDING = """
DELETE FROM domains WHERE state = 'pending' AND state_changed_at < now() - make_interval(secs => $1)
RETURNING id
"""
SWEEP_INTENTS = """
UPDATE domains SET state = 'live', target_pod_id = NULL, state_changed_at = now()
WHERE state IN ('rescoping', 'deleting') AND state_changed_at < now() - make_interval(secs => $1)
RETURNING id
"""


def _records_json(records: tuple[DnsRecord, ...]) -> str:
    return json.dumps([dataclasses.asdict(r) for r in records])


def _domain(row: asyncpg.Record) -> Domain:
    return Domain(
        id=row["id"],
        account_id=row["account_id"],
        name=row["name"],
        pod_id=row["pod_id"],
        state=row["state"],
        target_pod_id=row["target_pod_id"],
        status=row["status"],
        records=tuple(DnsRecord(**r) for r in json.loads(row["records"])),
        can_send=row["can_send"],
        can_receive=row["can_receive"],
        created_at=row["created_at"],
        verified_at=row["verified_at"],
    )


class DomainStore:
    """Reads and writes the ``domains`` schema through the process's pool."""

    def __init__(self, pool: asyncpg.Pool):
        self._pool = pool

    async def insert(
        self,
        domain_id: str,
        account_id: str,
        name: str,
        pod_id: str | None,
        records: tuple[DnsRecord, ...],
        dkim_private_encrypted: bytes,
        limit: int | None,
    ) -> Domain | None:
        """Inserts a domain if the account is under ``limit`` (counted under a
        per-account lock, so concurrent creates cannot overshoot). Pod-scoped
        domains start ``pending`` (DESIGN §3 child side), account-wide ``live``.

        Returns:
            The domain, or ``None`` when the account already has ``limit`` domains.

        Raises:
            MailplaneError: ``domain_exists`` if the account has the name.
        """
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(LOCK_ACCOUNT, account_id)
            count = await conn.fetchval(COUNT_ACCOUNT_DOMAINS, account_id)
            if limit is not None and count >= limit:
                return None
            try:
                row = await conn.fetchrow(
                    INSERT_DOMAIN,
                    domain_id,
                    account_id,
                    name,
                    pod_id,
                    "pending" if pod_id else "live",
                    _records_json(records),
                    dkim_private_encrypted,
                )
            except asyncpg.UniqueViolationError:
                raise MailplaneError(
                    "domain_exists",
                    f"{name} is already a domain of this account; fetch it by name.",
                    {"domain": name},
                ) from None
        return _domain(row)

    async def mark_live(self, account_id: str, domain_id: str) -> None:
        """Makes a pending domain live."""
        await self._pool.execute(MARK_LIVE, account_id, domain_id)

    async def delete_pending(self, account_id: str, domain_id: str) -> None:
        """Undoes a pending create."""
        await self._pool.execute(DELETE_PENDING, account_id, domain_id)

    async def get(self, account_id: str, ref: str) -> Domain | None:
        """Returns the account's domain with ID or name ``ref`` (never a pending one)."""
        row = await self._pool.fetchrow(SELECT_DOMAIN, account_id, ref)
        return _domain(row) if row else None

    async def list_domains(
        self,
        account_id: str,
        pod_id: str | None,
        status: str | None,
        after: list[object] | None,
        limit: int,
        usable_by_pod: str | None = None,
    ) -> Page[Domain]:
        """Returns up to ``limit`` domains after sort key ``after``, oldest first;
        with ``usable_by_pod``, only account-wide ones and that pod's."""
        created_at, last_id = after if after else (None, None)
        rows = await self._pool.fetch(
            LIST_DOMAINS,
            account_id,
            pod_id,
            status,
            datetime.fromisoformat(str(created_at)) if created_at else None,
            last_id,
            limit + 1,
            usable_by_pod,
        )
        return page_of(
            [_domain(r) for r in rows], limit, lambda d: [d.created_at.isoformat(), d.id]
        )

    async def count_domains(self, account_id: str, pod_id: str | None) -> int:
        """Counts domains scoped or being re-scoped to a pod, pending ones included."""
        return int(await self._pool.fetchval(COUNT_DOMAINS, account_id, pod_id))

    async def begin_intent(
        self, account_id: str, domain_id: str, intent: str, target_pod_id: str | None = None
    ) -> Domain | None:
        """Commits a ``rescoping`` or ``deleting`` intent on a live domain; returns it,
        or ``None`` when it is not live (another intent is in flight)."""
        row = await self._pool.fetchrow(BEGIN_INTENT, account_id, domain_id, intent, target_pod_id)
        return _domain(row) if row else None

    async def finish_rescope(self, account_id: str, domain_id: str) -> Domain | None:
        """Applies a ``rescoping`` intent's target scope."""
        row = await self._pool.fetchrow(FINISH_RESCOPE, account_id, domain_id)
        return _domain(row) if row else None

    async def rollback_intent(self, account_id: str, domain_id: str) -> None:
        """Rolls a ``rescoping`` or ``deleting`` intent back."""
        await self._pool.execute(ROLLBACK_INTENT, account_id, domain_id)

    async def delete_deleting(self, account_id: str, domain_id: str) -> bool:
        """Deletes a domain in ``deleting`` (its attempts go with it)."""
        return await self._pool.fetchval(DELETE_DELETING, account_id, domain_id) is not None

    async def record_verification(
        self,
        account_id: str,
        domain_id: str,
        records: tuple[DnsRecord, ...],
        status: str,
        can_send: bool,
        can_receive: bool,
    ) -> Domain | None:
        """Stores an attempt and the domain's new status in one transaction.

        Returns:
            The domain, or ``None`` when it vanished meanwhile.

        Raises:
            MailplaneError: ``domain_claimed`` when another account holds the name
                verified (the attempt is still stored; the domain is unchanged).
        """
        payload = _records_json(records)
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                verified = status == "verified"
                await conn.execute(INSERT_ATTEMPT, domain_id, account_id, payload, verified)
                row = await conn.fetchrow(
                    RECORD_VERIFICATION,
                    account_id,
                    domain_id,
                    status,
                    payload,
                    can_send,
                    can_receive,
                )
        except asyncpg.UniqueViolationError:
            await self._pool.execute(INSERT_ATTEMPT, domain_id, account_id, payload, True)
            raise MailplaneError(
                "domain_claimed",
                "Another account has already verified this domain; a domain can be verified "
                "by one account only.",
            ) from None
        return _domain(row) if row else None

    async def sending_domain(self, account_id: str, name: str) -> tuple[str, bool] | None:
        """Returns ``(domain_id, can_send)`` of the account's domain ``name`` (never
        a pending one), or ``None``."""
        row = await self._pool.fetchrow(SELECT_SENDING_DOMAIN, account_id, name)
        return (row["id"], row["can_send"]) if row else None

    async def dkim_key(self, account_id: str, domain_id: str) -> bytes | None:
        """Returns the domain's encrypted DKIM private key, or ``None`` when the
        domain is gone."""
        value = await self._pool.fetchval(SELECT_DKIM_KEY, account_id, domain_id)
        return bytes(value) if value is not None else None

    async def sweep(self, older_than_seconds: float) -> tuple[list[str], list[str]]:
        """Undoes stale pending creates and rolls back stale intents; returns both ID lists."""
        pending = [r["id"] for r in await self._pool.fetch(SWEEP_PENDING, older_than_seconds)]
        intents = [r["id"] for r in await self._pool.fetch(SWEEP_INTENTS, older_than_seconds)]
        return pending, intents
