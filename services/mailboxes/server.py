"""Composition root of the mailboxes service: pool → store → service → servicer → chassis."""

from __future__ import annotations

from pathlib import Path

from mailplane.mailboxes.v1 import mailboxes_pb2_grpc

from services.chassis import db
from services.chassis.config import Settings
from services.chassis.directory import AddressDirectory
from services.chassis.pagination import PageTokens
from services.chassis.peers import DomainsClient, PodsClient
from services.chassis.rpc import open_channel
from services.chassis.server import ServiceProcess, Servicer, keyed_service
from services.mailboxes.api import MAILBOX_ACCESS, MailboxServicer
from services.mailboxes.service import MailboxService
from services.mailboxes.store import MailboxStore

NAME = "mailboxes"
MIGRATIONS = Path(__file__).parent / "migrations"
SERVICE_NAME = "mailplane.mailboxes.v1.MailboxService"


#: A running mailboxes service.
MailboxesProcess = ServiceProcess[MailboxService]


async def build(settings: Settings) -> MailboxesProcess:
    """Builds the mailboxes service from settings; the caller starts ``grpc``."""
    pool = await db.create_pool(settings.service_dsn(NAME), NAME, settings.db_pool_size)
    pods_channel = open_channel(settings.pods_addr)
    domains_channel = open_channel(settings.domains_addr)
    messages_channel = open_channel(settings.messages_addr)
    deadline = settings.peer_deadline_seconds
    internal_token = settings.internal_token.get_secret_value()
    pods = PodsClient(pods_channel, deadline, internal_token)

    async def revoke_keys(account_id: str, mailbox_id: str) -> None:
        await pods.revoke_scoped_keys(account_id, "mailbox", mailbox_id)

    service = MailboxService(
        MailboxStore(pool),
        pods,
        DomainsClient(domains_channel, deadline, internal_token),
        settings.shared_domain,
        AddressDirectory(messages_channel, deadline, settings.internal_token.get_secret_value()),
        page_tokens=PageTokens(settings.page_token_key.get_secret_value().encode()),
    )

    async def sweep() -> None:
        await service.sweep(settings.stale_intent_seconds)

    server = keyed_service(
        settings,
        NAME,
        pool,
        pods_channel,
        Servicer(
            mailboxes_pb2_grpc.add_MailboxServiceServicer_to_server,
            MailboxServicer(service, revoke_keys),
            SERVICE_NAME,
            MAILBOX_ACCESS,
        ),
        sweep,
    )
    return ServiceProcess(
        pool=pool,
        channels=[pods_channel, domains_channel, messages_channel],
        service=service,
        grpc=server,
    )
