"""DKIM-signed 4 KB messages delivered end to end to a local sink (issue goal:
≥ 200 messages/s, p99 queue-to-250 ≤ 1 s at that rate), beside a floor:
aiosmtplib straight to the same sink with the same bytes, no queue, no
database, no signing.

The sink is Postfix's ``smtp-sink`` (C, protocol only) in its own process when
installed (``make bench-tools``), else an aiosmtpd sink in this process; the
recipient domain's MX points at it through the loopback DNS server. The
delivery worker runs in this process as the ``worker`` runs it
(``Delivery.run_forever``: LISTEN/NOTIFY, 64 in flight, reused SMTP sessions),
with a DKIM signer over OpenSSL (dkimpy with its RSA step on ``cryptography``,
as the issue asks of the domains service's signer). Messages are queued as the
send API queues them (``MailStore.store_outbound``, one transaction each).

- burst: ``BURST`` messages queued by 8 writers while the worker is stopped
  (that rate is printed too), then drained; messages/s = delivered ÷ (last
  commit of an outcome − the worker's start);
- the burst's drain again with the production signer (``DkimSigner`` →
  ``SignDkim``; the domains service runs in this process, so it competes for
  this process's core as it would not in production);
- steady: ``STEADY_RATE`` messages/s for ``STEADY_SECONDS``; latency = the
  transaction recording the outcome (begun once the remote answered 250) − the
  transaction queueing the message, both by the database's clock; p50 and p99.

Prints a table; asserts only that every message was delivered.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator

import aiosmtplib
import asyncpg
import grpc
import httpx
import pytest
import pytest_asyncio
from mailplane.pods.v1 import pods_pb2

from services.chassis.config import Settings
from services.messages import mime
from services.messages.delivery import Delivery, Options
from services.messages.dkim import DkimSigner
from services.messages.models import Owner
from services.messages.resolver import SenderResolver
from services.messages.store import MailStore, Outbound
from tests.conftest import Services, Zone, free_port
from tests.messages.outbound import SHARED, make_signer, outbound_mail, publish_mx, start_sink
from tests.messages.test_inbound import new_inbox

BURST = 3000
RPC_BURST = 1500
WRITERS = 8
STEADY_RATE, STEADY_SECONDS = 200, 10
SIZE = 4096
FLOOR_CONCURRENCY = 64


@pytest.fixture
def smtp_sink_port() -> Iterator[int | None]:
    """Postfix's smtp-sink on a free port (its own process), or ``None`` when
    it is not installed."""
    if shutil.which("smtp-sink") is None:
        yield None
        return
    port = free_port()
    sink = subprocess.Popen(
        ["smtp-sink", "-u", "nobody", f"127.0.0.1:{port}", "1000"], stdout=subprocess.DEVNULL
    )
    try:
        for _ in range(200):
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        yield port
    finally:
        sink.terminate()
        sink.wait(10)


@pytest_asyncio.fixture
async def sink_port(smtp_sink_port: int | None) -> AsyncIterator[int]:
    """The sink's port: Postfix's smtp-sink, else an aiosmtpd sink in this process."""
    if smtp_sink_port is not None:
        yield smtp_sink_port
        return
    sink, server = await start_sink(tls=False)
    yield sink.port
    server.close()
    await server.wait_closed()


async def _queue(store: MailStore, owner: Owner, raws: list[tuple[bytes, mime.Parsed]]) -> None:
    for raw, parsed in raws:
        async with store.pool.acquire() as conn, conn.transaction():
            await store.store_outbound(
                conn,
                owner,
                None,
                parsed,
                raw,
                Outbound(recipients=parsed.to, return_path=parsed.sender),
            )


async def _wait_sent(pool: asyncpg.Pool, owner: Owner, count: int, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        done = await pool.fetchval(
            "SELECT count(*) FROM deliveries WHERE owner_id = $1 AND state = 'sent'", owner.id
        )
        if done >= count:
            return
        await asyncio.sleep(0.1)


async def test_delivered_messages_per_second(
    http: httpx.AsyncClient,
    services: Services,
    settings: Settings,
    make_tenant,  # type: ignore[no-untyped-def]
    dns_zone: Zone,
    sink_port: int,
) -> None:
    tenant = await make_tenant("Bench", pods_pb2.PLAN_ENTERPRISE)
    pool = services.messages.pool
    store = MailStore(pool)
    signer = make_signer(dns_zone)
    domain = "bench-sink.example"
    publish_mx(dns_zone, domain)

    async def owner_with_mail(count: int) -> tuple[Owner, list[tuple[bytes, mime.Parsed]]]:
        inbox = await new_inbox(http, services, tenant)
        owner = Owner(inbox["id"], tenant.account_id, inbox["podId"])
        raws = []
        for n in range(count):
            raw = outbound_mail(inbox["email"], [f"r{n % 50}@{domain}"], f"#{n}", size=SIZE)
            raws.append((raw, mime.parse(raw)))
        return owner, raws

    delivery = Delivery(
        pool,
        SenderResolver(settings.dns_nameservers, settings.dns_timeout_seconds),
        signer.sign,
        Options(helo="out.mailplane.test", shared_domain=SHARED, port=sink_port),
    )
    listen = settings.service_dsn("messages")
    task = asyncio.create_task(delivery.run_forever(listen))
    try:
        # Warm-up: sessions, prepared statements, DNS.
        warm, warm_raws = await owner_with_mail(200)
        await _queue(store, warm, warm_raws)
        await _wait_sent(pool, warm, 200)

        # Burst, queued while the worker is stopped, then drained.
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        burst, burst_raws = await owner_with_mail(BURST)
        chunks = [burst_raws[i::WRITERS] for i in range(WRITERS)]
        queue_started = time.perf_counter()
        await asyncio.gather(*(_queue(store, burst, chunk) for chunk in chunks))
        queue_rate = BURST / (time.perf_counter() - queue_started)
        drain_started = await pool.fetchval("SELECT now()")
        task = asyncio.create_task(delivery.run_forever(listen))
        await _wait_sent(pool, burst, BURST)
        row = await pool.fetchrow(
            "SELECT count(*) AS n, extract(epoch FROM max(updated_at) - $2::timestamptz) AS s"
            " FROM deliveries WHERE owner_id = $1 AND state = 'sent'",
            burst.id,
            drain_started,
        )
        assert row["n"] == BURST
        burst_rate = BURST / float(row["s"])

        # Steady: STEADY_RATE messages/s in ticks of 50 ms.
        steady, steady_raws = await owner_with_mail(STEADY_RATE * STEADY_SECONDS)
        tick, per_tick = 0.05, STEADY_RATE // 20
        loop = asyncio.get_running_loop()
        begin = loop.time()
        for i in range(STEADY_SECONDS * 20):
            await _queue(store, steady, steady_raws[i * per_tick : (i + 1) * per_tick])
            await asyncio.sleep(max(0.0, begin + (i + 1) * tick - loop.time()))
        await _wait_sent(pool, steady, len(steady_raws))
        latencies = [
            float(r["s"])
            for r in await pool.fetch(
                "SELECT extract(epoch FROM updated_at - created_at) AS s FROM deliveries"
                " WHERE owner_id = $1 AND state = 'sent'",
                steady.id,
            )
        ]
        assert len(latencies) == len(steady_raws)
        cuts = statistics.quantiles(latencies, n=100)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    opened, reused = delivery.connections.opened, delivery.connections.reused

    # The same drain with the production signer: DkimSigner → SignDkim on the
    # domains service (served in this process, so its work is counted here too).
    async with grpc.aio.insecure_channel(settings.domains_addr) as channel:
        remote = DkimSigner(
            channel, settings.peer_deadline_seconds, settings.internal_token.get_secret_value()
        )
        signed_remotely = Delivery(
            pool,
            SenderResolver(settings.dns_nameservers, settings.dns_timeout_seconds),
            remote.sign,
            Options(helo="out.mailplane.test", shared_domain=SHARED, port=sink_port),
        )
        rpc, rpc_raws = await owner_with_mail(RPC_BURST)
        await asyncio.gather(*(_queue(store, rpc, rpc_raws[i::WRITERS]) for i in range(WRITERS)))
        rpc_started = await pool.fetchval("SELECT now()")
        task = asyncio.create_task(signed_remotely.run_forever(listen))
        try:
            await _wait_sent(pool, rpc, RPC_BURST)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        row = await pool.fetchrow(
            "SELECT count(*) AS n, extract(epoch FROM max(updated_at) - $2::timestamptz) AS s"
            " FROM deliveries WHERE owner_id = $1 AND state = 'sent'",
            rpc.id,
            rpc_started,
        )
        assert row["n"] == RPC_BURST
        rpc_rate = RPC_BURST / float(row["s"])

    # Floor: the same signed bytes straight to the sink, 64 sessions, each reused.
    signed = await signer.sign(tenant.account_id, SHARED, burst_raws[0][0])
    todo = iter(range(BURST))

    async def session() -> None:
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=sink_port) as client:
            for _ in todo:
                await client.sendmail(str(burst_raws[0][1].sender), [f"r@{domain}"], signed)

    started = time.perf_counter()
    await asyncio.gather(*(session() for _ in range(FLOOR_CONCURRENCY)))
    floor_rate = BURST / (time.perf_counter() - started)

    sys.stdout.write(
        "\n"
        f"{'delivery (DKIM-signed, 4 KB)':<44}{'msg/s':>10}{'p50 ms':>10}{'p99 ms':>10}\n"
        f"{'queued by the send path (8 writers)':<44}{queue_rate:>10,.0f}\n"
        f"{'drain of ' + str(BURST) + ' queued (goal ≥ 200/s)':<44}{burst_rate:>10,.0f}\n"
        f"{'steady ' + str(STEADY_RATE) + '/s, queue → 250 committed':<44}"
        f"{STEADY_RATE:>10,}{cuts[49] * 1000:>10,.1f}{cuts[98] * 1000:>10,.1f}"
        "  (goal p99 ≤ 1,000)\n"
        f"{'drain, signed by SignDkim (domains service)':<44}{rpc_rate:>10,.0f}\n"
        f"{'floor: aiosmtplib → same sink, no queue':<44}{floor_rate:>10,.0f}"
        f"   burst ÷ floor = {burst_rate / floor_rate:.2f}\n"
        f"SMTP sessions opened {opened:,}, transactions on a reused session {reused:,}\n"
    )
