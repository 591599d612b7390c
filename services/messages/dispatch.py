"""Webhook delivery (DESIGN §7.6), in the ``worker`` process: fan-out of the
event log into deliveries, then signed HTTP POSTs with retries.

Fan-out: the dispatcher reads the log after its cursor (one row,
``webhook_cursor``, locked ``FOR UPDATE`` so workers take turns and a restart
resumes), in the same ``(txid, seq)`` order and under the same readability rule
as every reader (``services.messages.event_log``), and writes one delivery per
matching enabled webhook in the transaction that moves the cursor. It wakes on
the process's ``LISTEN mailplane_events``.

Sending: due deliveries are taken with ``FOR UPDATE SKIP LOCKED`` and leased in
the same statement (their next attempt moved past the attempt's timeout), so
two workers never send one delivery at once and a crashed worker's deliveries
come back when the lease ends. Every POST goes through one shared aiohttp
session (pooled keep-alive connections; aiohttp delivered ~20x what httpx did in
the research, mailflow §3), at most ``concurrency`` in flight. Headers follow
Standard Webhooks, signed by the ``standardwebhooks`` package: ``webhook-id`` is
the event ID, the same on every attempt, so receivers dedupe on it. A 2xx within
the timeout (15 s) is success; otherwise the next attempt is due after the retry
schedule's next delay (5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h), then the
delivery has failed. Outcomes are written in batches: the attempt log and the
delivery's new state.

Targets: unless ``webhook_allow_private``, a host that resolves to a loopback,
private, link-local or otherwise non-global address is refused when the
connection is made (the resolver below), not only at registration, so a DNS
answer that changes later cannot aim deliveries inside the network.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import ipaddress
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import orjson
from aiohttp.abc import AbstractResolver, ResolveResult
from cryptography.fernet import Fernet
from standardwebhooks import Webhook as Signer

from services.chassis import ids, metrics
from services.chassis.logs import get_logger
from services.messages.event_log import SELECT_LOG, Event, EventListener, Position, event_of

_log = get_logger("mailplane.messages.webhooks")

#: Seconds after a failed attempt before the next (DESIGN §7.6); then it has failed.
RETRY_SCHEDULE: tuple[float, ...] = (5, 300, 1800, 7200, 18000, 36000, 36000)
#: Bytes of an endpoint's answer read (and thrown away) so its connection is reused.
ANSWER_BYTES = 64 * 1024
#: Characters of an error kept in the delivery log.
ERROR_CHARS = 500
#: Events fanned out per transaction; deliveries taken per statement.
FAN_OUT_BATCH, TAKE_BATCH = 500, 200
USER_AGENT = "Mailplane-Webhooks/1"


def is_public(address: str) -> bool:
    """Whether an IP address is globally routable (not loopback, private,
    link-local, shared, multicast, reserved or unspecified; IPv4-mapped IPv6
    judged by its IPv4)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def ip_literal(host: str) -> str | None:
    """``host`` if it is an IP address (brackets stripped), else ``None``."""
    bare = host.strip("[]")
    try:
        ipaddress.ip_address(bare.split("%", 1)[0])
    except ValueError:
        return None
    return bare


class PublicResolver(AbstractResolver):
    """aiohttp's default resolver, refusing hosts with a non-public address
    unless private targets are allowed: checked at every connection."""

    def __init__(self, allow_private: bool):
        self._inner = aiohttp.DefaultResolver()
        self._allow_private = allow_private

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """Resolves ``host``; raises ``OSError`` when an address is not public."""
        results = await self._inner.resolve(host, port, family)
        if not self._allow_private and not all(is_public(r["host"]) for r in results):
            raise OSError(
                errno.EPERM, f"{host} resolves to a private, loopback or link-local address"
            )
        return results

    async def close(self) -> None:
        """Closes the inner resolver."""
        await self._inner.close()


class SecretBox:
    """Webhook signing secrets: made, sealed at rest (Fernet) and opened.

    Args:
        key: a Fernet key (``MAILPLANE_WEBHOOK_SECRET_KEY``).
    """

    def __init__(self, key: str):
        self._fernet = Fernet(key)

    def new(self) -> tuple[str, bytes]:
        """A fresh secret, ``whsec_`` + base64 of 24 random bytes, and its sealed form."""
        import base64
        import secrets

        secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
        return secret, self._fernet.encrypt(secret.encode())

    @functools.lru_cache(maxsize=4096)  # noqa: B019 - one box per process, bounded
    def signer(self, sealed: bytes) -> Signer:
        """The Standard Webhooks signer of a sealed secret (cached: a sealed
        secret never changes; rotating makes a new one)."""
        return Signer(self._fernet.decrypt(sealed).decode())


