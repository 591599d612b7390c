"""Shared fixtures: one real PostgreSQL (embedded unless ``MAILPLANE_TEST_DATABASE_URL``
names a server), a fresh database per test session, the real pods service on a
real port, and the real gateway over real HTTP. Each test makes its own account.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import grpc
import httpx
import pytest
import pytest_asyncio
import uvicorn
from cryptography.fernet import Fernet
from dnslib import MX, QTYPE, RR, TXT, A
from dnslib.server import BaseResolver, DNSLogger, DNSServer
from mailplane.pods.v1 import pods_pb2, pods_pb2_grpc

from gateway.app import create_app
from services.chassis import db, logs
from services.chassis.auth import INTERNAL_TOKEN_METADATA
from services.chassis.config import Settings
from services.domains import server as domains_server
from services.domains.records import new_dkim_private_pem
from services.inboxes import server as inboxes_server
from services.mailboxes import server as mailboxes_server
from services.messages import server as messages_server
from services.messages.edge import serve_inbound
from services.messages.ingest import Ingest, sender_authentication
from services.messages.resolver import SenderResolver
from services.messages.store import MailStore
from services.pods import server as pods_server

#: Ports handed out by ``free_port`` in this process (never twice).
_GIVEN: set[int] = set()


def free_port() -> int:
    """Returns a port on 127.0.0.1 that was free (TCP and UDP) a moment ago.

    It is drawn below the kernel's ephemeral range (``ip_local_port_range``,
    32768-60999 here), so no outgoing connection of the suite can take it between
    this call and the bind of the server it is for; an ephemeral port asked of
    the kernel could be.
    """
    while True:
        port = random.randint(15_000, 22_999)
        if port in _GIVEN:
            continue
        try:
            with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                tcp.bind(("127.0.0.1", port))
                udp.bind(("127.0.0.1", port))
        except OSError:
            continue
        _GIVEN.add(port)
        return port


@pytest.fixture(scope="session")
def admin_dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An administrative DSN of a database made for this test session."""
    import os

    base = os.environ.get("MAILPLANE_TEST_DATABASE_URL")
    server = None
    if base is None:
        import pgserver

        server = pgserver.get_server(tmp_path_factory.mktemp("pg"), cleanup_mode="stop")
        base = server.get_uri()
    name = f"mailplane_test_{secrets.token_hex(4)}"

    async def create() -> None:
        conn = await asyncpg.connect(base)
        await conn.execute(f'CREATE DATABASE "{name}"')
        await conn.close()

    asyncio.run(create())
    parts = urlsplit(base)
    yield urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))
    if server is not None:
        server.cleanup()


class Zone(BaseResolver):  # type: ignore[misc]
    """A DNS zone the tests fill: ``(name, "A"|"MX"|"TXT") → [rdata]``; served by dnslib."""

    def __init__(self) -> None:
        self.records: dict[tuple[str, str], list[Any]] = {}
        self.port = free_port()

    def resolve(self, request: Any, handler: Any) -> Any:
        reply = request.reply()
        name = str(request.q.qname).rstrip(".").lower()
        for rdata in self.records.get((name, QTYPE[request.q.qtype]), []):
            reply.add_answer(RR(request.q.qname, request.q.qtype, rdata=rdata, ttl=1))
        return reply

    def publish(self, name: str, rtype: str, value: str) -> None:
        """Adds a record; TXT values longer than 255 bytes are split into strings."""
        if rtype == "MX":
            priority, host = value.split()
            rdata: Any = MX(host, int(priority))
        elif rtype == "A":
            rdata = A(value)
        else:
            rdata = TXT([value[i : i + 255] for i in range(0, len(value), 255)])
        self.records.setdefault((name.lower(), rtype), []).append(rdata)

    def clear(self, name: str, rtype: str) -> None:
        """Removes every record at a name and type."""
        self.records.pop((name.lower(), rtype), None)


@pytest.fixture(scope="session")
def dns_zone() -> Iterator[Zone]:
    """A real DNS server on loopback (UDP) serving a zone the tests fill."""
    zone = Zone()
    server = DNSServer(zone, port=zone.port, address="127.0.0.1", logger=DNSLogger("-"))
    server.start_thread()
    yield zone
    server.stop()


@pytest.fixture(scope="session")
def settings(admin_dsn: str, dns_zone: Zone) -> Settings:
    """Settings of the in-process suite: fresh secrets, free ports, the test DNS."""
    logs.configure("debug", "json")
    imap_port = free_port()
    return Settings(
        database_url=admin_dsn,
        internal_token=secrets.token_urlsafe(24),
        db_role_password=secrets.token_urlsafe(12),
        dkim_encryption_key=Fernet.generate_key().decode(),
        shared_dkim_private_key=new_dkim_private_pem().decode(),
        credential_hash_key=secrets.token_urlsafe(32),
        pods_addr=f"127.0.0.1:{free_port()}",
        domains_addr=f"127.0.0.1:{free_port()}",
        inboxes_addr=f"127.0.0.1:{free_port()}",
        mailboxes_addr=f"127.0.0.1:{free_port()}",
        messages_addr=f"127.0.0.1:{free_port()}",
        smtp_inbound_addr=f"127.0.0.1:{free_port()}",
        # The IMAP listener (tests/imap) and the credentials that name it.
        imap_addr=f"127.0.0.1:{imap_port}",
        imap_host="127.0.0.1",
        imap_port=imap_port,
        gateway_port=free_port(),
        peer_deadline_seconds=3.0,
        dns_nameservers=f"127.0.0.1:{dns_zone.port}",
        dns_timeout_seconds=2.0,
        # Webhook tests deliver to a receiver on loopback; the refusal of private
        # targets is tested on a service built with it off (tests/messages).
        webhook_allow_private=True,
    )


