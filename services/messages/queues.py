"""Depth and age of the messages service's queues, sampled for ``/metrics``.

The worker samples every ``SAMPLE_SECONDS``: the inbound spool (accepted by the
SMTP edge, not yet filed), the pending webhook deliveries and the outbound
deliveries not yet settled, each as a count
and the age of its oldest item, into ``mailplane_queue_depth{queue}`` and
``mailplane_queue_oldest_age_seconds{queue}`` (``services.chassis.metrics``).
"""

from __future__ import annotations

import asyncio

import asyncpg

from services.chassis import db, metrics
from services.chassis.logs import get_logger

_log = get_logger("mailplane.messages.queues")

#: Seconds between two samples.
SAMPLE_SECONDS = 15.0

#: Each queue: its label and one statement answering (count, age of the oldest in s).
QUEUE_SQL = {
    "spool": "SELECT count(*), coalesce(extract(epoch FROM now() - min(received_at)), 0)"
    " FROM spool",
    "webhook_deliveries": "SELECT count(*), coalesce(extract(epoch FROM now() - min(created_at)),"
    " 0) FROM webhook_deliveries WHERE state = 'pending'",
    # Outbound mail waiting for its (first or next) attempt, held mail left out.
    "outbound": "SELECT count(*), coalesce(extract(epoch FROM now() - min(created_at)), 0)"
    " FROM deliveries WHERE state IN ('queued', 'deferred', 'sending')",
}


async def sample(pool: asyncpg.Pool) -> None:
    """Reads every queue's depth and oldest age once into the gauges.

    Raises:
        asyncpg.PostgresError, OSError: the database did not answer.
    """
    for queue, sql in QUEUE_SQL.items():
        row = await pool.fetchrow(sql)
        metrics.QUEUES.set(queue, int(row[0]), float(row[1]))


async def sample_forever(pool: asyncpg.Pool) -> None:
    """Samples every ``SAMPLE_SECONDS`` until cancelled; an outage skips a sample."""
    while True:
        try:
            await sample(pool)
        except Exception as exc:
            if not db.is_unreachable(exc):
                raise
            _log.warning("queue_sample_skipped", error=type(exc).__name__)
        await asyncio.sleep(SAMPLE_SECONDS)
