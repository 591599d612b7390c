"""``kill -9`` of the worker while it delivers (DESIGN §7.5; research/mailflow.md
§7.6): the real ``python -m services.messages worker`` process delivers to a
loopback MX, is killed with SIGKILL mid-run, and is started again.

Nothing may be lost: every queued message reaches the MX. A duplicate can only
come from the window between the MX's 250 and our commit of that outcome (RFC
1047), so any message the MX received twice must be one whose delivery was in
flight (leased, ``sending``) when the worker died.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Awaitable, Callable

import asyncpg
import httpx

from services.chassis.config import Settings
from services.messages.models import Message
from tests.conftest import REPO_ROOT, Services, Tenant, Zone
from tests.messages.outbound import Sink, publish_mx, queue, start_sink
from tests.messages.test_delivery import sender_of

MESSAGES = 400
#: Seconds a leased delivery stays taken: the restarted worker takes the killed
#: one's rows again after this.
LEASE_SECONDS = 2


def start_worker(settings: Settings, sink: Sink) -> subprocess.Popen[bytes]:
    """The messages worker process, as ``make run`` starts it, aimed at the sink."""
    env = {
        **os.environ,
        "MAILPLANE_DATABASE_URL": settings.database_url.get_secret_value(),
        "MAILPLANE_DB_ROLE_PASSWORD": settings.db_role_password.get_secret_value(),
        "MAILPLANE_DNS_NAMESERVERS": settings.dns_nameservers,
        "MAILPLANE_OUTBOUND_PORT": str(sink.port),
        "MAILPLANE_DELIVERY_LEASE_SECONDS": str(LEASE_SECONDS),
        "MAILPLANE_DELIVERY_RETRY_BASE_SECONDS": "0.2",
        "MAILPLANE_WEBHOOK_ALLOW_PRIVATE": "true",
        "MAILPLANE_LOG_LEVEL": "warning",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "services.messages", "worker"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
    )


async def wait_for(check: Callable[[], Awaitable[bool]], what: str, rounds: int = 1200) -> None:
    """Waits (serving the sink meanwhile) until ``check()``; a liveness guard,
    not a timing assertion."""
    for _ in range(rounds):
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"gave up waiting for {what}")


async def test_kill_9_mid_run_loses_nothing_and_duplicates_only_what_was_in_flight(
    http: httpx.AsyncClient,
    services: Services,
    settings: Settings,
    tenant: Tenant,
    dns_zone: Zone,
) -> None:
    pool: asyncpg.Pool = services.messages.pool
    sink, server = await start_sink(tls=False)
    domain = "kill9.example"
    publish_mx(dns_zone, domain)
    owner, sender = await sender_of(http, services, tenant)
    messages: list[Message] = []
    for n in range(MESSAGES):
        messages.append(
            await queue(pool, owner, sender, [f"rcpt{n % 7}@{domain}"], subject=f"#{n}", size=2048)
        )
    ids = [m.id for m in messages]
    # The worker of this build has no DKIM signer wired yet: these are signed already.
    await pool.execute("UPDATE messages SET dkim_signed = true WHERE id = ANY($1::text[])", ids)

    async def unsettled() -> int:
        return int(
            await pool.fetchval(
                "SELECT count(*) FROM messages WHERE id = ANY($1::text[])"
                " AND status IN ('queued', 'sending', 'deferred')",
                ids,
            )
        )

    worker = start_worker(settings, sink)
    try:
        ours = {m.message_id for m in messages}

        def arrived() -> int:
            return sum(1 for r in sink.received if r.message_id in ours)

        async def some_arrived() -> bool:
            return arrived() >= MESSAGES // 4

        await wait_for(some_arrived, "the first deliveries")
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        arrived_before_kill = arrived()
        in_flight = {
            r["message_id"]
            for r in await pool.fetch(
                "SELECT message_id FROM deliveries WHERE message_id = ANY($1::text[])"
                " AND state = 'sending'",
                ids,
            )
        }
        waiting = await unsettled()
        # The kill landed mid-run: some mail had gone, some had not.
        assert 0 < arrived_before_kill < MESSAGES and waiting > 0

        worker = start_worker(settings, sink)

        async def all_settled() -> bool:
            return await unsettled() == 0

        await wait_for(all_settled, "every delivery to settle")
    finally:
        worker.terminate()
        worker.wait()
        server.close()
        await server.wait_closed()

    by_rfc_id = {m.message_id: m.id for m in messages}
    # Only this test's messages: mail other tests left queued may reach the sink too.
    seen = Counter(r.message_id for r in sink.received if r.message_id in by_rfc_id)
    assert set(seen) == set(by_rfc_id), "a queued message never reached the MX"
    duplicates = {by_rfc_id[rfc_id] for rfc_id, n in seen.items() if n > 1}
    assert duplicates <= in_flight
    statuses = await pool.fetch(
        "SELECT status, count(*) AS n FROM messages WHERE id = ANY($1::text[]) GROUP BY status",
        ids,
    )
    assert {r["status"]: r["n"] for r in statuses} == {"sent": MESSAGES}
    sys.stdout.write(
        f"\nkill -9: {MESSAGES} messages, {arrived_before_kill} at the MX before the kill,"
        f" {len(in_flight)} in flight at the kill, {len(duplicates)} delivered twice"
        f" ({100 * len(duplicates) / MESSAGES:.2f} %)\n"
    )
