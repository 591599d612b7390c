"""The event log (DESIGN §7.6): reading it in commit-safe order, and waking
readers when it grows.

Every fact writes its event in its own transaction (``MailStore.record_event``),
with ``txid`` (the writer's transaction ID, ``pg_current_xact_id()``) and
``seq`` (a sequence). Readers page by ``(txid, seq)`` and return only events
whose ``txid`` is below ``pg_snapshot_xmin(pg_current_snapshot())``, the oldest
transaction still running when the read starts.

Why: ``seq`` (and ``txid``) are taken when a row is written, not when it
commits. Transaction A may take seq 10, then B take seq 11 and commit first; a
reader that returned 11 and moved its cursor past it would never see 10 once A
commits. Below the snapshot's ``xmin`` every transaction has ended, committed or
not, so nothing can appear later behind the cursor: a transaction still running,
or one not begun yet, has a ``txid`` of at least ``xmin``, above every event
returned so far. The cost is that one long transaction anywhere in the cluster
holds back every newer event until it ends.

Readers wait for new events through ``LISTEN mailplane_events`` (the writer's
``pg_notify``, delivered at commit, carries the account ID) on one dedicated
connection per process, fanned out in-process to every waiting call.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from services.chassis.logs import get_logger
from services.messages.store import Reach

_log = get_logger("mailplane.messages.events")

#: The channel ``MailStore.record_event`` notifies, with the account ID as payload.
EVENTS_CHANNEL = "mailplane_events"

#: The types of events (DESIGN §7.6).
EVENT_TYPES = (
    "message.received",
    "message.received.spam",
    "message.received.unauthenticated",
    "message.queued",
    "message.held",
    "message.released",
    "message.sent",
    "message.delayed",
    "message.delivered",
    "message.bounced",
    "message.rejected",
    "draft.sent",
    "thread.updated",
    "mailbox.paused",
    "mailbox.resumed",
    "domain.verified",
    "domain.degraded",
)
#: The type of the event TestWebhook sends (never in the log).
TEST_EVENT_TYPE = "webhook.test"


@dataclass(frozen=True)
class Position:
    """A place in the log: ``txid`` (as text, PostgreSQL's ``xid8``) and ``seq``."""

    txid: str = "0"
    seq: int = 0


#: Before the first event.
START = Position()


@dataclass(frozen=True)
class Event:
    """One event of the log; ``data`` is its JSON text as stored."""

    id: str
    type: str
    created_at: datetime
    account_id: str
    pod_id: str | None
    inbox_id: str | None
    mailbox_id: str | None
    data: str
    position: Position

    @property
    def owner_id(self) -> str | None:
        """The inbox or mailbox the event concerns, if any."""
        return self.inbox_id or self.mailbox_id


def event_of(row: Any) -> Event:
    """An ``Event`` from a row of ``EVENT_COLUMNS``."""
    return Event(
        row["id"],
        row["type"],
        row["created_at"],
        row["account_id"],
        row["pod_id"],
        row["inbox_id"],
        row["mailbox_id"],
        row["data"],
        Position(row["txid"], row["seq"]),
    )


EVENT_COLUMNS = (
    "id, type, created_at, account_id, pod_id, inbox_id, mailbox_id, data::text AS data,"
    " txid::text AS txid, seq"
)
SELECT_POSITION = "SELECT txid::text, seq FROM events WHERE account_id = $1 AND id = $2"
#: The condition that makes an event readable (see the module docstring).
READABLE = "txid < pg_snapshot_xmin(pg_current_snapshot())"


def _select_account_events(reach: Reach) -> str:
    """The SQL of one account's readable events after a position: ``$1`` account,
    ``$2``/``$3`` position, ``$4`` types or NULL, ``$5`` limit, then the reach's
    pod and owners when it has them."""
    where = ""
    n = 6
    if reach.pod_id is not None:
        where += f" AND pod_id = ${n}"
        n += 1
    if reach.owner_ids is not None:
        where += f" AND coalesce(inbox_id, mailbox_id) = ANY(${n}::text[])"
    return (
        f"SELECT {EVENT_COLUMNS} FROM events"
        " WHERE account_id = $1 AND (txid, seq) > ($2::text::xid8, $3::bigint)"
        f" AND {READABLE}"
        " AND ($4::text[] IS NULL OR type = ANY($4::text[]))"
        f"{where} ORDER BY txid, seq LIMIT $5"
    )


#: Every account's readable events after a position (the webhook dispatcher).
SELECT_LOG = f"""
SELECT {EVENT_COLUMNS} FROM events
WHERE (txid, seq) > ($1::text::xid8, $2::bigint) AND {READABLE}
ORDER BY txid, seq LIMIT $3
"""


class EventLog:
    """Reads the ``events`` table.

    Args:
        pool: the messages service's pool.
    """

    def __init__(self, pool: asyncpg.Pool):
        self._pool = pool

    async def position(self, account_id: str, event_id: str) -> Position | None:
        """Where the account's event ``event_id`` is, or ``None`` if it has none."""
        row = await self._pool.fetchrow(SELECT_POSITION, account_id, event_id)
        return Position(row[0], row[1]) if row else None

    async def read(
        self,
        account_id: str,
        after: Position,
        types: Sequence[str],
        reach: Reach,
        limit: int,
    ) -> list[Event]:
        """Up to ``limit`` readable events of the account after ``after`` within
        ``reach`` (of ``types``, or any when empty), oldest first."""
        sql = _select_account_events(reach)
        args: list[Any] = [account_id, after.txid, after.seq, list(types) or None, limit]
        if reach.pod_id is not None:
            args.append(reach.pod_id)
        if reach.owner_ids is not None:
            args.append(list(reach.owner_ids))
        return [event_of(r) for r in await self._pool.fetch(sql, *args)]


class Subscription:
    """One waiter's view of the notifications: ``wait`` returns when its account
    (or, for ``None``, any account) had an event committed since the last wait."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        """Marks that something was committed."""
        self._event.set()

    async def wait(self, seconds: float) -> bool:
        """Waits up to ``seconds``; returns whether a notification came."""
        try:
            await asyncio.wait_for(self._event.wait(), seconds)
        except TimeoutError:
            return False
        self._event.clear()
        return True


class EventListener:
    """One ``LISTEN mailplane_events`` connection for the whole process, fanned
    out to its subscriptions; started by the first subscriber, reconnected
    (waking everyone, since notifications may have been missed) when lost.

    Args:
        dsn: the service's DSN (a dedicated connection, not one of the pool's).
        channel: the notification channel.
    """

    def __init__(self, dsn: str, channel: str = EVENTS_CHANNEL):
        self._dsn = dsn
        self._channel = channel
        self._by_account: dict[str | None, set[Subscription]] = {}
        self._conn: asyncpg.Connection | None = None
        self._lock = asyncio.Lock()
        self._closed = False

    @contextlib.asynccontextmanager
    async def subscribe(self, account_id: str | None) -> AsyncIterator[Subscription]:
        """A subscription to ``account_id``'s events (``None``: every account's),
        live for the ``async with`` block. Subscribe before reading, so that an
        event committed between the read and the wait is not missed."""
        await self.connect()
        subscription = Subscription()
        self._by_account.setdefault(account_id, set()).add(subscription)
        try:
            yield subscription
        finally:
            subscribers = self._by_account.get(account_id)
            if subscribers is not None:
                subscribers.discard(subscription)
                if not subscribers:
                    del self._by_account[account_id]

    async def close(self) -> None:
        """Closes the connection; subscriptions stop being notified."""
        self._closed = True
        if self._conn is not None and not self._conn.is_closed():
            await self._conn.close()
        self._conn = None

    async def connect(self) -> None:
        """Opens the listening connection unless it is open (idempotent; waiters
        call it again after a wake, so a lost connection comes back)."""
        if self._conn is not None and not self._conn.is_closed():
            return
        async with self._lock:
            if self._closed or (self._conn is not None and not self._conn.is_closed()):
                return
            conn = await asyncpg.connect(self._dsn)
            await conn.add_listener(self._channel, self._on_notification)
            conn.add_termination_listener(self._on_lost)
            self._conn = conn
            _log.info("events_listening", channel=self._channel)

    def _on_notification(self, _conn: object, _pid: int, _channel: str, account_id: str) -> None:
        for subscription in self._by_account.get(account_id, ()):
            subscription.notify()
        for subscription in self._by_account.get(None, ()):
            subscription.notify()

    def _on_lost(self, _conn: object) -> None:
        _log.warning("events_listener_lost", channel=self._channel)
        self._conn = None
        for subscribers in self._by_account.values():
            for subscription in subscribers:
                subscription.notify()
