"""PostgreSQL for one service: its own role, its own schema, one asyncpg pool,
and forward-only migrations.

Migrations are plain SQL files ``NNNN_<verb>_<noun>.sql`` in the service's
``migrations/`` folder, applied in order, each in its own transaction, and
recorded in ``<schema>.schema_migrations``. This small runner (rather than a
migration tool) is used because the work is schema-and-role bootstrap that the
well-kept tools do not do (create the service role, give it exactly its own
schema) plus a loop over SQL files, and it keeps one driver (asyncpg) in the
project; an advisory lock makes concurrent runs safe.
"""

from __future__ import annotations

import re
from pathlib import Path

import asyncpg

from services.chassis.config import role_name


async def create_pool(dsn: str, schema: str, size: int) -> asyncpg.Pool:
    """Opens the process's one pool; every connection's search_path is ``schema``.

    asyncpg prepares and caches every statement per connection (its
    ``statement_cache_size``, 100 by default), keyed by the SQL text, so the
    services' constant queries are parsed once per connection and then cost one
    round trip each.

    A released connection is not sent asyncpg's default reset query
    (``pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL``): it would
    be one more round trip after every query, doubling the cost of a
    single-statement read. The services leave no session state behind: their
    advisory locks are transaction-scoped (``pg_advisory_xact_lock``), they
    hold no cursors past a transaction, LISTEN to nothing and issue no ``SET``;
    asyncpg still rolls back a transaction left open on release. Code that
    needs session state must use its own connection (as ``migrate`` does).

    Args:
        dsn: the service's own DSN (its role, not the administrator's).
        schema: the service's schema, e.g. ``pods``.
        size: the maximum number of connections.
    """
    pool = await asyncpg.create_pool(
        dsn,
        min_size=1,
        max_size=size,
        server_settings={"search_path": schema, "application_name": f"mailplane-{schema}"},
        reset=_keep_session,
    )
    assert pool is not None
    return pool


async def _keep_session(conn: asyncpg.Connection) -> None:
    """The pool's reset on release: nothing beyond asyncpg's own rollback of an
    open transaction, since no service leaves session state (see ``create_pool``)."""


async def migrate(admin_dsn: str, service: str, role_password: str, folder: Path) -> list[str]:
    """Creates the service's role and schema if needed and applies new migrations.

    Args:
        admin_dsn: a DSN that may create roles and schemas.
        service: the service name, which is also its schema.
        role_password: the password the service role logs in with.
        folder: the folder of ``NNNN_*.sql`` files.

    Returns:
        The names of the migrations applied by this call, in order.
    """
    if not re.fullmatch(r"[a-z]+", service):
        raise ValueError(f"service name {service!r} is not a plain lower-case identifier")
    role = role_name(service)  # safe to quote as identifiers: [a-z_]+ only
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute("SELECT pg_advisory_lock(hashtext('mailplane-migrate'))")
        exists = await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role)
        password = await conn.fetchval("SELECT quote_literal($1::text)", role_password)
        verb = "ALTER" if exists else "CREATE"
        database = await conn.fetchval("SELECT quote_ident(current_database())")
        await conn.execute(f'{verb} ROLE "{role}" LOGIN PASSWORD {password}')
        await conn.execute(f'GRANT CONNECT ON DATABASE {database} TO "{role}"')
        await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{service}" AUTHORIZATION "{role}"')
        await conn.execute(f'ALTER ROLE "{role}" SET search_path = "{service}"')
        await conn.execute(f'SET ROLE "{role}"')
        await conn.execute(f'SET search_path = "{service}"')
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        applied = []
        for version, sql in migration_files(folder):
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", version)
            applied.append(version)
        await conn.execute("RESET ROLE")
        return applied
    finally:
        await conn.close()


def migration_files(folder: Path) -> list[tuple[str, str]]:
    """Returns ``(version, sql)`` of every ``NNNN_*.sql`` file in ``folder``, in order."""
    return [(p.stem, p.read_text()) for p in sorted(folder.glob("[0-9][0-9][0-9][0-9]_*.sql"))]
