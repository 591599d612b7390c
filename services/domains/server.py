"""Composition root of the domains service: pool → store → service → servicer → chassis."""

from __future__ import annotations

from pathlib import Path

from cryptography.fernet import Fernet
from mailplane.domains.v1 import domains_pb2_grpc

from services.chassis import db
from services.chassis.config import Settings
from services.chassis.directory import AddressDirectory
from services.chassis.pagination import PageTokens
from services.chassis.peers import PodsClient
from services.chassis.rpc import open_channel
from services.chassis.server import ServiceProcess, Servicer, keyed_service
from services.domains.api import DOMAIN_ACCESS, DomainServicer
from services.domains.clients import InboxUserCounter, MailboxUserCounter
from services.domains.records import MailTargets
from services.domains.resolver import DnsLookup
from services.domains.service import DomainService, DomainSettings
from services.domains.signing import DkimKeyring
from services.domains.store import DomainStore

NAME = "domains"
MIGRATIONS = Path(__file__).parent / "migrations"
SERVICE_NAME = "mailplane.domains.v1.DomainService"


#: A running domains service.
DomainsProcess = ServiceProcess[DomainService]


async def build(settings: Settings) -> DomainsProcess:
    """Builds the domains service from settings; the caller starts ``grpc``.

    Before a domain is deleted or narrowed, every service that uses domains is
    asked for its count (DESIGN §3): inboxes and mailboxes; after each
    verification the mailboxes service is told whether the domain can receive,
    and the messages service's route directory whether its addresses deliver
    and whether the domain can send. DKIM signatures use the shared domain's key
    from settings and the custom domains' keys from the database.

    Raises:
        ValueError: ``MAILPLANE_DKIM_ENCRYPTION_KEY`` or
            ``MAILPLANE_SHARED_DKIM_PRIVATE_KEY`` is unset, or the latter is not
            an RSA private key in PEM.
    """
    if settings.dkim_encryption_key is None:
        raise ValueError("MAILPLANE_DKIM_ENCRYPTION_KEY is required (a Fernet key)")
    if settings.shared_dkim_private_key is None:
        raise ValueError(
            "MAILPLANE_SHARED_DKIM_PRIVATE_KEY is required (the shared domain's RSA key, PEM)"
        )
    cipher = Fernet(settings.dkim_encryption_key.get_secret_value())
    try:
        keyring = DkimKeyring(settings.shared_dkim_private_key.get_secret_value(), cipher)
    except ValueError as error:
        raise ValueError(f"MAILPLANE_SHARED_DKIM_PRIVATE_KEY: {error}") from None
    pool = await db.create_pool(settings.service_dsn(NAME), NAME, settings.db_pool_size)
    pods_channel = open_channel(settings.pods_addr)
    inboxes_channel = open_channel(settings.inboxes_addr)
    mailboxes_channel = open_channel(settings.mailboxes_addr)
    internal_token = settings.internal_token.get_secret_value()
    messages_channel = open_channel(settings.messages_addr)
    mailboxes = MailboxUserCounter(
        mailboxes_channel, settings.peer_deadline_seconds, internal_token
    )
    service = DomainService(
        DomainStore(pool),
        PodsClient(pods_channel, settings.peer_deadline_seconds, internal_token),
        DnsLookup(settings.dns_nameservers, settings.dns_timeout_seconds),
        cipher,
        DomainSettings(
            shared_domain=settings.shared_domain,
            targets=MailTargets(settings.mail_host, settings.mx_priority, settings.spf_include),
        ),
        user_counters=(
            InboxUserCounter(inboxes_channel, settings.peer_deadline_seconds, internal_token),
            mailboxes,
        ),
        reception_listeners=(mailboxes.reception_changed,),
        routes=AddressDirectory(
            messages_channel,
            settings.peer_deadline_seconds,
            settings.internal_token.get_secret_value(),
        ),
        page_tokens=PageTokens(settings.page_token_key.get_secret_value().encode()),
        keyring=keyring,
    )

    async def sweep() -> None:
        await service.sweep(settings.stale_intent_seconds)

    server = keyed_service(
        settings,
        NAME,
        pool,
        pods_channel,
        Servicer(
            domains_pb2_grpc.add_DomainServiceServicer_to_server,
            DomainServicer(service),
            SERVICE_NAME,
            DOMAIN_ACCESS,
        ),
        sweep,
    )
    return ServiceProcess(
        pool=pool,
        channels=[pods_channel, inboxes_channel, mailboxes_channel, messages_channel],
        service=service,
        grpc=server,
    )
