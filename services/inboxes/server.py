"""Composition root of the inboxes service: pool → store → service → servicer → chassis."""

from __future__ import annotations

from pathlib import Path

from mailplane.inboxes.v1 import inboxes_pb2_grpc

from services.chassis import db
from services.chassis.config import Settings
from services.chassis.directory import AddressDirectory
from services.chassis.pagination import PageTokens
from services.chassis.peers import DomainsClient, PodsClient
from services.chassis.rpc import open_channel
from services.chassis.server import ServiceProcess, Servicer, keyed_service
from services.inboxes.api import INBOX_ACCESS, InboxServicer
from services.inboxes.credentials import CredentialHasher, MailServers
from services.inboxes.service import InboxService, InboxSettings
from services.inboxes.store import InboxStore

NAME = "inboxes"
MIGRATIONS = Path(__file__).parent / "migrations"
SERVICE_NAME = "mailplane.inboxes.v1.InboxService"


#: A running inboxes service.
InboxesProcess = ServiceProcess[InboxService]


async def build(settings: Settings) -> InboxesProcess:
    """Builds the inboxes service from settings; the caller starts ``grpc``."""
    pool = await db.create_pool(settings.service_dsn(NAME), NAME, settings.db_pool_size)
    pods_channel = open_channel(settings.pods_addr)
    domains_channel = open_channel(settings.domains_addr)
    messages_channel = open_channel(settings.messages_addr)
    deadline = settings.peer_deadline_seconds
    internal_token = settings.internal_token.get_secret_value()
    pods = PodsClient(pods_channel, deadline, internal_token)

    async def revoke_keys(account_id: str, inbox_id: str) -> None:
        await pods.revoke_scoped_keys(account_id, "inbox", inbox_id)

    service = InboxService(
        InboxStore(pool),
        pods,
        DomainsClient(domains_channel, deadline, internal_token),
        InboxSettings(
            shared_domain=settings.shared_domain,
            servers=MailServers(
                settings.imap_host, settings.imap_port, settings.smtp_host, settings.smtp_port
            ),
            settle_seconds=2 * deadline,
        ),
        CredentialHasher(settings.credential_hash_key.get_secret_value().encode()),
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
            inboxes_pb2_grpc.add_InboxServiceServicer_to_server,
            InboxServicer(service, revoke_keys),
            SERVICE_NAME,
            INBOX_ACCESS,
        ),
        sweep,
    )
    return ServiceProcess(
        pool=pool,
        channels=[pods_channel, domains_channel, messages_channel],
        service=service,
        grpc=server,
    )
