"""SQL of the pods service: accounts, pods and API keys in the ``pods`` schema.

Every pod and key query filters on ``account_id``. A pod reference (``ref``) is a
pod ID or a clientId; they cannot collide because a clientId shaped like a pod ID
is refused at creation. Unique violations become catalog errors here.
"""

from __future__ import annotations

from datetime import datetime

import asyncpg

from services.chassis.errors import MailplaneError
from services.chassis.pagination import Page, page_of
from services.pods.models import Account, ApiKey, Pod

_POD_COLUMNS = "id, account_id, client_id, name, is_default, state, created_at, updated_at"

INSERT_ACCOUNT = """
INSERT INTO accounts (id, name, plan) VALUES ($1, $2, $3)
RETURNING id, name, plan, state, created_at
"""
SELECT_ACCOUNT = "SELECT id, name, plan, state, created_at FROM accounts WHERE id = $1"
UPDATE_ACCOUNT_PLAN = """
UPDATE accounts SET plan = $2, updated_at = now() WHERE id = $1
RETURNING id, name, plan, state, created_at
"""
UPDATE_ACCOUNT_STATE = """
UPDATE accounts SET state = $2, updated_at = now() WHERE id = $1
RETURNING id, name, plan, state, created_at
"""

INSERT_POD = f"""
INSERT INTO pods (id, account_id, client_id, name, is_default) VALUES ($1, $2, $3, $4, $5)
RETURNING {_POD_COLUMNS}
"""
SELECT_POD = f"""
SELECT {_POD_COLUMNS} FROM pods WHERE account_id = $1 AND (id = $2 OR client_id = $2)
"""
LIST_PODS = f"""
SELECT {_POD_COLUMNS} FROM pods
WHERE account_id = $1
  AND ($2::boolean IS NULL OR (NOT is_default, created_at, id) > ($2, $3::timestamptz, $4::text))
ORDER BY NOT is_default, created_at, id
LIMIT $5
"""
UPDATE_POD = f"""
UPDATE pods SET
    client_id = CASE WHEN $3 THEN $4 ELSE client_id END,
    name = CASE WHEN $5 THEN $6 ELSE name END,
    updated_at = now()
WHERE account_id = $1 AND (id = $2 OR client_id = $2) AND state = 'active'
RETURNING {_POD_COLUMNS}
"""
MARK_POD_DELETING = f"""
UPDATE pods SET state = 'deleting', state_changed_at = now()
WHERE account_id = $1 AND (id = $2 OR client_id = $2) AND state = 'active' AND NOT is_default
RETURNING {_POD_COLUMNS}
"""
MARK_POD_ACTIVE = """
UPDATE pods SET state = 'active', state_changed_at = now()
WHERE account_id = $1 AND id = $2 AND state = 'deleting'
"""
DELETE_DELETING_POD = """
DELETE FROM pods WHERE account_id = $1 AND id = $2 AND state = 'deleting' RETURNING id
"""
REVERT_STALE_DELETING_PODS = """
UPDATE pods SET state = 'active', state_changed_at = now()
WHERE state = 'deleting' AND state_changed_at < now() - make_interval(secs => $1)
RETURNING id
"""

_KEY_COLUMNS = (
    "id, account_id, name, prefix, last4, created_at, scope_type, scope_ids, permissions, "
    "expires_at, last_used_at"
)
INSERT_API_KEY = f"""
INSERT INTO api_keys (id, account_id, name, secret_sha256, prefix, last4, scope_type, scope_ids,
    permissions, expires_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
RETURNING {_KEY_COLUMNS}
"""
LOCK_KEYS = "SELECT pg_advisory_xact_lock(hashtext('api_keys:' || $1))"
#: Live keys whose scope holds any of the IDs (the 20-per-scope limit, issue 6).
COUNT_SCOPED_KEYS = """
SELECT scoped.id, count(*) FROM api_keys k, unnest(k.scope_ids) AS scoped(id)
WHERE k.account_id = $1 AND k.scope_ids && $2::text[]
  AND (k.expires_at IS NULL OR k.expires_at > now()) AND scoped.id = ANY($2::text[])
GROUP BY scoped.id
"""
LIST_API_KEYS = f"""
SELECT {_KEY_COLUMNS} FROM api_keys
WHERE account_id = $1 AND ($2::timestamptz IS NULL OR (created_at, id) > ($2, $3::text))
ORDER BY created_at, id
LIMIT $4
"""
DELETE_API_KEY = "DELETE FROM api_keys WHERE account_id = $1 AND id = $2 RETURNING id"
SELECT_API_KEY_BY_HASH = f"""
SELECT {_KEY_COLUMNS}, secret_sha256 FROM api_keys
WHERE secret_sha256 = $1 AND (expires_at IS NULL OR expires_at > now())
"""
TOUCH_API_KEYS = "UPDATE api_keys SET last_used_at = $2 WHERE id = ANY($1::text[])"
#: Drops a deleted inbox or mailbox from key scopes; keys left empty are deleted.
UNSCOPE_API_KEYS = """
WITH gone AS (
    DELETE FROM api_keys
    WHERE account_id = $1 AND scope_type = $2 AND scope_ids = ARRAY[$3]::text[]
    RETURNING id
), narrowed AS (
    UPDATE api_keys SET scope_ids = array_remove(scope_ids, $3)
    WHERE account_id = $1 AND scope_type = $2 AND scope_ids @> ARRAY[$3]::text[]
      AND cardinality(scope_ids) > 1
    RETURNING id
)
SELECT id FROM gone
"""


