"""What the event and webhook tests share: real messages through the spool and
the ingest worker, a webhook receiver on loopback, and the webhook dispatcher
running in process with a short retry schedule."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
from aiohttp import web

from services.chassis.config import Settings
from services.messages.dispatch import Dispatcher, SecretBox, Sender
from services.messages.event_log import EventListener
from services.messages.ingest import Ingest
from services.messages.models import Owner
from services.messages.store import MailStore, Recipient
from tests.conftest import Services, Tenant, free_port
from tests.messages.test_inbound import drain, message, route

#: The type of a received message's event here: the ingest of these tests checks
#: no sender authentication.
RECEIVED = "message.received.unauthenticated"
#: Seconds between attempts in the tests (DESIGN's 5 s, 5 min, … would make them wait).
TEST_RETRY_SCHEDULE = (0.2, 0.2)


async def receive(services: Services, owner: dict[str, Any], subject: str = "Hello") -> None:
    """A message from outside to ``owner`` (an inbox or mailbox as REST shows it,
    with ``accountId``), spooled as the SMTP edge does and ingested."""
    store = MailStore(services.messages.pool)
    address = owner.get("email") or owner["address"]
    recipient = Recipient(address, Owner(owner["id"], owner["accountId"], owner["podId"]))
    raw = message(address, subject=subject).as_bytes()
    await store.spool("192.0.2.7", "mx.example.com", "ada@example.com", [recipient], raw)
    await drain(Ingest(store))


async def new_inbox(
    http: httpx.AsyncClient, services: Services, tenant: Tenant, **body: Any
) -> dict[str, Any]:
    """An inbox on the shared domain, routed, with its ``accountId``."""
    body.setdefault("username", f"ev{uuid.uuid4().hex[:10]}")
    answer = await http.post("/v1/inboxes", json=body, headers=tenant.headers)
    assert answer.status_code == 201, answer.text
    inbox: dict[str, Any] = {**answer.json(), "accountId": tenant.account_id}
    await route(services, inbox["email"], inbox, "inbox")
    return inbox


@dataclass
class Receiver:
    """A webhook endpoint on loopback: records each request and answers the next
    of ``statuses`` (204 once they run out)."""

    url: str
    statuses: list[int] = field(default_factory=list)
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def wait_for(
        self, count: int, seconds: float = 10.0
    ) -> list[tuple[dict[str, str], bytes]]:
        """The first ``count`` requests, once they arrived (fails after ``seconds``)."""
        async with asyncio.timeout(seconds):
            while len(self.requests) < count:
                self.arrived.clear()
                await self.arrived.wait()
        return self.requests[:count]


async def start_receiver() -> tuple[Receiver, web.AppRunner]:
    """A receiver served by aiohttp on a free loopback port."""
    port = free_port()
    receiver = Receiver(f"http://127.0.0.1:{port}/hooks")

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        receiver.requests.append((dict(request.headers), body))
        receiver.arrived.set()
        return web.Response(status=receiver.statuses.pop(0) if receiver.statuses else 204)

    app = web.Application()
    app.router.add_post("/hooks", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return receiver, runner


def dispatcher_of(
    services: Services, settings: Settings
) -> tuple[Dispatcher, EventListener, Sender]:
    """The worker's dispatcher on the test suite's database, with short retries."""
    listener = EventListener(settings.service_dsn("messages"))
    sender = Sender(
        SecretBox(settings.webhook_secret_key.get_secret_value()),
        5.0,
        settings.webhook_allow_private,
        64,
    )
    dispatcher = Dispatcher(
        services.messages.pool,
        listener,
        sender,
        retry_schedule=TEST_RETRY_SCHEDULE,
        concurrency=64,
        timeout_seconds=5.0,
        idle_poll_seconds=0.1,
    )
    return dispatcher, listener, sender
