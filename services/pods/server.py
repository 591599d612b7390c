"""Composition root of the pods service: pool → store → service → servicers → chassis."""

from __future__ import annotations

from pathlib import Path

from mailplane.pods.v1 import pods_pb2_grpc

from services.chassis import db
from services.chassis.auth import KeyCache
from services.chassis.config import Settings
from services.chassis.pagination import PageTokens
from services.chassis.rpc import open_channel
from services.chassis.server import GrpcService, ServiceProcess, Servicer
from services.pods.api import (
    ACCOUNT_ACCESS,
    API_KEY_ACCESS,
    POD_ACCESS,
    AccountServicer,
    ApiKeyServicer,
    PodServicer,
)
from services.pods.clients import (
    DomainsCounter,
    InboxesCounter,
    MailboxesCounter,
    ScopeResources,
)
from services.pods.service import PodService
from services.pods.store import PodStore

NAME = "pods"
MIGRATIONS = Path(__file__).parent / "migrations"
SERVICE_NAMES = (
    "mailplane.pods.v1.PodService",
    "mailplane.pods.v1.AccountService",
    "mailplane.pods.v1.ApiKeyService",
)


#: A running pods service.
PodsProcess = ServiceProcess[PodService]


async def build(settings: Settings) -> PodsProcess:
    """Builds the pods service from settings; the caller starts ``grpc``.

    Before a pod is deleted, every child service is asked for its count of the
    pod's children (DESIGN §3): inboxes, mailboxes and domains.
    """
    pool = await db.create_pool(settings.service_dsn(NAME), NAME, settings.db_pool_size)
    domains_channel = open_channel(settings.domains_addr)
    inboxes_channel = open_channel(settings.inboxes_addr)
    mailboxes_channel = open_channel(settings.mailboxes_addr)
    deadline = settings.peer_deadline_seconds
    internal_token = settings.internal_token.get_secret_value()
    service = PodService(
        PodStore(pool),
        child_counters=(
            InboxesCounter(inboxes_channel, deadline, internal_token),
            MailboxesCounter(mailboxes_channel, deadline, internal_token),
            DomainsCounter(domains_channel, deadline, internal_token),
        ),
        scope_check=ScopeResources(inboxes_channel, mailboxes_channel, deadline),
        page_tokens=PageTokens(settings.page_token_key.get_secret_value().encode()),
    )
    keys = KeyCache(service.authenticate, ttl_seconds=min(settings.auth_cache_seconds, 5.0))
    servicers = [
        Servicer(
            pods_pb2_grpc.add_PodServiceServicer_to_server,
            PodServicer(service),
            SERVICE_NAMES[0],
            POD_ACCESS,
        ),
        Servicer(
            pods_pb2_grpc.add_AccountServiceServicer_to_server,
            AccountServicer(service),
            SERVICE_NAMES[1],
            ACCOUNT_ACCESS,
        ),
        Servicer(
            pods_pb2_grpc.add_ApiKeyServiceServicer_to_server,
            ApiKeyServicer(service),
            SERVICE_NAMES[2],
            API_KEY_ACCESS,
        ),
    ]

    async def sweep() -> None:
        await service.sweep(settings.stale_intent_seconds)
        await service.flush_key_use()  # lastUsedAt, batched: one write per sweep

    server = GrpcService(
        name=NAME,
        pool=pool,
        servicers=servicers,
        authenticate=keys.authenticate,
        internal_token=internal_token,
        sweep=sweep,
        sweep_interval=settings.sweep_interval_seconds,
    )
    return ServiceProcess(
        pool=pool,
        channels=[domains_channel, inboxes_channel, mailboxes_channel],
        service=service,
        grpc=server,
    )
