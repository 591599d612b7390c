"""Composition root of the messages service's ``serve`` process:
pool → store → service → servicers → chassis (DESIGN §7.1)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import asyncpg
import grpc
from mailplane.messages.v1 import (
    addresses_pb2,
    addresses_pb2_grpc,
    events_pb2,
    events_pb2_grpc,
    messages_pb2_grpc,
    sending_pb2,
    sending_pb2_grpc,
)

from services.chassis import db
from services.chassis.config import Settings
from services.chassis.pagination import PageTokens
from services.chassis.peers import PodsClient
from services.chassis.rpc import open_channel
from services.chassis.server import ServiceProcess, Servicer, keyed_service
from services.messages.api import MESSAGE_ACCESS, MessageServicer
from services.messages.directory import AddressDirectory
from services.messages.directory_api import ADDRESS_ACCESS, AddressServicer
from services.messages.directory_store import DirectoryStore
from services.messages.dispatch import SecretBox, Sender
from services.messages.event_log import EventListener, EventLog
from services.messages.events import EventService
from services.messages.events_api import (
    EVENT_ACCESS,
    WEBHOOK_ACCESS,
    EventServicer,
    WebhookServicer,
)
from services.messages.outbox import Limits, Outbox
from services.messages.outbox_api import SENDING_ACCESS, SendingServicer
from services.messages.outbox_store import OutboxStore
from services.messages.owners import InboxOwners, MailboxOwners
from services.messages.service import MailService
from services.messages.store import MailStore
from services.messages.webhooks import WebhookService, WebhookStore

NAME = "messages"
MIGRATIONS = Path(__file__).parent / "migrations"
SERVICE_NAME = "mailplane.messages.v1.MessageService"
ADDRESS_SERVICE_NAME = addresses_pb2.DESCRIPTOR.services_by_name["AddressService"].full_name


@dataclass
class MessagesProcess(ServiceProcess[MailService]):
    """A running messages service, with its route directory (DESIGN §7.2)."""

    directory: AddressDirectory | None = None


def outbox_of(settings: Settings, pool: asyncpg.Pool, pods_channel: grpc.aio.Channel) -> Outbox:
    """The send path (DESIGN §7.5) over ``pool``, for the gRPC API and submission."""
    pods = PodsClient(
        pods_channel, settings.peer_deadline_seconds, settings.internal_token.get_secret_value()
    )

    async def resolve_pod(ref: str) -> str:
        return (await pods.get_pod(ref)).id

    return Outbox(
        OutboxStore(pool),
        MailStore(pool),
        resolve_pod,
        Limits(
            per_minute=settings.send_limit_per_minute,
            per_day=settings.send_limit_per_day,
            max_hours=settings.delivery_max_hours,
            max_bytes=settings.max_message_bytes,
            shared_domain=settings.shared_domain,
        ),
        page_tokens=PageTokens(settings.page_token_key.get_secret_value().encode()),
    )


async def build(settings: Settings) -> MessagesProcess:
    """Builds the messages service's gRPC side from settings; the caller starts ``grpc``."""
    pool = await db.create_pool(settings.service_dsn(NAME), NAME, settings.db_pool_size)
    pods_channel = open_channel(settings.pods_addr)
    pods = PodsClient(
        pods_channel, settings.peer_deadline_seconds, settings.internal_token.get_secret_value()
    )

    async def resolve_pod(ref: str) -> str:
        return (await pods.get_pod(ref)).id

    store = MailStore(pool)
    tokens = PageTokens(settings.page_token_key.get_secret_value().encode())
    service = MailService(store, resolve_pod, page_tokens=tokens)
    inboxes_channel = open_channel(settings.inboxes_addr)
    mailboxes_channel = open_channel(settings.mailboxes_addr)
    internal_token = settings.internal_token.get_secret_value()
    directory = AddressDirectory(
        DirectoryStore(pool),
        settings.address_reclaim_days,
        {
            "inbox": InboxOwners(inboxes_channel, settings.peer_deadline_seconds, internal_token),
            "mailbox": MailboxOwners(
                mailboxes_channel, settings.peer_deadline_seconds, internal_token
            ),
        },
    )
    listener = EventListener(settings.service_dsn(NAME))
    events = EventService(EventLog(pool), listener, store, resolve_pod)
    box = SecretBox(settings.webhook_secret_key.get_secret_value())
    # Test deliveries only (one at a time per call); the worker delivers events.
    sender = Sender(box, settings.webhook_timeout_seconds, settings.webhook_allow_private, 16)
    webhooks = WebhookService(
        WebhookStore(pool),
        store,
        resolve_pod,
        box,
        sender,
        settings.webhook_allow_private,
        page_tokens=tokens,
    )

    outbox_store = OutboxStore(pool)
    outbox = outbox_of(settings, pool, pods_channel)

    async def sweep() -> None:
        await directory.sweep(settings.stale_intent_seconds)
        await outbox_store.sweep()

    server = keyed_service(
        settings,
        NAME,
        pool,
        pods_channel,
        Servicer(
            messages_pb2_grpc.add_MessageServiceServicer_to_server,
            MessageServicer(service),
            SERVICE_NAME,
            MESSAGE_ACCESS,
        ),
        sweep,
        Servicer(
            addresses_pb2_grpc.add_AddressServiceServicer_to_server,
            AddressServicer(directory),
            ADDRESS_SERVICE_NAME,
            ADDRESS_ACCESS,
        ),
        Servicer(
            events_pb2_grpc.add_EventServiceServicer_to_server,
            EventServicer(events),
            events_pb2.DESCRIPTOR.services_by_name["EventService"].full_name,
            EVENT_ACCESS,
        ),
        Servicer(
            events_pb2_grpc.add_WebhookServiceServicer_to_server,
            WebhookServicer(webhooks),
            events_pb2.DESCRIPTOR.services_by_name["WebhookService"].full_name,
            WEBHOOK_ACCESS,
        ),
        Servicer(
            sending_pb2_grpc.add_SendingServiceServicer_to_server,
            SendingServicer(outbox),
            sending_pb2.DESCRIPTOR.services_by_name["SendingService"].full_name,
            SENDING_ACCESS,
        ),
    )
    return MessagesProcess(
        pool=pool,
        channels=[pods_channel, inboxes_channel, mailboxes_channel],
        service=service,
        grpc=server,
        closers=[listener.close, sender.close],
        directory=directory,
    )
