"""IMAP goals (DESIGN §7.1; research mailflow.md §6.3): login p99 ≤ 100 ms, IDLE
push ≤ 1 s after commit, a FETCH of 100 headers ≤ 50 ms; each beside its floor,
as a ratio. The listener runs in process on the suite's event loop; the clients
(imaplib, imapclient) run in a thread, as a mail client would in its own process.
Prints a table; asserts nothing about speed.

- login: ``LOGIN`` on an open TLS connection, beside the ``VerifyInboxCredentials``
  call it makes (the floor: the rest is pymap and our session setup); and what a
  client waits for in all: TCP connect, TLS handshake, greeting and ``LOGIN``;
- IDLE push: from the ingest's commit returning to the client reading ``EXISTS``,
  beside a bare ``LISTEN``/``NOTIFY`` round trip on the same database;
- FETCH: ``BODY.PEEK[HEADER]`` of 100 messages, cold (read on first use) and warm,
  beside the one query that reads their raw bytes; then the summary a mail client
  lists a folder with (``UID FLAGS RFC822.SIZE ENVELOPE BODYSTRUCTURE``), cold
  (made on first use) and warm.
"""

from __future__ import annotations

import asyncio
import imaplib
import ssl
import statistics
import sys
import time
from typing import Any

import asyncpg
import httpx
import imapclient
from mailplane.inboxes.v1 import inboxes_pb2, inboxes_pb2_grpc
from mailplane.pods.v1 import pods_pb2

from services.chassis.auth import INTERNAL_TOKEN_METADATA
from services.chassis.config import Settings
from services.chassis.rpc import open_channel
from services.messages.imap_store import SELECT_RAWS
from services.messages.ingest import Ingest
from tests.conftest import Services
from tests.imap.conftest import Listener, imap_listener  # noqa: F401
from tests.messages.test_inbound import drain, message, new_inbox, send

LOGINS = 200
PUSHES = 20
FETCHES = 30
HEADERS = 100


def _row(name: str, samples: list[float], floor: list[float] | None, goal_ms: float) -> None:
    q = statistics.quantiles(samples, n=100)
    p50, p99 = q[49] * 1000, q[98] * 1000
    line = f"{name:<30} p50 {p50:8.2f} ms  p99 {p99:8.2f} ms  (goal ≤ {goal_ms:g} ms)"
    if floor:
        fq = statistics.quantiles(floor, n=100)
        line += f"  floor p50 {fq[49] * 1000:7.2f} ms  ratio {p50 / (fq[49] * 1000):6.1f}×"
    sys.stdout.write(line + "\n")


def _context(listener: Listener) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(listener.cafile))


