"""Durability (DESIGN §7.3: ``250`` means durable): the real ``smtp`` and
``worker`` processes (``python -m services.messages …``, as ``make run`` starts
them) against the test database, each killed with ``SIGKILL`` during a bounded
load and started again.

Senders behave as MTAs do: a transaction that got no ``250`` (the edge died
under it) is sent again, the same bytes, once the edge is back. So a message may
be spooled twice (its first copy committed, its ``250`` lost), and the ingest
worker, killed while a batch is locked in its open transaction, takes that batch
again. Afterwards every message that got a ``250`` is stored exactly once, with
exactly one event, and the spool is empty.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from email.message import EmailMessage
from typing import Any

import aiosmtplib
import httpx
from pydantic import SecretStr

from services.chassis.config import Settings
from tests.conftest import REPO_ROOT, Services, Tenant, free_port
from tests.messages.test_inbound import new_inbox

#: Messages sent, and SMTP sessions sending them at once.
TOTAL, SESSIONS = 300, 10
#: The edge is killed once this many messages got their 250; the worker once this many.
KILL_EDGE_AT, KILL_WORKER_AT = 80, 180
#: Seconds the whole load, and then the drain of the spool, may take.
LOAD_SECONDS, DRAIN_SECONDS = 40.0, 15.0
#: Spool rows for one owner (the spool is shared with the other tests).
SPOOLED = """SELECT count(*) FROM spool
WHERE recipients @> jsonb_build_array(jsonb_build_object('ownerId', $1::text))"""
#: Seconds a process may take to listen after it is started.
START_SECONDS = 15.0


def process_env(settings: Settings) -> dict[str, str]:
    """The ``MAILPLANE_*`` environment that makes a child process's settings these."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILPLANE_")}
    for field in Settings.model_fields:
        value = getattr(settings, field)
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        elif isinstance(value, bool):
            value = str(value).lower()
        env[f"MAILPLANE_{field.upper()}"] = str(value)
    env["MAILPLANE_LOG_LEVEL"] = "warning"
    return env