@dataclass(frozen=True)
class Outcome:
    """One attempt's result: the HTTP status, or why there was none."""

    status_code: int | None
    error: str | None
    duration_ms: int
    attempted_at: datetime

    @property
    def ok(self) -> bool:
        """Whether the endpoint answered 2xx."""
        return self.status_code is not None and 200 <= self.status_code < 300


def event_body(event: Event) -> bytes:
    """The JSON body of a delivery (DESIGN §7.6 Event); ``data`` embedded as stored."""
    return orjson.dumps(
        {
            "id": event.id,
            "type": event.type,
            "createdAt": event.created_at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
            "accountId": event.account_id,
            "podId": event.pod_id,
            "inboxId": event.inbox_id,
            "mailboxId": event.mailbox_id,
            "data": orjson.Fragment(event.data),
        }
    )


class Sender:
    """Signs and POSTs events through one aiohttp session (made on first use,
    in the running loop).

    Args:
        box: opens sealed secrets.
        timeout_seconds: an attempt's whole time limit (15 s).
        allow_private: whether loopback and private targets are allowed.
        concurrency: connections the session keeps at most.
    """

    def __init__(
        self, box: SecretBox, timeout_seconds: float, allow_private: bool, concurrency: int
    ):
        self._box = box
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._timeout_seconds = timeout_seconds
        self._allow_private = allow_private
        self._concurrency = concurrency
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self._concurrency,
                resolver=PublicResolver(self._allow_private),
                ttl_dns_cache=10,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=self._timeout,
                headers={"user-agent": USER_AGENT, "content-type": "application/json"},
                skip_auto_headers=("accept-encoding",),
            )
        return self._session

    async def close(self) -> None:
        """Closes the session and its connections."""
        if self._session is not None:
            await self._session.close()

    async def send(self, url: str, sealed_secret: bytes, event: Event) -> Outcome:
        """POSTs ``event`` to ``url`` signed with the secret; never raises for
        the endpoint's failures (they are the outcome)."""
        attempted_at = datetime.now(UTC)
        started = time.perf_counter()
        body = event_body(event)
        status: int | None = None
        error: str | None = None
        try:
            host = urlsplit(url).hostname or ""
            literal = ip_literal(host)
            if literal is not None and not self._allow_private and not is_public(literal):
                raise OSError(f"{host} is a private, loopback or link-local address")
            signature = self._box.signer(sealed_secret).sign(event.id, attempted_at, body.decode())
            headers = {
                "webhook-id": event.id,
                "webhook-timestamp": str(int(attempted_at.timestamp())),
                "webhook-signature": signature,
            }
            async with self._client().post(
                url, data=body, headers=headers, allow_redirects=False
            ) as answer:
                await answer.content.read(ANSWER_BYTES)
                status = answer.status
        except TimeoutError:
            error = f"no answer within {self._timeout_seconds:g} s"
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            error = f"{type(exc).__name__}: {exc}"[:ERROR_CHARS]
        duration_ms = round((time.perf_counter() - started) * 1000)
        return Outcome(status, error, duration_ms, attempted_at)


# --- the dispatcher's SQL ------------------------------------------------------------

LOCK_CURSOR = "SELECT txid::text, seq FROM webhook_cursor FOR UPDATE"
MOVE_CURSOR = "UPDATE webhook_cursor SET txid = $1::text::xid8, seq = $2"
SELECT_HOOKS_OF = """
SELECT id, account_id, event_types, pod_ids, inbox_ids, mailbox_ids, reach_pod_id,
       reach_owner_ids, created_at
FROM webhooks WHERE account_id = ANY($1::text[]) AND enabled
"""
INSERT_DELIVERIES = """
INSERT INTO webhook_deliveries (id, webhook_id, account_id, event_id, event_type, state,
    next_attempt_at)
SELECT x.id, x.webhook_id, x.account_id, x.event_id, x.event_type, 'pending', now()
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[])
    AS x(id, webhook_id, account_id, event_id, event_type)
ON CONFLICT (webhook_id, event_id) DO NOTHING
"""
#: Takes up to $1 due deliveries and leases them for $2 seconds, with what sending needs.
TAKE_DUE = """
WITH due AS (
    SELECT id FROM webhook_deliveries
    WHERE state = 'pending' AND next_attempt_at <= now()
    ORDER BY next_attempt_at
    LIMIT $1
    FOR UPDATE SKIP LOCKED
)
UPDATE webhook_deliveries d
SET attempts = d.attempts + 1, next_attempt_at = now() + make_interval(secs => $2)
FROM due, webhooks w, events e
WHERE d.id = due.id AND w.id = d.webhook_id AND e.id = d.event_id
RETURNING d.id AS delivery_id, d.attempts AS attempt, w.url, w.secret_encrypted,
    e.id, e.type, e.created_at, e.account_id, e.pod_id, e.inbox_id, e.mailbox_id,
    e.data::text AS data, e.txid::text AS txid, e.seq
"""
#: Appends attempts to the log (skipping deliveries deleted meanwhile).
INSERT_ATTEMPTS = """
INSERT INTO webhook_attempts (delivery_id, attempt, status_code, error, duration_ms,
    attempted_at)
SELECT x.delivery_id, x.attempt, x.status_code, x.error, x.duration_ms, x.attempted_at
FROM unnest($1::text[], $2::int[], $3::int[], $4::text[], $5::int[], $6::timestamptz[])
    AS x(delivery_id, attempt, status_code, error, duration_ms, attempted_at)
JOIN webhook_deliveries d ON d.id = x.delivery_id
ON CONFLICT DO NOTHING
"""
#: Sets each delivery's state, and its next attempt $3 seconds from now while pending.
SETTLE = """
UPDATE webhook_deliveries d
SET state = x.state,
    next_attempt_at = CASE WHEN x.state = 'pending'
                           THEN now() + make_interval(secs => x.delay) END
FROM unnest($1::text[], $2::text[], $3::float8[]) AS x(id, state, delay)
WHERE d.id = x.id
"""


