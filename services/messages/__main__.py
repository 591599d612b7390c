"""``python -m services.messages serve|smtp|imap|worker|migrate`` (DESIGN §7.1).

- ``serve``: gRPC (messages, threads, address routes, events, webhooks).
- ``smtp``: the MX listener (``MAILPLANE_SMTP_INBOUND_ADDR``) and SMTP submission
  (``MAILPLANE_SUBMISSION_ADDR``, ``MAILPLANE_SUBMISSIONS_ADDR``).
- ``imap``: IMAP4rev1 with implicit TLS (``MAILPLANE_IMAP_ADDR``).
- ``worker``: ingest of the spool, outbound delivery (DKIM-signed through the
  domains service) and webhook delivery.
- ``migrate``: the schema.
"""

from __future__ import annotations

import asyncio
import gc
import signal
from collections.abc import Awaitable, Callable

from services.chassis import db
from services.chassis.config import Settings
from services.chassis.logs import get_logger
from services.chassis.rpc import open_channel
from services.chassis.server import service_main
from services.messages import queues
from services.messages.delivery import Delivery, options_of
from services.messages.dispatch import Dispatcher, SecretBox, Sender
from services.messages.dkim import DkimSigner
from services.messages.edge import serve_inbound
from services.messages.event_log import EventListener
from services.messages.imap import ImapFront, LoginThrottle, tls_context
from services.messages.ingest import Ingest, sender_authentication
from services.messages.outbox_store import OutboxStore, SenderRow
from services.messages.resolver import SenderResolver
from services.messages.server import MIGRATIONS, NAME, build, outbox_of
from services.messages.store import MailStore
from services.messages.submission import InboxLogins, SubmissionHandler, serve_submission

_log = get_logger("mailplane.messages")


async def _until_signal(start: Callable[[], Awaitable[Callable[[], Awaitable[None]]]]) -> None:
    """Runs ``start()`` and waits for SIGTERM/SIGINT, then runs the stop it returned."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    finish = await start()
    await stop.wait()
    await finish()


async def smtp(settings: Settings) -> None:
    """The MX listener and, with a TLS certificate, the submission listeners
    (STARTTLS and implicit TLS), until SIGTERM."""
    pool = await db.create_pool(settings.service_dsn(NAME), NAME, settings.db_pool_size)
    inboxes_channel = open_channel(settings.inboxes_addr)
    pods_channel = open_channel(settings.pods_addr)

    async def start() -> Callable[[], Awaitable[None]]:
        host, port = settings.smtp_inbound_addr.rsplit(":", 1)
        servers = [
            await serve_inbound(
                MailStore(pool),
                settings.shared_domain,
                host,
                int(port),
                settings.max_message_bytes,
                settings.mail_host,
                settings.spool_high_water,
            )
        ]
        if settings.tls_cert is not None and settings.tls_key is not None:
            tls = tls_context(str(settings.tls_cert), str(settings.tls_key))
            outbox = outbox_of(settings, pool, pods_channel)
            store = OutboxStore(pool)

            async def sender(account_id: str, inbox_id: str) -> SenderRow | None:
                return await store.sender(account_id, inbox_id, settings.shared_domain)

            handler = SubmissionHandler(
                outbox,
                InboxLogins(
                    inboxes_channel,
                    settings.peer_deadline_seconds,
                    settings.internal_token.get_secret_value(),
                ),
                sender,
            )
            for address, implicit in (
                (settings.submission_addr, False),
                (settings.submissions_addr, True),
            ):
                sub_host, sub_port = address.rsplit(":", 1)
                servers.append(
                    await serve_submission(
                        handler,
                        tls,
                        sub_host,
                        int(sub_port),
                        implicit_tls=implicit,
                        max_bytes=settings.max_message_bytes,
                        hostname=settings.mail_host,
                    )
                )
        else:
            _log.warning("submission_disabled", reason="MAILPLANE_TLS_CERT/KEY unset")

        async def finish() -> None:
            for server in servers:
                server.close()
            for server in servers:
                await server.wait_closed()
            await inboxes_channel.close()
            await pods_channel.close()
            await pool.close()

        return finish

    await _until_signal(start)


async def imap(settings: Settings) -> None:
    """The IMAP listener, until SIGTERM.

    Raises:
        ValueError: ``MAILPLANE_TLS_CERT``/``MAILPLANE_TLS_KEY`` are unset (IMAP
            is offered over implicit TLS only).
    """
    if settings.tls_cert is None or settings.tls_key is None:
        raise ValueError("MAILPLANE_TLS_CERT and MAILPLANE_TLS_KEY are required for IMAP")
    cert, key = str(settings.tls_cert), str(settings.tls_key)
    pool = await db.create_pool(settings.service_dsn(NAME), NAME, settings.db_pool_size)
    host, port = settings.imap_addr.rsplit(":", 1)

    async def start() -> Callable[[], Awaitable[None]]:
        inboxes_channel = open_channel(settings.inboxes_addr)
        front = ImapFront(
            pool,
            settings.service_dsn(NAME),
            inboxes_channel,
            settings.peer_deadline_seconds,
            settings.internal_token.get_secret_value(),
            LoginThrottle(
                settings.login_failures_per_user,
                settings.login_failures_per_ip,
                settings.login_failure_window_seconds,
            ),
            tls_context(cert, key),
        )
        await front.start(host, int(port))
        # What start-up made lives as long as the process: out of the collector's
        # sight, a full collection no longer walks it (a pause that showed as
        # IMAP latency tails; Python docs, gc.freeze).
        gc.freeze()

        async def finish() -> None:
            await front.close()
            await inboxes_channel.close()
            await pool.close()

        return finish

    await _until_signal(start)


async def worker(settings: Settings) -> None:
    """The ingest worker, outbound delivery and the webhook dispatcher, until SIGTERM."""
    pool = await db.create_pool(settings.service_dsn(NAME), NAME, settings.db_pool_size)
    domains_channel = open_channel(settings.domains_addr)

    async def start() -> Callable[[], Awaitable[None]]:
        resolver = SenderResolver(settings.dns_nameservers, settings.dns_timeout_seconds)
        ingest = Ingest(MailStore(pool), sender_authentication(resolver), settings.mail_host)
        signer = DkimSigner(
            domains_channel,
            settings.peer_deadline_seconds,
            settings.internal_token.get_secret_value(),
        )
        delivery = Delivery(pool, resolver, signer.sign, options_of(settings))
        listener = EventListener(settings.service_dsn(NAME))
        sender = Sender(
            SecretBox(settings.webhook_secret_key.get_secret_value()),
            settings.webhook_timeout_seconds,
            settings.webhook_allow_private,
            settings.webhook_concurrency,
        )
        dispatcher = Dispatcher(
            pool,
            listener,
            sender,
            concurrency=settings.webhook_concurrency,
            timeout_seconds=settings.webhook_timeout_seconds,
        )
        tasks = [
            asyncio.create_task(ingest.run_forever(settings.service_dsn(NAME))),
            asyncio.create_task(dispatcher.run_forever()),
            asyncio.create_task(queues.sample_forever(pool)),
            asyncio.create_task(delivery.run_forever(settings.service_dsn(NAME))),
        ]
        _log.info("worker_started")

        async def finish() -> None:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await sender.close()
            await listener.close()
            await domains_channel.close()
            await pool.close()

        return finish

    await _until_signal(start)


if __name__ == "__main__":
    service_main(NAME, MIGRATIONS, build, {"smtp": smtp, "imap": imap, "worker": worker})
