"""SQL of the mailboxes service (schema ``mailboxes``). Every query filters on
``account_id`` (folders and rules through their mailbox), except the address
uniqueness the database enforces across accounts. Deleted mailboxes
(``deleted_at``) and pending ones are invisible to every read."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import asyncpg

from services.chassis import ids
from services.chassis.errors import MailplaneError, invalid_argument
from services.chassis.pagination import Page, page_of
from services.mailboxes.models import Folder, Mailbox, PolicySnapshot, Rule, empty_config

_COLUMNS = (
    "id, account_id, pod_id, address, domain, shared_domain, display_name, status, "
    "can_receive, config::text AS config, catch_all, autonomy_level, created_at, updated_at"
)
_VISIBLE = "state = 'live' AND deleted_at IS NULL"
LOCK_ACCOUNT = "SELECT pg_advisory_xact_lock(hashtext('mailboxes:' || $1))"
COUNT_ACCOUNT = "SELECT count(*) FROM mailboxes WHERE account_id = $1 AND deleted_at IS NULL"
COUNT_VISIBLE = f"SELECT count(*) FROM mailboxes WHERE account_id = $1 AND {_VISIBLE}"
INSERT_MAILBOX = f"""
INSERT INTO mailboxes (id, account_id, pod_id, address, domain, shared_domain, display_name,
    status, can_receive, config, autonomy_level, state)
VALUES ($1, $2, $3, $4, $5, $6, $7,
    CASE WHEN $8::boolean THEN 'active' ELSE 'provisioning' END, $8, $9::jsonb, $10, 'pending')
RETURNING {_COLUMNS}
"""
COPY_FOLDERS = """
INSERT INTO folders (id, mailbox_id, name, created_at)
SELECT m.new_id, $2, f.name, f.created_at
FROM folders f JOIN unnest($3::text[], $4::text[]) AS m(old_id, new_id) ON m.old_id = f.id
WHERE f.mailbox_id = $1
"""
COPY_RULES = """
INSERT INTO rules (id, mailbox_id, name, enabled, priority, match, action_type, folder_id,
    created_at)
SELECT r.new_id, $2, s.name, s.enabled, s.priority, s.match, s.action_type, fm.new_id, s.created_at
FROM rules s
JOIN unnest($3::text[], $4::text[]) AS r(old_id, new_id) ON r.old_id = s.id
LEFT JOIN unnest($5::text[], $6::text[]) AS fm(old_id, new_id) ON fm.old_id = s.folder_id
WHERE s.mailbox_id = $1
"""
MARK_LIVE = f"""
UPDATE mailboxes SET state = 'live', state_changed_at = now(), can_receive = $3,
    status = CASE WHEN $3 THEN 'active' ELSE 'provisioning' END
WHERE account_id = $1 AND id = $2 AND state = 'pending'
RETURNING {_COLUMNS}
"""
DELETE_PENDING = "DELETE FROM mailboxes WHERE account_id = $1 AND id = $2 AND state = 'pending'"
SELECT_MAILBOX = (
    f"SELECT {_COLUMNS} FROM mailboxes WHERE account_id = $1 AND id = $2 AND {_VISIBLE}"
)
MAILBOX_EXISTS = f"SELECT 1 FROM mailboxes WHERE account_id = $1 AND id = $2 AND {_VISIBLE}"
LIST_MAILBOXES = f"""
SELECT {_COLUMNS} FROM mailboxes
WHERE account_id = $1 AND {_VISIBLE}
  AND ($2::text IS NULL OR pod_id = $2)
  AND ($3::timestamptz IS NULL OR (created_at, id) > ($3, $4::text))
ORDER BY created_at, id
LIMIT $5
"""
SOFT_DELETE = f"""
UPDATE mailboxes SET deleted_at = now(), updated_at = now()
WHERE account_id = $1 AND id = $2 AND {_VISIBLE}
RETURNING id
"""
COUNT_MAILBOXES = """
SELECT count(*) FROM mailboxes
WHERE account_id = $1 AND deleted_at IS NULL
  AND ($2::text IS NULL OR pod_id = $2)
  AND ($3::text IS NULL OR domain = $3)
  AND ($4::text IS NULL OR pod_id <> $4)
