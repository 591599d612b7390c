"""Outbound delivery: the queue worker of ``python -m services.messages worker``
(DESIGN §7.1, §7.5; research/mailflow.md §5.5 step 2), and bounce reports.

The worker leases due ``deliveries`` rows (one per outbound message and
recipient domain) with ``FOR UPDATE SKIP LOCKED``, each for
``MAILPLANE_DELIVERY_LEASE_SECONDS``: a worker killed mid-delivery leaves rows
that are taken again when their lease runs out. It wakes on ``NOTIFY
mailplane_outbound`` and polls as a safety net (deferred rows fall due there).

For each lease:

1. A paused mailbox's delivery is held (``held``; never dropped), except a
   message with a null return path (auto-replies go on while paused).
2. Recipients suppressed since the message was queued are ``rejected``.
3. Before the message's first attempt it is DKIM-signed through the injected
   ``sign`` (the domains service holds the key) and the signed bytes replace
   the stored ones. ``domain_not_sendable`` fails the message for good;
   ``unavailable`` tries again later without counting an attempt.
4. A recipient domain of ours (the shared domain, or a domain verified for
   receiving) never leaves: its recipients are resolved in the address directory
   as the SMTP edge resolves them and the message is spooled for the ingest
   worker (``delivered``); an address with no route bounces (5.1.1).
5. Otherwise MX lookup (RFC 5321 §5.1: by preference; no MX → the domain's own
   A/AAAA, the implicit MX; a Null MX ``0 .`` → bounce, RFC 7505), or every
   message through ``MAILPLANE_SMARTHOST``; EHLO, opportunistic STARTTLS without
   certificate checks (as MTAs do when nothing requires TLS), MAIL FROM the
   return path (``<>`` when null), RCPT each recipient (a 5xx bounces that
   recipient only), DATA. 2xx → ``sent``; 4xx, a connection or DNS failure →
   ``deferred`` with a backoff (RFC 5321 §4.5.4.1; Postfix's 5 min doubling to
   about an hour), bounced once ``MAILPLANE_DELIVERY_MAX_HOURS`` have passed;
   5xx → ``bounced`` and suppressed.

Each outcome commits right after the remote's reply (``DeliveryStore.record``),
so the window in which a crash makes a message go out twice (the remote said
250, we had not committed yet; RFC 1047) is one transaction long.

SMTP connections are kept per MX address for the next message to the same
host (one transaction after another on one session, RFC 5321 §3.3), which
skips the TCP, greeting, EHLO and STARTTLS round trips.

Asynchronous bounces come back to the VERP return path
``<local>+bounce-<message ULID>@<domain>`` (``return_path_of``); the ingest
worker recognises it (``bounced_message_of``) and reads the report
(``bounce_report``, RFC 3464 through flufl.bounce).
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.message
import email.utils
import hashlib
import ipaddress
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import aiosmtplib
import asyncpg
from flufl.bounce import scan_message

from services.chassis.config import Settings as ServiceSettings
from services.chassis.errors import MailplaneError
from services.chassis.logs import get_logger
from services.messages.delivery_store import DeliveryStore, Lease, LocalHandoff, Outcome
from services.messages.edge import lookup_of, route_of
from services.messages.models import Owner
from services.messages.resolver import DnsTemporaryError, SenderResolver
from services.messages.store import MailStore, Recipient

_log = get_logger("mailplane.delivery")

#: DKIM-signs a message: ``(account_id, domain, raw) → signed raw``; raises
#: ``MailplaneError`` ``domain_not_sendable`` or ``unavailable``
#: (``services.messages.dkim.DkimSigner.sign``).
Signer = Callable[[str, str, bytes], Awaitable[bytes]]

#: The sub-address tag of a VERP return path: ``local+bounce-<ulid>@domain``.
BOUNCE_TAG = "+bounce-"
#: Deliveries leased per round trip.
LEASE_BATCH = 32
#: Seconds between polls when no NOTIFY arrives (deferred rows fall due here).
IDLE_POLL = 1.0
#: Seconds an idle SMTP connection is kept for reuse.
IDLE_SECONDS = 30.0
#: MX hosts (addresses) tried per attempt before it is deferred.
MAX_HOSTS = 5
#: Deliveries past DATA whose outcome is not committed yet, beyond which the
#: next DATA waits (``Delivery._admit_data``).
COMMIT_BACKLOG = 4
#: Retries wait at most this many times the base (300 s → 3,600 s).
MAX_BACKOFF_FACTOR = 12
DB_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)
CONNECTION_ERRORS = (aiosmtplib.SMTPException, OSError, TimeoutError)


def return_path_of(address: str, message_id: str) -> str:
    """The VERP envelope sender of an outbound message: its sender's address
    with the sub-address tag ``bounce-<ULID>`` (RFC 5233), so that a bounce
    report names the message it is about without being parsed for it.

    Args:
        address: the sender's bare address, ``local@domain``.
        message_id: the message's ``msg_<ULID>`` ID.

    Returns:
        ``local+bounce-<ulid lower case>@domain``.
    """
    local, _, domain = address.rpartition("@")
    ulid = message_id.removeprefix("msg_").lower()
    return f"{local}{BOUNCE_TAG}{ulid}@{domain.lower()}"


def bounced_message_of(address: str) -> str | None:
    """The inverse of ``return_path_of``: the ``msg_<ULID>`` ID a VERP return
    path names, or ``None`` when ``address`` carries no bounce tag."""
    local, _, _ = address.rpartition("@")
    _, tag, ulid = local.rpartition(BOUNCE_TAG)
    if not tag or len(ulid) != 26 or not ulid.isalnum():
        return None
    return f"msg_{ulid.upper()}"


def bounce_report(raw: bytes) -> tuple[list[str], str] | None:
    """Reads a bounce report (RFC 3464 DSN, or one of the common non-standard
    formats flufl.bounce knows).

    Returns:
        ``(addresses that failed for good, lower case; the report's status
        and diagnostic as a reply line)``, or ``None`` when ``raw`` is not a
        report at all (an ordinary message sent to a return path, such as an
        out-of-office answer: it is stored as mail). A report of only delayed
        or delivered recipients gives no addresses.
    """
    report = email.message_from_bytes(raw)
    failed = sorted({a.decode("ascii").lower() for a in scan_message(report)})
    is_report = report.get_content_type() == "multipart/report"
    if not failed and not is_report:
        return None
    reply = "DSN reported a permanent failure"
    for part in report.walk():
        if part.get_content_type() != "message/delivery-status" or not part.is_multipart():
            continue
        for block in part.get_payload():
            if not isinstance(block, email.message.Message):
                continue
            status = block.get("status")
            if status and status.strip().startswith("5"):
                diagnostic = " ".join(str(block.get("diagnostic-code", "")).split())
                reply = f"{status.strip()} {diagnostic}".strip()
                break
    return failed, reply[:1000]


def retry_delay(attempts: int, base: float) -> float:
    """Seconds before the next attempt after ``attempts`` earlier ones failed
    for now: ``base`` doubling per attempt, at most ``MAX_BACKOFF_FACTOR ×
    base`` (RFC 5321 §4.5.4.1: at least 30 minutes between tries in general;
    Postfix starts at 300 s and stops growing at 4,000 s)."""
    return float(min(base * 2 ** max(attempts, 0), base * MAX_BACKOFF_FACTOR))


class NoMailExchanger(Exception):
    """The domain accepts no mail: a Null MX (RFC 7505), or no MX, A or AAAA."""


@dataclass(frozen=True)
class Options:
    """What the worker needs of the service's settings (``options_of``).

    Attributes:
        helo: the name we greet with (``MAILPLANE_MAIL_HOST``).
        shared_domain: the platform's own domain (always local).
        port: the port of MX hosts (``MAILPLANE_OUTBOUND_PORT``).
        smarthost: ``host:port`` every message is relayed through, or ``""``.
        max_hours: hours a delivery is retried (``MAILPLANE_DELIVERY_MAX_HOURS``).
        retry_base: seconds before the first retry.
        concurrency: deliveries in flight at once.
        destination_concurrency: deliveries in flight at once per destination.
        lease_seconds: how long a leased delivery stays taken.
        timeout: seconds one SMTP step may take.
        idle_poll: seconds between polls when no NOTIFY comes.
    """

    helo: str
    shared_domain: str
    port: int = 25
    smarthost: str = ""
    max_hours: int = 72
    retry_base: float = 300.0
    concurrency: int = 64
    destination_concurrency: int = 20
    lease_seconds: float = 900.0
    timeout: float = 60.0
    idle_poll: float = IDLE_POLL


def options_of(settings: ServiceSettings) -> Options:
    """The worker's options from the process's settings (``MAILPLANE_*``)."""
    return Options(
        helo=settings.mail_host,
        shared_domain=settings.shared_domain,
        port=settings.outbound_port,
        smarthost=settings.smarthost,
        max_hours=settings.delivery_max_hours,
        retry_base=settings.delivery_retry_base_seconds,
        concurrency=settings.delivery_concurrency,
        destination_concurrency=settings.delivery_destination_concurrency,
        lease_seconds=settings.delivery_lease_seconds,
        timeout=settings.delivery_timeout_seconds,
    )


class Connections:
    """Idle SMTP sessions kept per ``(address, port)`` for the next transaction.

    Args:
        helo: the EHLO name.
        timeout: seconds one SMTP step may take.
        per_host: idle sessions kept per address at most.
    """

    def __init__(self, helo: str, timeout: float, per_host: int):
        self._helo = helo
        self._timeout = timeout
        self._per_host = per_host
        self._idle: dict[tuple[str, int], list[tuple[aiosmtplib.SMTP, float]]] = {}
        #: Sessions opened and transactions on a reused one, for tests and metrics.
        self.opened = 0
        self.reused = 0

    async def take(self, host: str, port: int) -> tuple[aiosmtplib.SMTP, bool]:
        """An idle session to ``host:port`` or a new one (EHLO, STARTTLS when
        offered, no certificate checks); returns it and whether it was reused.

        Raises:
            aiosmtplib.SMTPException, OSError: the host did not take a session.
        """
        now = asyncio.get_running_loop().time()
        idle = self._idle.get((host, port), [])
        while idle:
            client, since = idle.pop()
            if client.is_connected and now - since < IDLE_SECONDS:
                self.reused += 1
                return client, True
            _drop(client)
        client = aiosmtplib.SMTP(
            hostname=host,
            port=port,
            local_hostname=self._helo,
            timeout=self._timeout,
            start_tls=None,  # STARTTLS when offered (opportunistic)
            validate_certs=False,
        )
        await client.connect()
        self.opened += 1
        return client, False

    def give_back(self, host: str, port: int, client: aiosmtplib.SMTP) -> None:
        """Keeps a session whose last transaction ended cleanly for reuse."""
        idle = self._idle.setdefault((host, port), [])
        if client.is_connected and len(idle) < self._per_host:
            idle.append((client, asyncio.get_running_loop().time()))
        else:
            _drop(client)

    def prune(self) -> None:
        """Closes sessions idle longer than ``IDLE_SECONDS``."""
        now = asyncio.get_running_loop().time()
        for key, idle in list(self._idle.items()):
            keep = [(c, t) for c, t in idle if now - t < IDLE_SECONDS and c.is_connected]
            for client, since in idle:
                if (client, since) not in keep:
                    _drop(client)
            if keep:
                self._idle[key] = keep
            else:
                del self._idle[key]

    async def close(self) -> None:
        """Says QUIT on every idle session."""
        idle = [c for sessions in self._idle.values() for c, _ in sessions]
        self._idle.clear()
        await asyncio.gather(*(_quit(c) for c in idle), return_exceptions=True)


def _drop(client: aiosmtplib.SMTP) -> None:
    with contextlib.suppress(Exception):  # already gone
        client.close()


async def _quit(client: aiosmtplib.SMTP) -> None:
    try:
        await asyncio.wait_for(client.quit(), 2.0)
    except Exception:
        _drop(client)


class Delivery:
    """The outbound queue worker.

    Args:
        pool: the messages service's pool.
        resolver: the process's caching DNS resolver (``MAILPLANE_DNS_NAMESERVERS``).
        sign: the DKIM signer.
        settings: ports, limits and schedule.
    """

    def __init__(
        self, pool: asyncpg.Pool, resolver: SenderResolver, sign: Signer, settings: Options
    ):
        self._store = DeliveryStore(pool)
        self._mail = MailStore(pool)
        self._resolver = resolver
        self._sign = sign
        self._settings = settings
        self.connections = Connections(
            settings.helo, settings.timeout, settings.destination_concurrency
        )
        #: Per destination: its gate and how many deliveries hold or wait for it.
        self._destinations: dict[str, tuple[asyncio.Semaphore, list[int]]] = {}
        self._signing: dict[str, asyncio.Future[bytes]] = {}
        self._in_flight: set[asyncio.Task[None]] = set()
        #: Leases whose DATA went out and whose outcome is not committed yet.
        self._unrecorded: set[int] = set()
        self._recorded = asyncio.Condition()
        self._slot_free = asyncio.Event()

    async def run_once(self, limit: int = LEASE_BATCH) -> int:
        """Leases up to ``limit`` due deliveries and delivers them all (for tests
        and tools); returns how many were leased."""
        leases = await self._lease(limit)
        await asyncio.gather(*(self._deliver(lease) for lease in leases))
        return len(leases)

    async def run_forever(self, listen_dsn: str) -> None:
        """Delivers until cancelled, woken by ``NOTIFY mailplane_outbound`` (and a
        poll every ``idle_poll`` seconds); at most ``concurrency`` deliveries in
        flight; survives database outages by retrying."""
        wake = asyncio.Event()
        listener: asyncpg.Connection | None = None
        pump = asyncio.create_task(self._pump(wake))
        try:
            while True:
                try:
                    if listener is None or listener.is_closed():
                        listener = await asyncpg.connect(listen_dsn)
                        await listener.add_listener("mailplane_outbound", lambda *_: wake.set())
                    await asyncio.sleep(self._settings.idle_poll)
                    wake.set()
                    self.connections.prune()
                except DB_ERRORS:
                    _log.warning("delivery_listener_waiting_for_database", exc_info=True)
                    listener = None
        finally:
            pump.cancel()
            await asyncio.gather(pump, return_exceptions=True)
            for task in list(self._in_flight):
                task.cancel()
            await asyncio.gather(*self._in_flight, return_exceptions=True)
            await self.connections.close()
            if listener is not None:
                await listener.close()

    async def _pump(self, wake: asyncio.Event) -> None:
        """Leases while there are free slots and due rows, else waits."""
        while True:
            try:
                free = self._settings.concurrency - len(self._in_flight)
                if free <= 0:
                    self._slot_free.clear()
                    await self._slot_free.wait()
                    continue
                wake.clear()  # a NOTIFY during the lease sets it again
                want = min(free, LEASE_BATCH)
                leases = await self._lease(want)
                for lease in leases:
                    task = asyncio.create_task(self._deliver(lease))
                    self._in_flight.add(task)
                    task.add_done_callback(self._done)
                if len(leases) < want:
                    await wake.wait()
            except DB_ERRORS:
                _log.warning("delivery_waiting_for_database", exc_info=True)
                await asyncio.sleep(1.0)
            except Exception:  # a bad row must not stop the queue
                _log.exception("delivery_lease_failed")
                await asyncio.sleep(1.0)

    async def _lease(self, limit: int) -> list[Lease]:
        options = self._settings
        return await self._store.lease(limit, options.lease_seconds, options.shared_domain)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._slot_free.set()

    async def _deliver(self, lease: Lease) -> None:
        """One attempt of one lease, recorded; never raises (a failure to record
        leaves the lease to run out and the row to be taken again)."""
        try:
            if lease.owner_paused and lease.return_path and await self._store.hold(lease):
                return
            outcomes: list[Outcome] = []
            handoff = None
            suppressed = tuple(r for r in lease.recipients if r in lease.suppressed)
            if suppressed:
                reply = "550 5.7.1 Recipient is on the account's suppression list"
                outcomes.append(Outcome("rejected", suppressed, reply))
            recipients = tuple(r for r in lease.recipients if r not in lease.suppressed)
            if recipients:
                try:
                    raw = await self._signed(lease)
                except MailplaneError as exc:
                    if exc.code in ("domain_not_sendable", "invalid_argument"):
                        await self._store.fail(lease, f"550 5.7.0 {exc.message}")
                        return
                    reply = f"451 4.3.0 DKIM signing unavailable: {exc.message}"
                    if datetime.now(UTC) >= lease.expires_at:
                        expired = f"554 5.4.7 Not sent in its lifetime; last reply: {reply}"
                        outcomes.append(Outcome("bounced", recipients, expired))
                    else:
                        wait = self._settings.retry_base
                        outcomes.append(Outcome("queued", recipients, reply, wait))
                else:
                    if lease.local:
                        more, handoff = await self._deliver_locally(lease, raw, recipients)
                    else:
                        more = await self._deliver_remotely(lease, raw, recipients)
                    outcomes.extend(self._scheduled(lease, more))
            if not await self._store.record(lease, outcomes, handoff):
                _log.warning("delivery_lease_lost", delivery_id=lease.id)
        except asyncio.CancelledError:
            raise
        except Exception:
            _log.exception("delivery_failed", delivery_id=lease.id, message_id=lease.message_id)
            await self._defer_after_bug(lease)
        finally:
            await self._committed(lease)

    async def _defer_after_bug(self, lease: Lease) -> None:
        """A delivery that failed for a reason of our own is deferred like a 4xx
        (counted, backed off, bounced past ``max_hours``), so a row that keeps
        failing ends instead of being leased again forever; when even that cannot
        be recorded, the lease runs out and the row is taken again."""
        reply = "451 4.3.0 Local error in delivery; it will be retried"
        outcomes = self._scheduled(lease, [Outcome("deferred", tuple(lease.recipients), reply)])
        try:
            await self._store.record(lease, outcomes, None)
        except Exception:
            _log.exception("delivery_failure_not_recorded", delivery_id=lease.id)

    async def _admit_data(self) -> None:
        """Waits, before DATA, while ``COMMIT_BACKLOG`` deliveries have had the
        remote's reply to DATA and not yet committed it.

        A reply not yet committed is the window in which a crash sends the
        message twice (RFC 1047). When the database falls behind a fast MX,
        replies would queue for it by the dozen; holding the next DATA back
        keeps that queue, and the window, short. When the remote is the slow
        side nothing waits: DATA still in flight is not counted.
        """
        async with self._recorded:
            await self._recorded.wait_for(lambda: len(self._unrecorded) < COMMIT_BACKLOG)

    def _replied(self, lease: Lease) -> None:
        """Counts a lease whose DATA reply came and is not committed yet."""
        self._unrecorded.add(lease.id)

    async def _committed(self, lease: Lease) -> None:
        if lease.id in self._unrecorded:
            self._unrecorded.discard(lease.id)
            async with self._recorded:
                self._recorded.notify(1)

    async def _signed(self, lease: Lease) -> bytes:
        """The message's DKIM-signed bytes, signing and storing them first when
        they are not yet; concurrent deliveries of one message sign it once."""
        if lease.dkim_signed:
            return lease.raw
        pending = self._signing.get(lease.message_id)
        if pending is None:
            pending = asyncio.ensure_future(self._sign_and_store(lease))
            self._signing[lease.message_id] = pending
            pending.add_done_callback(lambda _: self._signing.pop(lease.message_id, None))
        return await asyncio.shield(pending)

    async def _sign_and_store(self, lease: Lease) -> bytes:
        _, sender = email.utils.parseaddr(lease.from_address)
        domain = sender.rpartition("@")[2].lower()
        signed = await self._sign(lease.account_id, domain, lease.raw)
        return await self._store.store_signed(lease, signed, hashlib.sha256(signed).digest())

    async def _deliver_locally(
        self, lease: Lease, raw: bytes, recipients: Sequence[str]
    ) -> tuple[list[Outcome], LocalHandoff | None]:
        """Resolves recipients on one of our domains as the SMTP edge does
        (DESIGN §7.2) and hands the message to the ingest worker."""
        lookups = {r: lookup_of(r) for r in recipients}
        candidates = sorted({c for lk in lookups.values() if lk for c in lk.candidates})
        rows = await self._mail.routes(candidates)
        owners: list[Recipient] = []
        delivered, unknown, later = [], [], []
        for address, lookup in lookups.items():
            choice: Owner | str = (
                "" if lookup is None else route_of(lookup, rows, self._settings.shared_domain)
            )
            if isinstance(choice, Owner):
                delivered.append(address)
                if all(r.owner.id != choice.id for r in owners):  # one copy per owner
                    owners.append(Recipient(lookup.exact if lookup else address, choice))
            elif choice.startswith("451"):
                later.append(address)
            else:
                unknown.append(address)
        outcomes = []
        if delivered:
            outcomes.append(Outcome("delivered", tuple(delivered), "250 2.0.0 Delivered locally"))
        if unknown:
            reply = "550 5.1.1 No such recipient here"
            outcomes.append(Outcome("bounced", tuple(unknown), reply))
        if later:
            outcomes.append(Outcome("deferred", tuple(later), "451 4.2.0 Address being set up"))
        handoff = None
        if owners:
            handoff = LocalHandoff("127.0.0.1", self._settings.helo, lease.return_path, owners, raw)
        return outcomes, handoff

    async def _deliver_remotely(
        self, lease: Lease, raw: bytes, recipients: Sequence[str]
    ) -> list[Outcome]:
        """One SMTP attempt to the domain's mail exchangers (or the smarthost)."""
        try:
            hosts = await self._exchangers(lease.domain)
        except NoMailExchanger as exc:
            return [Outcome("bounced", tuple(recipients), str(exc))]
        except DnsTemporaryError as exc:
            return [Outcome("deferred", tuple(recipients), f"451 4.4.3 {exc}")]
        last = "451 4.4.1 No mail exchanger answered"
        async with self._destination(self._settings.smarthost or lease.domain):
            for host, port in hosts[:MAX_HOSTS]:
                try:
                    return await self._transaction(host, port, lease, raw, recipients)
                except CONNECTION_ERRORS as exc:
                    last = f"451 4.4.1 {host}:{port}: {type(exc).__name__}: {exc}"
        return [Outcome("deferred", tuple(recipients), last[:1000])]

    async def _transaction(
        self, host: str, port: int, lease: Lease, raw: bytes, recipients: Sequence[str]
    ) -> list[Outcome]:
        """MAIL, RCPT each recipient, DATA on one session (reused when one is
        idle; a reused session that turns out closed is replaced once).

        Raises:
            aiosmtplib.SMTPException, OSError: no session, or it broke before a
                reply that decides the attempt.
        """
        client, reused = await self.connections.take(host, port)
        try:
            try:
                await client.mail(lease.return_path)
            except aiosmtplib.SMTPServerDisconnected:
                if not reused:
                    raise
                _drop(client)
                client, _ = await self.connections.take(host, port)
                await client.mail(lease.return_path)
        except aiosmtplib.SMTPResponseException as exc:
            await self._reset(host, port, client)
            return [_refused(exc, recipients)]
        except BaseException:
            _drop(client)
            raise
        try:
            outcomes, accepted = [], []
            for rcpt in recipients:
                try:
                    await client.rcpt(rcpt)
                    accepted.append(rcpt)
                except aiosmtplib.SMTPRecipientRefused as exc:
                    outcomes.append(_refused(exc, [rcpt]))
            if not accepted:
                await self._reset(host, port, client)
                return _merged(outcomes)
            await self._admit_data()
            try:
                reply = await client.data(raw)
                outcomes.append(Outcome("sent", tuple(accepted), f"{reply.code} {reply.message}"))
            except aiosmtplib.SMTPDataError as exc:
                outcomes.append(_refused(exc, accepted))
            finally:
                self._replied(lease)
        except BaseException:
            _drop(client)
            raise
        self.connections.give_back(host, port, client)
        return _merged(outcomes)

    async def _reset(self, host: str, port: int, client: aiosmtplib.SMTP) -> None:
        """Returns a session after a transaction that ended without DATA (RSET
        first), or drops it when that fails."""
        try:
            await client.rset()
            self.connections.give_back(host, port, client)
        except CONNECTION_ERRORS:
            _drop(client)

    async def _exchangers(self, domain: str) -> list[tuple[str, int]]:
        """The addresses to try for ``domain``, best first, with their port.

        Raises:
            NoMailExchanger: a Null MX, or no MX and no A/AAAA (RFC 5321 §5.1).
            DnsTemporaryError: DNS did not answer.
        """
        if self._settings.smarthost:
            host, _, port = self._settings.smarthost.rpartition(":")
            return [(a, int(port)) for a in await self._addresses(host.strip("[]"))] or [
                (host.strip("[]"), int(port))
            ]
        records = await self._resolver.query(domain, "MX")
        if len(records) == 1 and records[0][1] in ("", "."):
            raise NoMailExchanger(f"556 5.1.10 {domain} accepts no mail (Null MX, RFC 7505)")
        ranked = sorted((p, random.random(), x) for p, x in records)  # equal preference: shuffled
        names = [x for _, _, x in ranked if x not in ("", ".")] if records else [domain]
        out: list[tuple[str, int]] = []
        for name in names:
            out.extend((a, self._settings.port) for a in await self._addresses(name))
        if not out:
            raise NoMailExchanger(f"550 5.1.2 {domain} has no mail exchanger (no MX, A or AAAA)")
        return out

    async def _addresses(self, name: str) -> list[str]:
        try:
            return [str(ipaddress.ip_address(name))]
        except ValueError:
            pass
        found = list(await self._resolver.query(name, "A"))
        return found or list(await self._resolver.query(name, "AAAA"))

    @asynccontextmanager
    async def _destination(self, key: str) -> AsyncIterator[None]:
        """At most ``destination_concurrency`` deliveries to one destination at
        once; a destination nobody uses is forgotten."""
        entry = self._destinations.get(key)
        if entry is None:
            entry = (asyncio.Semaphore(self._settings.destination_concurrency), [0])
            self._destinations[key] = entry
        gate, users = entry
        users[0] += 1
        try:
            async with gate:
                yield
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._destinations[key]

    def _scheduled(self, lease: Lease, outcomes: Sequence[Outcome]) -> list[Outcome]:
        """Gives deferred outcomes their backoff, or bounces them once the
        delivery has been retried for ``max_hours`` (RFC 5321 §4.5.4.1)."""
        now = datetime.now(UTC)
        out = []
        for outcome in outcomes:
            if outcome.state == "deferred":
                if now >= lease.expires_at:
                    reply = (
                        f"554 5.4.7 Delivery time expired after {self._settings.max_hours}"
                        f" hours; last reply: {outcome.reply}"
                    )
                    outcome = Outcome("bounced", outcome.recipients, reply[:1000])
                else:
                    left = (lease.expires_at - now).total_seconds()
                    delay = min(retry_delay(lease.attempts, self._settings.retry_base), left)
                    outcome = replace(outcome, delay=delay)
            out.append(outcome)
        return out


def _refused(exc: aiosmtplib.SMTPResponseException, recipients: Sequence[str]) -> Outcome:
    """A refusal's outcome: 5xx bounces, anything else is tried again."""
    state = "bounced" if 500 <= exc.code < 600 else "deferred"
    return Outcome(state, tuple(recipients), f"{exc.code} {exc.message}"[:1000])


def _merged(outcomes: Sequence[Outcome]) -> list[Outcome]:
    """One outcome per (state, reply), recipients joined."""
    by: dict[tuple[str, str], list[str]] = {}
    for outcome in outcomes:
        by.setdefault((outcome.state, outcome.reply), []).extend(outcome.recipients)
    return [Outcome(state, tuple(rs), reply) for (state, reply), rs in by.items()]