@dataclass
class Services:
    """The running services of the in-process suite."""

    pods: pods_server.PodsProcess
    domains: domains_server.DomainsProcess
    inboxes: inboxes_server.InboxesProcess
    mailboxes: mailboxes_server.MailboxesProcess
    messages: messages_server.MessagesProcess


@pytest_asyncio.fixture(scope="session")
async def services(settings: Settings) -> AsyncIterator[Services]:
    """The real services, migrated and serving on their addresses."""
    admin = settings.database_url.get_secret_value()
    password = settings.db_role_password.get_secret_value()
    modules = {
        "pods": pods_server,
        "domains": domains_server,
        "inboxes": inboxes_server,
        "mailboxes": mailboxes_server,
        "messages": messages_server,
    }
    processes: dict[str, Any] = {}
    for name, module in modules.items():
        await db.migrate(admin, name, password, module.MIGRATIONS)
        processes[name] = await module.build(settings)  # type: ignore[attr-defined]
        await processes[name].grpc.start("127.0.0.1", settings.port_of(name))
    yield Services(**processes)
    for process in reversed(processes.values()):
        await process.grpc.stop(0.5)
        await process.close()


@pytest.fixture(scope="session")
def pods(services: Services) -> pods_server.PodsProcess:
    """The running pods service."""
    return services.pods


@pytest.fixture(scope="session")
def domains(services: Services) -> domains_server.DomainsProcess:
    """The running domains service."""
    return services.domains


@pytest.fixture(scope="session")
def inboxes(services: Services) -> inboxes_server.InboxesProcess:
    """The running inboxes service."""
    return services.inboxes


@pytest.fixture(scope="session")
def mailboxes(services: Services) -> mailboxes_server.MailboxesProcess:
    """The running mailboxes service."""
    return services.mailboxes


@pytest_asyncio.fixture(scope="session")
async def pods_channel(
    pods: pods_server.PodsProcess, settings: Settings
) -> AsyncIterator[grpc.aio.Channel]:
    """A real channel to the pods service."""
    async with grpc.aio.insecure_channel(settings.pods_addr) as channel:
        yield channel


@pytest_asyncio.fixture(scope="session")
async def gateway_url(services: Services, settings: Settings) -> AsyncIterator[str]:
    """The gateway served by uvicorn on a real port; returns its base URL."""
    config = uvicorn.Config(
        create_app(settings),
        host="127.0.0.1",
        port=settings.gateway_port,
        log_level="warning",
        access_log=False,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn exposes a flag, not an event
        await asyncio.sleep(0.02)
    yield f"http://127.0.0.1:{settings.gateway_port}"
    server.should_exit = True
    await task


@pytest_asyncio.fixture(scope="session")
async def http(gateway_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of the gateway."""
    async with httpx.AsyncClient(base_url=gateway_url, timeout=10) as client:
        yield client


@dataclass(frozen=True)
class Tenant:
    """An account made for one test, with its first key."""

    account_id: str
    key: str
    default_pod_id: str

    @property
    def headers(self) -> dict[str, str]:
        """REST headers carrying the key."""
        return {"Authorization": f"Bearer {self.key}"}

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """gRPC metadata carrying the key."""
        return (("authorization", f"Bearer {self.key}"),)


@pytest.fixture(scope="session")
def operator_metadata(settings: Settings) -> tuple[tuple[str, str], ...]:
    """gRPC metadata carrying the service credential."""
    return ((INTERNAL_TOKEN_METADATA, settings.internal_token.get_secret_value()),)


@pytest_asyncio.fixture
async def make_tenant(
    pods_channel: grpc.aio.Channel, operator_metadata: tuple[tuple[str, str], ...]
):  # type: ignore[no-untyped-def]
    """Returns a coroutine function creating a fresh account: ``await make_tenant(plan=…)``."""

    async def make(name: str = "Test account", plan: int = pods_pb2.PLAN_TRIAL) -> Tenant:
        created = await pods_pb2_grpc.AccountServiceStub(pods_channel).CreateAccount(
            pods_pb2.CreateAccountRequest(name=name, plan=plan), metadata=operator_metadata
        )
        return Tenant(created.account.id, created.api_key, created.default_pod.id)

    return make


@pytest_asyncio.fixture
async def tenant(make_tenant) -> Tenant:  # type: ignore[no-untyped-def]
    """A fresh account for this test."""
    return await make_tenant()  # type: ignore[no-any-return]


@pytest_asyncio.fixture
async def other_tenant(make_tenant) -> Tenant:  # type: ignore[no-untyped-def]
    """A second fresh account, for isolation tests."""
    return await make_tenant("Other account")  # type: ignore[no-any-return]


REPO_ROOT = Path(__file__).resolve().parent.parent


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
def ingest(services: Services, settings: Settings) -> Ingest:
    """The ingest worker, run step by step by the tests."""
    resolver = SenderResolver(settings.dns_nameservers, settings.dns_timeout_seconds)
    return Ingest(MailStore(services.messages.pool), sender_authentication(resolver))