@dataclass(frozen=True)
class _Hook:
    """What fan-out needs of an enabled webhook."""

    id: str
    event_types: frozenset[str]
    pod_ids: frozenset[str]
    owner_ids: frozenset[str]
    reach_pod_id: str | None
    reach_owner_ids: frozenset[str] | None
    created_at: datetime

    def wants(self, event: Event) -> bool:
        """Whether the event goes to this webhook: its type, within the reach of
        the key that made it, within its filters (pods, and inboxes or
        mailboxes), and not older than the webhook."""
        if event.type not in self.event_types or event.created_at < self.created_at:
            return False
        if self.reach_pod_id is not None and event.pod_id != self.reach_pod_id:
            return False
        if self.reach_owner_ids is not None and event.owner_id not in self.reach_owner_ids:
            return False
        if self.pod_ids and event.pod_id not in self.pod_ids:
            return False
        return not self.owner_ids or event.owner_id in self.owner_ids


def _hook_of(row: Any) -> _Hook:
    reach = row["reach_owner_ids"]
    return _Hook(
        row["id"],
        frozenset(row["event_types"]),
        frozenset(row["pod_ids"]),
        frozenset([*row["inbox_ids"], *row["mailbox_ids"]]),
        row["reach_pod_id"],
        frozenset(reach) if reach is not None else None,
        row["created_at"],
    )


@dataclass(frozen=True)
class _Job:
    delivery_id: str
    attempt: int
    url: str
    sealed_secret: bytes
    event: Event