class MailProcess:
    """One ``python -m services.messages <command>`` child that the test kills."""

    def __init__(self, command: str, env: dict[str, str]):
        self.command = command
        self._env = env
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "services.messages", self.command],
            cwd=REPO_ROOT,
            env=self._env,
            stdin=subprocess.DEVNULL,
        )

    def kill(self) -> None:
        """``kill -9``: no handler runs, no transaction is finished."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=5)

    def signal(self, sig: int) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


async def wait_listening(host: str, port: int) -> None:
    deadline = time.monotonic() + START_SECONDS
    while True:
        with socket.socket() as s:
            if s.connect_ex((host, port)) == 0:
                return
        assert time.monotonic() < deadline, f"nothing listens on {host}:{port}"
        await asyncio.sleep(0.05)


def mail_of(to: str, n: int) -> tuple[str, bytes]:
    """Message ``n``: its Message-ID and bytes (about 1 KB)."""
    mail = EmailMessage()
    mail["From"] = "Ada Lovelace <ada@example.com>"
    mail["To"] = to
    mail["Subject"] = f"Durability {n}"
    mail["Message-ID"] = message_id = f"<{uuid.uuid4().hex}.{n}@example.com>"
    mail.set_content(f"Message {n}.\n" + "All work and no play. " * 40)
    return message_id, mail.as_bytes()


class Load:
    """``SESSIONS`` senders that send every message until it gets a 250."""

    def __init__(self, host: str, port: int, to: str):
        self._host, self._port, self._to = host, port, to
        self.mails = [mail_of(to, n) for n in range(TOTAL)]
        self._next = iter(self.mails)
        self.accepted: list[str] = []
        #: Attempts that failed (the edge was killed under them, or was not back yet).
        self.interrupted = 0

    async def run(self) -> None:
        await asyncio.wait_for(
            asyncio.gather(*(self._session() for _ in range(SESSIONS))), LOAD_SECONDS
        )

    async def _session(self) -> None:
        client: aiosmtplib.SMTP | None = None
        for message_id, raw in self._next:
            while True:
                try:
                    if client is None:
                        client = aiosmtplib.SMTP(hostname=self._host, port=self._port, timeout=5)
                        await client.connect()
                    await client.sendmail("ada@example.com", [self._to], raw)
                    self.accepted.append(message_id)
                    break
                except (aiosmtplib.SMTPException, OSError):
                    self.interrupted += 1
                    if client is not None:
                        client.close()
                    client = None
                    await asyncio.sleep(0.05)
        if client is not None:
            await client.quit()


async def wait_for(condition: Any, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not await condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def test_kill_9_of_edge_and_worker_loses_no_accepted_message_and_stores_none_twice(
    http: httpx.AsyncClient, services: Services, tenant: Tenant, settings: Settings
) -> None:
    inbox = await new_inbox(http, services, tenant)
    pool = services.messages.pool
    env = process_env(settings)
    # Its own port: the suite's in-process edge may hold the settings' one.
    host, port = "127.0.0.1", free_port()
    env["MAILPLANE_SMTP_INBOUND_ADDR"] = f"{host}:{port}"
    edge, worker = MailProcess("smtp", env), MailProcess("worker", env)
    edge.start()
    worker.start()
    sending: asyncio.Task[None] | None = None
    try:
        await wait_listening(host, port)
        load = Load(host, port, inbox["email"])
        sending = asyncio.create_task(load.run())

        # The edge dies with transactions in flight; the senders retry until it is back.
        await wait_for(lambda: _true(len(load.accepted) >= KILL_EDGE_AT), 20, "the first 250s")
        edge.kill()
        accepted_at_edge_kill = len(load.accepted)
        # Down until the senders have felt it (a reset or a refused connection).
        await wait_for(lambda: _true(load.interrupted > 0), 10, "a sender to see the edge gone")
        edge.start()
        await wait_listening(host, port)

        # The worker dies with a batch locked in its open transaction: it is held
        # (SIGSTOP) until a backlog builds, let go, and killed while it drains it.
        await wait_for(lambda: _true(len(load.accepted) >= KILL_WORKER_AT), 20, "more 250s")
        worker.signal(signal.SIGSTOP)
        await wait_for(lambda: _spooled_at_least(pool, inbox["id"], 40), 10, "a spool backlog")
        worker.signal(signal.SIGCONT)
        await asyncio.sleep(0.05)
        worker.kill()
        spooled_at_worker_kill = await pool.fetchval(SPOOLED, inbox["id"])
        worker.start()

        await sending
        await wait_for(lambda: _spool_empty(pool, inbox["id"]), DRAIN_SECONDS, "the drain")
    finally:
        if sending is not None and not sending.done():
            sending.cancel()
        edge.stop()
        worker.stop()

    # The kills happened mid-load.
    assert 0 < accepted_at_edge_kill < TOTAL
    assert load.interrupted > 0, "the edge was killed with no transaction in flight"
    assert spooled_at_worker_kill > 0, "the worker was killed with nothing to ingest"
    # Every message got its 250 in the end.
    assert sorted(load.accepted) == sorted(m for m, _ in load.mails)

    stored = await pool.fetch(
        "SELECT rfc_message_id, count(*) AS n FROM messages WHERE owner_id = $1 GROUP BY 1",
        inbox["id"],
    )
    counts = {row["rfc_message_id"]: row["n"] for row in stored}
    assert set(counts) == set(load.accepted), "a message that got a 250 is missing"
    assert set(counts.values()) == {1}, "a message was stored twice"
    events = await pool.fetch(
        "SELECT data->'message'->>'messageId' AS message_id, count(*) AS n FROM events"
        " WHERE inbox_id = $1 AND type LIKE 'message.received%' GROUP BY 1",
        inbox["id"],
    )
    assert {row["message_id"]: row["n"] for row in events} == counts, "events ≠ messages"


async def _true(value: bool) -> bool:
    return value


async def _spooled_at_least(pool: Any, owner_id: str, n: int) -> bool:
    return bool(await pool.fetchval(SPOOLED, owner_id) >= n)


async def _spool_empty(pool: Any, owner_id: str) -> bool:
    return bool(await pool.fetchval(SPOOLED, owner_id) == 0)