async def test_imap_latency(
    http: httpx.AsyncClient,
    make_tenant: Any,
    services: Services,
    settings: Settings,
    edge: tuple[str, int],
    ingest: Ingest,
    imap_listener: Listener,  # noqa: F811
) -> None:
    tenant = await make_tenant("IMAP bench", pods_pb2.PLAN_ENTERPRISE)
    inbox = await new_inbox(http, services, tenant)
    imap = inbox["credentials"]["imap"]
    sys.stdout.write("\n")

    # Login, beside the credential check it makes.
    def logins() -> tuple[list[float], list[float]]:
        out, whole = [], []
        context = _context(imap_listener)
        for _ in range(LOGINS):
            connecting = time.perf_counter()
            client = imaplib.IMAP4_SSL(imap["host"], imap["port"], ssl_context=context)
            started = time.perf_counter()
            client.login(imap["username"], imap["password"])
            out.append(time.perf_counter() - started)
            whole.append(time.perf_counter() - connecting)
            client.logout()
        return out, whole

    login_times, connect_login_times = await asyncio.to_thread(logins)
    async with open_channel(settings.inboxes_addr) as channel:
        stub = inboxes_pb2_grpc.InboxServiceStub(channel)
        metadata = ((INTERNAL_TOKEN_METADATA, settings.internal_token.get_secret_value()),)
        verify_times = []
        for _ in range(LOGINS):
            started = time.perf_counter()
            await stub.VerifyInboxCredentials(
                inboxes_pb2.VerifyInboxCredentialsRequest(
                    username=imap["username"], password=imap["password"]
                ),
                metadata=metadata,
                timeout=5,
            )
            verify_times.append(time.perf_counter() - started)
    _row("IMAP LOGIN", login_times, verify_times, 100)
    _row("IMAP connect+TLS+LOGIN", connect_login_times, None, 100)

    # IDLE push after commit, beside LISTEN/NOTIFY alone.
    client = await asyncio.to_thread(
        lambda: imapclient.IMAPClient(
            imap["host"], imap["port"], ssl=True, ssl_context=_context(imap_listener)
        )
    )
    await asyncio.to_thread(client.login, imap["username"], imap["password"])
    await asyncio.to_thread(client.select_folder, "INBOX")
    push_times = []
    for i in range(PUSHES):
        await asyncio.to_thread(client.idle)

        def wait() -> float:
            while not any(r[1] == b"EXISTS" for r in client.idle_check(10)):
                pass
            return time.perf_counter()

        waiter = asyncio.create_task(asyncio.to_thread(wait))
        await send(edge, message(inbox["email"], subject=f"Push {i}"), [inbox["email"]])
        await drain(ingest)
        committed = time.perf_counter()
        arrived = await waiter
        await asyncio.to_thread(client.idle_done)
        push_times.append(max(0.0, arrived - committed))
    await asyncio.to_thread(client.logout)
    listener = await asyncpg.connect(settings.service_dsn("messages"))
    notify_times = []
    got = asyncio.Event()
    await listener.add_listener("bench_imap", lambda *_: got.set())
    for _ in range(PUSHES):
        got.clear()
        started = time.perf_counter()
        await services.messages.pool.execute("SELECT pg_notify('bench_imap', '')")
        await got.wait()
        notify_times.append(time.perf_counter() - started)
    await listener.close()
    _row("IDLE push after commit", push_times, notify_times, 1000)

    # FETCH of 100 headers.
    for i in range(HEADERS - PUSHES):
        await send(edge, message(inbox["email"], subject=f"Header {i}"), [inbox["email"]])
    await drain(ingest)
    ids = [
        r["id"]
        for r in await services.messages.pool.fetch(
            "SELECT id FROM messages WHERE owner_id = $1", inbox["id"]
        )
    ]
    assert len(ids) == HEADERS

    def fetches(items: str, literals: int) -> tuple[float, list[float]]:
        with imaplib.IMAP4_SSL(
            imap["host"], imap["port"], ssl_context=_context(imap_listener)
        ) as client:
            client.login(imap["username"], imap["password"])
            client.select("INBOX", readonly=True)
            out = []
            for _ in range(FETCHES + 1):
                started = time.perf_counter()
                _, data = client.fetch(f"1:{HEADERS}", items)
                out.append(time.perf_counter() - started)
                assert len(data) >= HEADERS
                assert len([d for d in data if isinstance(d, tuple)]) == literals
            return out[0], out[1:]

    cold, warm = await asyncio.to_thread(fetches, "(BODY.PEEK[HEADER])", HEADERS)
    summary_cold, summary_warm = await asyncio.to_thread(
        fetches, "(UID FLAGS RFC822.SIZE ENVELOPE BODYSTRUCTURE)", 0
    )
    floor = []
    for _ in range(FETCHES):
        started = time.perf_counter()
        await services.messages.pool.fetch(SELECT_RAWS, tenant.account_id, inbox["id"], ids)
        floor.append(time.perf_counter() - started)
    sys.stdout.write(f"FETCH 100 headers, cold (first parse): {cold * 1000:.2f} ms\n")
    _row("FETCH 100 headers (warm)", warm, floor, 50)
    sys.stdout.write(
        f"FETCH 100 ENVELOPE+BODYSTRUCTURE, cold (first parse): {summary_cold * 1000:.2f} ms\n"
    )
    _row("FETCH 100 ENVELOPE+BODYSTRUCTURE", summary_warm, floor, 50)