class Dispatcher:
    """Fans the event log out to webhooks and delivers, until cancelled.

    Args:
        pool: the messages service's pool.
        listener: the process's ``LISTEN mailplane_events`` connection.
        sender: signs and POSTs.
        retry_schedule: seconds before each retry (DESIGN §7.6 by default; tests
            pass shorter ones).
        concurrency: attempts in flight at most.
        timeout_seconds: an attempt's time limit; leases outlast it.
        idle_poll_seconds: how often due retries are looked for without a wake.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        listener: EventListener,
        sender: Sender,
        *,
        retry_schedule: Sequence[float] = RETRY_SCHEDULE,
        concurrency: int = 128,
        timeout_seconds: float = 15.0,
        idle_poll_seconds: float = 1.0,
    ):
        self._pool = pool
        self._listener = listener
        self._sender = sender
        self._schedule = tuple(retry_schedule)
        self._concurrency = concurrency
        self._lease_seconds = timeout_seconds + 45.0
        self._idle = idle_poll_seconds
        self._in_flight = 0
        self._due = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self._settled = asyncio.Event()
        self._outcomes: list[tuple[_Job, Outcome]] = []
        self._attempts: set[asyncio.Task[None]] = set()

    async def run_forever(self) -> None:
        """Fans out, sends and records until cancelled."""
        _log.info("webhooks_dispatching", concurrency=self._concurrency)
        tasks = [
            asyncio.create_task(self._fan_out_forever()),
            asyncio.create_task(self._send_forever()),
            asyncio.create_task(self._record_forever()),
        ]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in [*tasks, *self._attempts]:
                task.cancel()
            await asyncio.gather(*tasks, *self._attempts, return_exceptions=True)

    # --- fan-out -------------------------------------------------------------------

    async def fan_out_once(self) -> int:
        """Fans out the next batch of readable events; returns how many were read."""
        async with self._pool.acquire() as conn, conn.transaction():
            cursor = await conn.fetchrow(LOCK_CURSOR)
            rows = await conn.fetch(SELECT_LOG, cursor[0], cursor[1], FAN_OUT_BATCH)
            if not rows:
                return 0
            events = [event_of(r) for r in rows]
            hooks: dict[str, list[_Hook]] = {}
            accounts = list({e.account_id for e in events})
            for row in await conn.fetch(SELECT_HOOKS_OF, accounts):
                hooks.setdefault(row["account_id"], []).append(_hook_of(row))
            pairs = [
                (hook, e) for e in events for hook in hooks.get(e.account_id, ()) if hook.wants(e)
            ]
            if pairs:
                await conn.execute(
                    INSERT_DELIVERIES,
                    [ids.new_id("whd") for _ in pairs],
                    [hook.id for hook, _ in pairs],
                    [e.account_id for _, e in pairs],
                    [e.id for _, e in pairs],
                    [e.type for _, e in pairs],
                )
            last: Position = events[-1].position
            await conn.execute(MOVE_CURSOR, last.txid, last.seq)
        if pairs:
            self._due.set()
        return len(rows)

    async def _fan_out_forever(self) -> None:
        retry: float | None = None
        async with self._listener.subscribe(None) as subscription:
            while True:
                try:
                    read = await self.fan_out_once()
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                    _log.exception("webhooks_fan_out_failed")
                    read = 0
                if read == FAN_OUT_BATCH:
                    continue
                if read:
                    retry = None
                woke = await subscription.wait(retry or self._idle)
                if woke:
                    retry = 0.02
                elif retry is not None:
                    retry = min(retry * 2, self._idle)
                await self._listener.connect()

    # --- sending -------------------------------------------------------------------

    async def _take(self, limit: int) -> list[_Job]:
        rows = await self._pool.fetch(TAKE_DUE, limit, self._lease_seconds)
        return [
            _Job(
                r["delivery_id"], r["attempt"], r["url"], bytes(r["secret_encrypted"]), event_of(r)
            )
            for r in rows
        ]

    async def _send_forever(self) -> None:
        while True:
            free = self._concurrency - self._in_flight
            if free <= 0:
                self._slot_freed.clear()
                await self._slot_freed.wait()
                continue
            try:
                jobs = await self._take(min(free, TAKE_BATCH))
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                _log.exception("webhooks_take_failed")
                jobs = []
            if not jobs:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._due.wait(), self._idle)
                self._due.clear()
                continue
            for job in jobs:
                self._in_flight += 1
                task = asyncio.create_task(self._attempt(job))
                self._attempts.add(task)
                task.add_done_callback(self._attempts.discard)

    async def _attempt(self, job: _Job) -> None:
        try:
            outcome = await self._sender.send(job.url, job.sealed_secret, job.event)
            metrics.WEBHOOK_DELIVERIES.labels("succeeded" if outcome.ok else "failed").inc()
            self._outcomes.append((job, outcome))
            self._settled.set()
        finally:
            self._in_flight -= 1
            self._slot_freed.set()

    # --- recording -----------------------------------------------------------------

    def next_state(self, attempt: int, outcome: Outcome) -> tuple[str, float]:
        """The delivery's state after attempt number ``attempt`` (1 for the first)
        and, while pending, the seconds until the next."""
        if outcome.ok:
            return "succeeded", 0.0
        if attempt <= len(self._schedule):
            return "pending", float(self._schedule[attempt - 1])
        return "failed", 0.0

    async def _record_forever(self) -> None:
        while True:
            await self._settled.wait()
            self._settled.clear()
            batch, self._outcomes = self._outcomes, []
            if not batch:
                continue
            try:
                await self.record(batch)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                # The leases end and the deliveries are attempted again (at least once).
                _log.exception("webhooks_record_failed", outcomes=len(batch))

    async def record(self, batch: Sequence[tuple[_Job, Outcome]]) -> None:
        """Writes attempts and the deliveries' new states, in one transaction."""
        states = [self.next_state(job.attempt, outcome) for job, outcome in batch]
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                INSERT_ATTEMPTS,
                [job.delivery_id for job, _ in batch],
                [job.attempt for job, _ in batch],
                [o.status_code for _, o in batch],
                [o.error for _, o in batch],
                [o.duration_ms for _, o in batch],
                [o.attempted_at for _, o in batch],
            )
            await conn.execute(
                SETTLE,
                [job.delivery_id for job, _ in batch],
                [state for state, _ in states],
                [delay for _, delay in states],
            )
        failed = sum(1 for _, o in batch if not o.ok)
        if failed:
            _log.info("webhooks_attempts_failed", failed=failed, attempts=len(batch))
