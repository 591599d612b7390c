"""The IMAP listener (DESIGN §7.1) in process, over the real services of
``tests/conftest.py``, with a self-signed certificate the clients trust."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from deploy.tls import ensure_dev_certificate
from services.chassis.config import Settings
from services.chassis.rpc import open_channel
from services.messages.imap import ImapFront, LoginThrottle, tls_context
from tests.conftest import Services


@dataclass(frozen=True)
class Listener:
    """Where the IMAP listener is, and the certificate that signs it."""

    host: str
    port: int
    cafile: Path


@pytest_asyncio.fixture(scope="session")
async def imap_listener(
    services: Services, settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Listener]:
    """``python -m services.messages imap``'s front, on the settings' address."""
    cert, key = ensure_dev_certificate(tmp_path_factory.mktemp("tls"))
    channel = open_channel(settings.inboxes_addr)
    front = ImapFront(
        services.messages.pool,
        settings.service_dsn("messages"),
        channel,
        settings.peer_deadline_seconds,
        settings.internal_token.get_secret_value(),
        LoginThrottle(
            settings.login_failures_per_user,
            settings.login_failures_per_ip,
            settings.login_failure_window_seconds,
        ),
        tls_context(str(cert), str(key)),
    )
    host, port = settings.imap_addr.rsplit(":", 1)
    await front.start(host, int(port))
    yield Listener(host, int(port), cert)
    await front.close()
    await channel.close()