def _account(row: asyncpg.Record) -> Account:
    return Account(
        id=row["id"],
        name=row["name"],
        plan=row["plan"],
        state=row["state"],
        created_at=row["created_at"],
    )


def _pod(row: asyncpg.Record) -> Pod:
    return Pod(
        id=row["id"],
        account_id=row["account_id"],
        client_id=row["client_id"],
        name=row["name"],
        is_default=row["is_default"],
        state=row["state"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _api_key(row: asyncpg.Record) -> ApiKey:
    return ApiKey(
        id=row["id"],
        account_id=row["account_id"],
        name=row["name"],
        prefix=row["prefix"],
        last4=row["last4"],
        created_at=row["created_at"],
        scope_type=row["scope_type"],
        scope_ids=tuple(row["scope_ids"]),
        permissions=tuple(row["permissions"]),
        expires_at=row["expires_at"],
        last_used_at=row["last_used_at"],
    )


def _client_id_taken(client_id: str | None) -> MailplaneError:
    return MailplaneError(
        "client_id_taken",
        f"A pod with clientId {client_id!r} already exists in this account; "
        "use another clientId or address the existing pod by it.",
        {"clientId": client_id or ""},
    )


class PodStore:
    """Reads and writes the ``pods`` schema through the process's pool."""

    def __init__(self, pool: asyncpg.Pool):
        self._pool = pool

    # Accounts ---------------------------------------------------------------

    async def create_account(
        self,
        account_id: str,
        name: str,
        plan: str,
        default_pod_id: str,
        key_id: str,
        key_hash: bytes,
        key_prefix: str,
        key_last4: str,
    ) -> tuple[Account, Pod, ApiKey]:
        """Inserts an account, its default pod and its first key in one transaction."""
        async with self._pool.acquire() as conn, conn.transaction():
            account = _account(await conn.fetchrow(INSERT_ACCOUNT, account_id, name, plan))
            pod = _pod(
                await conn.fetchrow(INSERT_POD, default_pod_id, account_id, None, "Default", True)
            )
            key = _api_key(
                await conn.fetchrow(
                    INSERT_API_KEY,
                    key_id,
                    account_id,
                    "Default key",
                    key_hash,
                    key_prefix,
                    key_last4,
                    "account",
                    [],
                    ["read", "write", "admin"],
                    None,
                )
            )
        return account, pod, key

    async def get_account(self, account_id: str) -> Account | None:
        """Returns the account, or ``None``."""
        row = await self._pool.fetchrow(SELECT_ACCOUNT, account_id)
        return _account(row) if row else None

    async def set_plan(self, account_id: str, plan: str) -> Account | None:
        """Sets the plan; returns the account, or ``None`` if there is none."""
        row = await self._pool.fetchrow(UPDATE_ACCOUNT_PLAN, account_id, plan)
        return _account(row) if row else None

    async def set_state(self, account_id: str, state: str) -> Account | None:
        """Sets the state; returns the account, or ``None`` if there is none."""
        row = await self._pool.fetchrow(UPDATE_ACCOUNT_STATE, account_id, state)
        return _account(row) if row else None

    # Pods -------------------------------------------------------------------

    async def create_pod(
        self, pod_id: str, account_id: str, client_id: str | None, name: str | None
    ) -> Pod:
        """Inserts a pod.

        Raises:
            MailplaneError: ``client_id_taken`` if the account has the clientId.
        """
        try:
            row = await self._pool.fetchrow(INSERT_POD, pod_id, account_id, client_id, name, False)
        except asyncpg.UniqueViolationError:
            raise _client_id_taken(client_id) from None
        return _pod(row)

    async def get_pod(self, account_id: str, ref: str) -> Pod | None:
        """Returns the account's pod with ID or clientId ``ref``, or ``None``."""
        row = await self._pool.fetchrow(SELECT_POD, account_id, ref)
        return _pod(row) if row else None

    async def list_pods(self, account_id: str, after: list[object] | None, limit: int) -> Page[Pod]:
        """Returns up to ``limit`` pods after sort key ``after`` (default pod first,
        then by ``(created_at, id)``)."""
        not_default, created_at, pod_id = after if after else (None, None, None)
        rows = await self._pool.fetch(
            LIST_PODS,
            account_id,
            not_default,
            datetime.fromisoformat(str(created_at)) if created_at else None,
            pod_id,
            limit + 1,
        )
        return page_of(
            [_pod(r) for r in rows],
            limit,
            lambda pod: [not pod.is_default, pod.created_at.isoformat(), pod.id],
        )

    async def update_pod(
        self,
        account_id: str,
        ref: str,
        client_id: tuple[str | None] | None,
        name: tuple[str | None] | None,
    ) -> Pod | None:
        """Updates an active pod. ``client_id``/``name`` are ``None`` to keep the field,
        or a 1-tuple holding the new value (``(None,)`` clears it).

        Returns:
            The updated pod, or ``None`` if no active pod matches ``ref``.

        Raises:
            MailplaneError: ``client_id_taken`` if another pod has the clientId.
        """
        try:
            row = await self._pool.fetchrow(
                UPDATE_POD,
                account_id,
                ref,
                client_id is not None,
                client_id[0] if client_id else None,
                name is not None,
                name[0] if name else None,
            )
        except asyncpg.UniqueViolationError:
            raise _client_id_taken(client_id[0] if client_id else None) from None
        return _pod(row) if row else None

    async def mark_pod_deleting(self, account_id: str, ref: str) -> Pod | None:
        """Commits the ``deleting`` intent on an active, non-default pod; returns it,
        or ``None`` when no such pod matches."""
        row = await self._pool.fetchrow(MARK_POD_DELETING, account_id, ref)
        return _pod(row) if row else None

    async def mark_pod_active(self, account_id: str, pod_id: str) -> None:
        """Rolls a ``deleting`` intent back."""
        await self._pool.execute(MARK_POD_ACTIVE, account_id, pod_id)

    async def delete_deleting_pod(self, account_id: str, pod_id: str) -> bool:
        """Deletes a pod still in ``deleting``; returns whether it did."""
        return await self._pool.fetchval(DELETE_DELETING_POD, account_id, pod_id) is not None

    async def revert_stale_deleting_pods(self, older_than_seconds: float) -> list[str]:
        """Rolls back ``deleting`` intents older than the given age; returns the pod IDs."""
        rows = await self._pool.fetch(REVERT_STALE_DELETING_PODS, older_than_seconds)
        return [r["id"] for r in rows]

    # API keys ---------------------------------------------------------------

    async def create_api_key(
        self,
        key: ApiKey,
        key_hash: bytes,
        per_scope_limit: int | None = None,
    ) -> ApiKey | None:
        """Inserts a key; only the secret's SHA-256 is stored. A scoped key is
        refused (``None``) when any ID in its scope already has
        ``per_scope_limit`` live keys, counted under a per-account lock.

        An account key has nothing to count: its INSERT is its own transaction
        (one round trip, no BEGIN/COMMIT).

        Returns:
            The key, or ``None`` past the limit.
        """
        args = (
            key.id,
            key.account_id,
            key.name,
            key_hash,
            key.prefix,
            key.last4,
            key.scope_type,
            list(key.scope_ids),
            list(key.permissions),
            key.expires_at,
        )
        if per_scope_limit is None or not key.scope_ids:
            return _api_key(await self._pool.fetchrow(INSERT_API_KEY, *args))
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(LOCK_KEYS, key.account_id)
            counts = await conn.fetch(COUNT_SCOPED_KEYS, key.account_id, list(key.scope_ids))
            if any(r["count"] >= per_scope_limit for r in counts):
                return None
            row = await conn.fetchrow(INSERT_API_KEY, *args)
        return _api_key(row)

    async def list_api_keys(
        self, account_id: str, after: list[object] | None, limit: int
    ) -> Page[ApiKey]:
        """Returns up to ``limit`` keys after sort key ``after``, oldest first."""
        created_at, key_id = after if after else (None, None)
        rows = await self._pool.fetch(
            LIST_API_KEYS,
            account_id,
            datetime.fromisoformat(str(created_at)) if created_at else None,
            key_id,
            limit + 1,
        )
        return page_of(
            [_api_key(r) for r in rows], limit, lambda key: [key.created_at.isoformat(), key.id]
        )

    async def delete_api_key(self, account_id: str, key_id: str) -> bool:
        """Deletes the account's key; returns whether it existed."""
        return await self._pool.fetchval(DELETE_API_KEY, account_id, key_id) is not None

    async def find_api_key(self, key_hash: bytes) -> tuple[ApiKey, bytes] | None:
        """Returns the live (unexpired) key with a secret's hash and the stored hash."""
        row = await self._pool.fetchrow(SELECT_API_KEY_BY_HASH, key_hash)
        return (_api_key(row), bytes(row["secret_sha256"])) if row else None

    async def touch_api_keys(self, key_ids: list[str], when: datetime) -> None:
        """Records that keys were used at ``when`` (one statement for a batch)."""
        await self._pool.execute(TOUCH_API_KEYS, key_ids, when)

    async def unscope_api_keys(self, account_id: str, scope_type: str, resource_id: str) -> int:
        """Removes a deleted inbox or mailbox from the account's key scopes and
        deletes the keys left with nothing in scope; how many were deleted."""
        return len(await self._pool.fetch(UNSCOPE_API_KEYS, account_id, scope_type, resource_id))
