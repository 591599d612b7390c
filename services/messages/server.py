"""Composition root of the messages service's ``serve`` process:
pool → store → service → servicers → chassis (DESIGN §7.1)."""

from __future__ import annotations

from pathlib import Path

from mailplane.messages.v1 import messages_pb2_grpc

from services.chassis import db
from services.chassis.config import Settings
from services.chassis.peers import PodsClient
from services.chassis.rpc import open_channel
from services.chassis.server import ServiceProcess, Servicer, keyed_service
from services.messages.api import MESSAGE_ACCESS, MessageServicer
from services.messages.service import MailService
from services.messages.store import MailStore

NAME = "messages"
MIGRATIONS = Path(__file__).parent / "migrations"
SERVICE_NAME = "mailplane.messages.v1.MessageService"

#: A running messages service.
MessagesProcess = ServiceProcess[MailService]


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
    service = MailService(store, resolve_pod)

    async def sweep() -> None:
        return None

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
    )
    return ServiceProcess(pool=pool, channels=[pods_channel], service=service, grpc=server)