"""
SET_RECEPTION = """
UPDATE mailboxes SET can_receive = $3, updated_at = now(),
    status = CASE
        WHEN $3 AND status IN ('provisioning', 'error') THEN 'active'
        WHEN NOT $3 AND status = 'active' THEN 'error'
        ELSE status END
WHERE account_id = $1 AND domain = $2 AND NOT shared_domain AND deleted_at IS NULL
  AND (can_receive <> $3 OR status IN ('provisioning', 'error', 'active'))
RETURNING id, status
"""
SELECT_STALE_PENDING = """
SELECT id, account_id FROM mailboxes
WHERE state = 'pending' AND state_changed_at < now() - make_interval(secs => $1)
ORDER BY state_changed_at
LIMIT $2
"""
#: Deleted mailboxes whose routes are still to be released (a crash after the delete).
SELECT_UNRELEASED = """
SELECT id, account_id FROM mailboxes
WHERE route_state = 'routed' AND deleted_at IS NOT NULL
  AND deleted_at < now() - make_interval(secs => $1)
ORDER BY deleted_at
LIMIT $2
"""
#: Live mailboxes whose routes are yet to be claimed (from before the directory).
SELECT_UNROUTED = f"""
SELECT {_COLUMNS} FROM mailboxes
WHERE route_state = 'unrouted' AND {_VISIBLE}
ORDER BY created_at, id
LIMIT $1
"""
SET_ROUTE_STATE = "UPDATE mailboxes SET route_state = $3 WHERE account_id = $1 AND id = $2"
#: Undoes a soft delete whose routes could not be released; the sweep claims them again.
UNDELETE = """
UPDATE mailboxes SET deleted_at = NULL, route_state = 'unrouted', updated_at = now()
WHERE account_id = $1 AND id = $2 AND deleted_at IS NOT NULL
"""
#: A live mailbox's receiving policy with its enabled rules in the order they apply.
SELECT_POLICY = """
SELECT m.id, m.account_id, m.pod_id, m.address, m.display_name, m.status,
       m.config::text AS config, m.policy_version,
       coalesce((SELECT json_agg(json_build_object('id', r.id, 'priority', r.priority,
                                                   'match', r.match, 'action', r.action_type,
                                                   'folderId', r.folder_id)
                                 ORDER BY r.priority, r.created_at, r.id)
                 FROM rules r WHERE r.mailbox_id = m.id AND r.enabled), '[]')::text AS rules
FROM mailboxes m
WHERE m.id = $1 AND m.state = 'live' AND m.deleted_at IS NULL
"""
MARK_PUBLISHED = """
UPDATE mailboxes SET policy_published = greatest(policy_published, $2) WHERE id = $1
"""
SELECT_UNPUBLISHED = """
SELECT id FROM mailboxes
WHERE policy_published < policy_version AND state = 'live' AND deleted_at IS NULL
LIMIT $1
"""
#: The addresses some mailboxes hold, for the directory's sweep (any account).
SELECT_HELD = """
SELECT id, address, domain, catch_all, state FROM mailboxes
WHERE id = ANY($1::text[]) AND deleted_at IS NULL
"""
_OWNED = f"""mailbox_id = (
    SELECT id FROM mailboxes WHERE account_id = $1 AND id = $2 AND {_VISIBLE})"""
INSERT_FOLDER = f"""
INSERT INTO folders (id, mailbox_id, name)
SELECT $3, id, $4 FROM mailboxes WHERE account_id = $1 AND id = $2 AND {_VISIBLE}
RETURNING id, mailbox_id, name, created_at
"""
LIST_FOLDERS = f"""
SELECT id, mailbox_id, name, created_at FROM folders WHERE {_OWNED} ORDER BY created_at, id
"""
DELETE_FOLDER = f"DELETE FROM folders WHERE {_OWNED} AND id = $3 RETURNING id"
_RULE_COLUMNS = (
    "id, mailbox_id, name, enabled, priority, match::text AS match, action_type, folder_id, "
    "created_at"
)
INSERT_RULE = f"""
INSERT INTO rules (id, mailbox_id, name, enabled, priority, match, action_type, folder_id)
SELECT $3, id, $4, $5, $6, $7::jsonb, $8, $9
FROM mailboxes WHERE account_id = $1 AND id = $2 AND {_VISIBLE}
RETURNING {_RULE_COLUMNS}
"""
LIST_RULES = f"""
SELECT {_RULE_COLUMNS} FROM rules WHERE {_OWNED} ORDER BY priority, created_at, id
"""
SELECT_RULE = f"SELECT {_RULE_COLUMNS} FROM rules WHERE {_OWNED} AND id = $3"
UPDATE_RULE = f"""
UPDATE rules SET name = $4, enabled = $5, priority = $6, match = $7::jsonb, action_type = $8,
    folder_id = $9
