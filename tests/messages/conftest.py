"""Fixtures of the mail tests: the SMTP edge and the ingest worker, in process."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from services.chassis.config import Settings
from services.messages.edge import serve_inbound
from services.messages.ingest import Ingest
from services.messages.store import MailStore
from tests.conftest import Services


@pytest_asyncio.fixture(scope="session")
async def edge(services: Services, settings: Settings) -> AsyncIterator[tuple[str, int]]:
    """The MX listener, in process, on the settings' inbound address."""
    host, port = settings.smtp_inbound_addr.rsplit(":", 1)
    server = await serve_inbound(
        MailStore(services.messages.pool),
        settings.shared_domain,
        host,
        int(port),
        settings.max_message_bytes,
        "mx.test",
    )
    yield host, int(port)
    server.close()
    await server.wait_closed()


@pytest.fixture(scope="session")
def ingest(services: Services) -> Ingest:
    """The ingest worker, run step by step by the tests."""
    return Ingest(MailStore(services.messages.pool))
