"""PostgreSQL for one service: its own role, its own schema, one asyncpg pool,
and forward-only migrations.

Migrations are plain SQL files ``NNNN_<verb>_<noun>.sql`` in the service's
``migrations/`` folder, applied in order, each in its own transaction, and
recorded in ``<schema>.schema_migrations``. This small runner (rather than a
migration tool) is used because the work is schema-and-role bootstrap that the
well-kept tools do not do (create the service role, give it exactly its own
schema) plus a loop over SQL files, and it keeps one driver (asyncpg) in the
project; an advisory lock makes concurrent runs safe.

A database that cannot be reached (the server down or restarting, the socket
gone, a fail-over in progress) is not a bug: ``is_unreachable`` recognises it,
and the chassis interceptor answers ``unavailable`` (DESIGN §3, §4) instead of
``internal``. The pool recovers on its own: asyncpg replaces a closed connection
when it is next acquired, and new connections are attempted a few times before
giving up (``CONNECT_RETRY_DELAYS``), since no statement has been sent yet.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import asyncpg
from asyncpg.exceptions import TargetServerAttributeNotMatched

from services.chassis import metrics
from services.chassis.config import role_name
from services.chassis.errors import MailplaneError
from services.chassis.logs import get_logger

_log = get_logger("mailplane.db")

#: Pauses, in seconds, between the attempts to open one connection: three
#: retries within about a second, so a switchover's blip is ridden out while a
#: server that is down still answers ``unavailable`` promptly. Only the connect
#: is retried: no statement has been sent on a connection not yet made.
CONNECT_RETRY_DELAYS = (0.1, 0.25, 0.5)
#: Seconds one connection attempt (every host of a multi-host DSN) may take;
#: asyncpg's default of 60 s would hold a request far past its deadline.
CONNECT_TIMEOUT_SECONDS = 2.0

#: SQLSTATEs that mean the server cannot serve this connection now, though
#: nothing is wrong with the request (PostgreSQL appendix A): 57P01
#: admin_shutdown, 57P02 crash_shutdown, 57P03 cannot_connect_now ("the database
#: system is starting up / shutting down"), 53300 too_many_connections, and
#: 25006 read_only_sql_transaction (a write reached a primary being demoted in a
#: fail-over). Class 08 (connection exception) is matched by its prefix.
_UNREACHABLE_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "53300", "25006"})


def is_unreachable(exc: BaseException) -> bool:
    """Tells whether ``exc`` means the database could not be reached, rather than
    a fault of the request or of the code.

    True for: ``OSError`` (connection refused or reset, socket file gone, connect
    timeout); asyncpg's ``TargetServerAttributeNotMatched`` (no host of a
    multi-host DSN satisfies ``target_session_attrs``, e.g. mid fail-over); a
    ``PostgresError`` of SQLSTATE class 08 (``ConnectionDoesNotExistError``: the
    connection closed mid-operation) or one of ``_UNREACHABLE_SQLSTATES``; the
    ``InterfaceError`` asyncpg raises on a connection already closed; and asyncpg's
    ``InternalClientError`` "another operation is in progress", which a connection
    left mid-operation by a lost server raises (seen in the Patroni fail-over test;
    the pool then replaces the connection).
    """
    if isinstance(exc, OSError | TargetServerAttributeNotMatched):
        return True
    if isinstance(exc, asyncpg.PostgresError):
        state = exc.sqlstate or ""
        return state.startswith("08") or state in _UNREACHABLE_SQLSTATES
    if isinstance(exc, asyncpg.exceptions.InternalClientError):
        return "another operation" in str(exc)
    return isinstance(exc, asyncpg.InterfaceError) and "connection is closed" in str(exc)


def unavailable(service: str) -> MailplaneError:
    """Returns the ``unavailable`` (503) error of ``service`` losing its database."""
    return MailplaneError(
        "unavailable",
        f"The {service} service cannot reach its database right now; retry in a few seconds.",
    )


async def _connect(*args: Any, **kwargs: Any) -> asyncpg.Connection:
    """``asyncpg.connect`` retried after ``CONNECT_RETRY_DELAYS`` while the database
    is unreachable (``is_unreachable``); any other failure is raised at once.

    Raises:
        The last attempt's exception.
    """
    for delay in CONNECT_RETRY_DELAYS:
        try:
            return await asyncpg.connect(*args, **kwargs)
        except Exception as exc:
            if not is_unreachable(exc):
                raise
            _log.debug("database_connect_retry", error=type(exc).__name__, delay_s=delay)
        await asyncio.sleep(delay)
    return await asyncpg.connect(*args, **kwargs)


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

    New connections (at start, and to replace one the server closed) are made
    by ``_connect``: a few quick attempts while the database is unreachable.

    Args:
        dsn: the service's own DSN (its role, not the administrator's).
        schema: the service's schema, e.g. ``pods``.
        size: the maximum number of connections.

    Raises:
        OSError, asyncpg.PostgresError: the database could not be reached (or
            refused the role) at start.
    """
    pool = await asyncpg.create_pool(
        dsn,
        min_size=1,
        max_size=size,
        server_settings={"search_path": schema, "application_name": f"mailplane-{schema}"},
        reset=_keep_session,
        connect=_connect,
        timeout=CONNECT_TIMEOUT_SECONDS,
    )
    assert pool is not None
    metrics.track_pool(schema, pool)
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