WHERE {_OWNED} AND id = $3
RETURNING {_RULE_COLUMNS}
"""
DELETE_RULE = f"DELETE FROM rules WHERE {_OWNED} AND id = $3 RETURNING id"
#: The columns an update may set, each with its SQL (``$n`` filled in order).
_UPDATABLE = {
    "display_name": "display_name = ${}",
    "catch_all": "catch_all = ${}",
    "config": "config = config || ${}::jsonb",
    "status": "status = CASE WHEN ${}::text = 'paused' THEN 'paused' "
    "WHEN can_receive THEN 'active' ELSE 'provisioning' END",
    "exact_status": "status = ${}",
    "address": "address = ${}",
    "domain": "domain = ${}",
    "can_receive": "can_receive = ${}",
}


def _mailbox(row: asyncpg.Record) -> Mailbox:
    config = empty_config()
    config.update(json.loads(row["config"]))
    return Mailbox(
        id=row["id"],
        account_id=row["account_id"],
        pod_id=row["pod_id"],
        address=row["address"],
        domain=row["domain"],
        shared_domain=row["shared_domain"],
        display_name=row["display_name"],
        status=row["status"],
        can_receive=row["can_receive"],
        config=config,
        catch_all=row["catch_all"],
        autonomy_level=row["autonomy_level"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _folder(row: asyncpg.Record) -> Folder:
    return Folder(row["id"], row["mailbox_id"], row["name"], row["created_at"])


def _rule(row: asyncpg.Record) -> Rule:
    return Rule(
        id=row["id"],
        mailbox_id=row["mailbox_id"],
        name=row["name"],
        enabled=row["enabled"],
        priority=row["priority"],
        match=json.loads(row["match"]),
        action_type=row["action_type"],
        folder_id=row["folder_id"],
        created_at=row["created_at"],
    )


def address_taken(address: str) -> MailplaneError:
    """Returns the ``address_taken`` error."""
    return MailplaneError(
        "address_taken",
        f"{address} is already a mailbox's address; choose another address.",
        {"address": address},
    )


def catch_all_taken(domain: str) -> MailplaneError:
    """Returns the ``catch_all_taken`` error."""
    return MailplaneError(
        "catch_all_taken",
        f"Another mailbox is already the catch-all of {domain}; turn it off there first.",
        {"domain": domain},
    )


def _unique_error(error: asyncpg.UniqueViolationError, address: str, domain: str) -> MailplaneError:
    if error.constraint_name == "mailboxes_catch_all_key":
        return catch_all_taken(domain)
    return address_taken(address)


class MailboxStore:
    """Reads and writes the ``mailboxes`` schema through the process's pool."""

    def __init__(self, pool: asyncpg.Pool):
        self._pool = pool

    async def insert_pending(
        self,
        fields: dict[str, Any],
        limit: int | None,
        clone_of: tuple[str, list[str], list[str]] | None = None,
    ) -> Mailbox | None:
        """Inserts a ``pending`` mailbox if the account is under ``limit`` mailboxes
        (those not deleted, pending included, counted under a per-account lock so
        concurrent creates cannot overshoot; DESIGN §3). A clone also copies the
        source's folders and rules, remapped, in the same transaction.

        Args:
            fields: ``id, account_id, pod_id, address, domain, shared_domain,
                display_name, can_receive, config, autonomy_level``.
            limit: the plan's mailbox limit; ``None`` is unlimited.
            clone_of: ``(source_id, source_folder_ids, source_rule_ids)``.

        Returns:
            The mailbox, or ``None`` when the account already has ``limit``.

        Raises:
            MailplaneError: ``address_taken``.
        """
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(LOCK_ACCOUNT, fields["account_id"])
            if (
                limit is not None
                and await conn.fetchval(COUNT_ACCOUNT, fields["account_id"]) >= limit
            ):
                return None
            try:
                row = await conn.fetchrow(
                    INSERT_MAILBOX,
                    fields["id"],
                    fields["account_id"],
                    fields["pod_id"],
                    fields["address"],
                    fields["domain"],
                    fields["shared_domain"],
                    fields["display_name"],
                    fields["can_receive"],
                    json.dumps(fields["config"]),
                    fields["autonomy_level"],
                )
            except asyncpg.UniqueViolationError:
                raise address_taken(fields["address"]) from None
            if clone_of is not None:
                await self._copy_children(conn, clone_of, fields["id"])
        return _mailbox(row)

    @staticmethod
    async def _copy_children(
        conn: asyncpg.Connection, clone_of: tuple[str, list[str], list[str]], new_id: str
    ) -> None:
        source, folder_ids, rule_ids = clone_of
        new_folders = [ids.new_id("fld") for _ in folder_ids]
        await conn.execute(COPY_FOLDERS, source, new_id, folder_ids, new_folders)
        new_rules = [ids.new_id("rule") for _ in rule_ids]
        await conn.execute(COPY_RULES, source, new_id, rule_ids, new_rules, folder_ids, new_folders)

    async def mark_live(
        self, account_id: str, mailbox_id: str, can_receive: bool
    ) -> Mailbox | None:
        """Makes a pending mailbox live with its domain's reception as re-checked
        (``active`` or ``provisioning``); ``None`` if it is gone (swept)."""
        row = await self._pool.fetchrow(MARK_LIVE, account_id, mailbox_id, can_receive)
        return _mailbox(row) if row else None

    async def delete_pending(self, account_id: str, mailbox_id: str) -> None:
        """Undoes a pending create (its copied folders and rules go with it)."""
        await self._pool.execute(DELETE_PENDING, account_id, mailbox_id)

    async def get(self, account_id: str, mailbox_id: str) -> Mailbox | None:
        """Returns a visible mailbox of the account."""
        row = await self._pool.fetchrow(SELECT_MAILBOX, account_id, mailbox_id)
        return _mailbox(row) if row else None

    async def list_mailboxes(
        self, account_id: str, pod_id: str | None, after: list[object] | None, limit: int
    ) -> Page[Mailbox]:
        """Returns up to ``limit`` visible mailboxes after sort key ``after``, oldest first."""
        created_at, last_id = after if after else (None, None)
        rows = await self._pool.fetch(
            LIST_MAILBOXES,
            account_id,
            pod_id,
            datetime.fromisoformat(str(created_at)) if created_at else None,
            last_id,
            limit + 1,
        )
        return page_of(
            [_mailbox(r) for r in rows], limit, lambda m: [m.created_at.isoformat(), m.id]
        )

    async def update(
        self, account_id: str, mailbox: Mailbox, changes: dict[str, Any]
    ) -> Mailbox | None:
        """Applies ``changes`` (keys of ``_UPDATABLE``; ``config`` is a patch merged
        key by key; ``status`` is ``active`` or ``paused``, and ``active`` becomes
        ``provisioning`` while the domain cannot receive) in one statement.

        Returns:
            The updated mailbox, or ``None`` if it is gone.

        Raises:
            MailplaneError: ``address_taken``, ``catch_all_taken``.
        """
        sets, args = [], [account_id, mailbox.id]
        for column, value in changes.items():
            args.append(json.dumps(value) if column == "config" else value)
            sets.append(_UPDATABLE[column].format(len(args)))
        sql = (
            f"UPDATE mailboxes SET {', '.join(sets)}, updated_at = now() "
            f"WHERE account_id = $1 AND id = $2 AND {_VISIBLE} RETURNING {_COLUMNS}"
        )
        try:
            row = await self._pool.fetchrow(sql, *args)
        except asyncpg.UniqueViolationError as error:
            raise _unique_error(
                error,
                changes.get("address", mailbox.address),
                changes.get("domain", mailbox.domain),
            ) from None
        return _mailbox(row) if row else None

    async def soft_delete(self, account_id: str, mailbox_id: str) -> bool | None:
        """Marks a mailbox deleted unless it is the account's last visible one
        (checked under the per-account lock, so two racing deletes leave one).

        Returns:
            ``True`` when deleted, ``None`` when it is the last, ``False`` when
            there is no such mailbox.
        """
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(LOCK_ACCOUNT, account_id)
            if await conn.fetchval(MAILBOX_EXISTS, account_id, mailbox_id) is None:
                return False
            if await conn.fetchval(COUNT_VISIBLE, account_id) <= 1:
                return None
            return await conn.fetchval(SOFT_DELETE, account_id, mailbox_id) is not None

    async def count(
        self, account_id: str, pod_id: str | None, domain: str | None, outside_pod_id: str | None
    ) -> int:
        """Counts mailboxes that are not deleted, pending included (DESIGN §3)."""
        return int(
            await self._pool.fetchval(COUNT_MAILBOXES, account_id, pod_id, domain, outside_pod_id)
        )

    async def set_reception(self, account_id: str, domain: str, can_receive: bool) -> int:
        """Records a custom domain's reception on its mailboxes and moves their
        status (provisioning/error → active; active → error); the number changed."""
        rows = await self._pool.fetch(SET_RECEPTION, account_id, domain, can_receive)
        return len(rows)

    async def stale_pending(self, older_than_seconds: float, limit: int) -> list[tuple[str, str]]:
        """``(id, account_id)`` of mailboxes pending for longer than ``older_than_seconds``."""
        rows = await self._pool.fetch(SELECT_STALE_PENDING, older_than_seconds, limit)
        return [(r["id"], r["account_id"]) for r in rows]

    async def unreleased(self, older_than_seconds: float, limit: int) -> list[tuple[str, str]]:
        """``(id, account_id)`` of mailboxes deleted more than ``older_than_seconds``
        ago whose routes are still to be released."""
        rows = await self._pool.fetch(SELECT_UNRELEASED, older_than_seconds, limit)
        return [(r["id"], r["account_id"]) for r in rows]

    async def unrouted(self, limit: int) -> list[Mailbox]:
        """Live mailboxes whose routes are yet to be claimed, oldest first."""
        return [_mailbox(r) for r in await self._pool.fetch(SELECT_UNROUTED, limit)]

    async def set_route_state(self, account_id: str, mailbox_id: str, route_state: str) -> None:
        """Records a mailbox's route state: ``routed``, ``conflict``, ``released``
        or ``unrouted`` (to be claimed again by the sweep)."""
        await self._pool.execute(SET_ROUTE_STATE, account_id, mailbox_id, route_state)

    async def undelete(self, account_id: str, mailbox_id: str) -> bool:
        """Undoes a soft delete (routes to be claimed again); ``False`` when its
        address has been given to another mailbox since."""
        try:
            await self._pool.execute(UNDELETE, account_id, mailbox_id)
        except asyncpg.UniqueViolationError:
            return False
        return True

    async def policy(self, mailbox_id: str) -> PolicySnapshot | None:
        """A live mailbox's policy at its current version, or ``None``."""
        row = await self._pool.fetchrow(SELECT_POLICY, mailbox_id)
        if row is None:
            return None
        return PolicySnapshot(
            mailbox_id=row["id"],
            account_id=row["account_id"],
            pod_id=row["pod_id"],
            version=row["policy_version"],
            status=row["status"],
            address=row["address"],
            display_name=row["display_name"],
            config=empty_config() | json.loads(row["config"]),
            rules=json.loads(row["rules"]),
        )

    async def mark_published(self, mailbox_id: str, version: int) -> None:
        """Records that the messages service holds ``version`` of the policy."""
        await self._pool.execute(MARK_PUBLISHED, mailbox_id, version)

    async def unpublished(self, limit: int) -> list[str]:
        """Live mailboxes whose latest policy the messages service lacks."""
        return [r["id"] for r in await self._pool.fetch(SELECT_UNPUBLISHED, limit)]

    async def held_addresses(
        self, mailbox_ids: list[str]
    ) -> list[tuple[str, str, str, bool, bool]]:
        """``(id, address, domain, catch_all, live)`` of those of ``mailbox_ids``
        that are not deleted, in any account."""
        rows = await self._pool.fetch(SELECT_HELD, mailbox_ids)
        return [
            (r["id"], r["address"], r["domain"], r["catch_all"], r["state"] == "live") for r in rows
        ]

    # Folders and rules ------------------------------------------------------------

    async def folder_and_rule_ids(
        self, account_id: str, mailbox_id: str
    ) -> tuple[list[str], list[str]]:
        """The IDs of a visible mailbox's folders and rules (for a clone)."""
        folders = await self._pool.fetch(LIST_FOLDERS, account_id, mailbox_id)
        rules = await self._pool.fetch(LIST_RULES, account_id, mailbox_id)
        return [r["id"] for r in folders], [r["id"] for r in rules]

    async def create_folder(
        self, account_id: str, mailbox_id: str, folder_id: str, name: str
    ) -> Folder | None:
        """Creates a folder; ``None`` if the mailbox is not visible.

        Raises:
            MailplaneError: ``folder_exists``.
        """
        try:
            row = await self._pool.fetchrow(INSERT_FOLDER, account_id, mailbox_id, folder_id, name)
        except asyncpg.UniqueViolationError:
            raise MailplaneError(
                "folder_exists",
                f"This mailbox already has a folder named {name!r}; choose another name.",
                {"name": name},
            ) from None
        return _folder(row) if row else None

    async def list_folders(self, account_id: str, mailbox_id: str) -> list[Folder]:
        """A visible mailbox's folders, oldest first."""
        return [_folder(r) for r in await self._pool.fetch(LIST_FOLDERS, account_id, mailbox_id)]

    async def delete_folder(self, account_id: str, mailbox_id: str, folder_id: str) -> bool:
        """Deletes a folder; whether it existed.

        Raises:
            MailplaneError: ``folder_in_use`` while a rule points at it.
        """
        try:
            return (
                await self._pool.fetchval(DELETE_FOLDER, account_id, mailbox_id, folder_id)
                is not None
            )
        except asyncpg.ForeignKeyViolationError:
            raise MailplaneError(
                "folder_in_use",
                f"Folder {folder_id} is the target of a rule; change or delete the rule first.",
                {"folderId": folder_id},
            ) from None

    async def create_rule(self, account_id: str, rule: Rule) -> Rule | None:
        """Creates a rule; ``None`` if the mailbox is not visible.

        Raises:
            MailplaneError: ``invalid_argument`` when the folder is not one of the
                mailbox's.
        """
        return await self._write_rule(INSERT_RULE, account_id, rule)

    async def get_rule(self, account_id: str, mailbox_id: str, rule_id: str) -> Rule | None:
        """A rule of a visible mailbox."""
        row = await self._pool.fetchrow(SELECT_RULE, account_id, mailbox_id, rule_id)
        return _rule(row) if row else None

    async def update_rule(self, account_id: str, rule: Rule) -> Rule | None:
        """Replaces a rule's fields; ``None`` if it is not there."""
        return await self._write_rule(UPDATE_RULE, account_id, rule)

    async def _write_rule(self, sql: str, account_id: str, rule: Rule) -> Rule | None:
        try:
            row = await self._pool.fetchrow(
                sql,
                account_id,
                rule.mailbox_id,
                rule.id,
                rule.name,
                rule.enabled,
                rule.priority,
                json.dumps(rule.match),
                rule.action_type,
                rule.folder_id,
            )
        except asyncpg.ForeignKeyViolationError:
            raise invalid_argument(
                "action.folderId", "must be the ID of a folder of this mailbox."
            ) from None
        return _rule(row) if row else None

    async def list_rules(self, account_id: str, mailbox_id: str) -> list[Rule]:
        """A visible mailbox's rules by priority, then oldest first."""
        return [_rule(r) for r in await self._pool.fetch(LIST_RULES, account_id, mailbox_id)]

    async def delete_rule(self, account_id: str, mailbox_id: str, rule_id: str) -> bool:
        """Deletes a rule; whether it existed."""
        return await self._pool.fetchval(DELETE_RULE, account_id, mailbox_id, rule_id) is not None
