"""Request dependencies: the caller's key, forwarded as gRPC metadata, and the
per-process stubs.

The gateway does not own identity (DESIGN §2): it takes the key from
``Authorization: Bearer <key>`` or ``X-API-Key: <key>`` and forwards it as
``authorization: Bearer <key>``; each service authenticates it. Nothing a client
sends is ever forwarded as the service credential.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import grpc
from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from mailplane.domains.v1 import domains_pb2_grpc
from mailplane.inboxes.v1 import inboxes_pb2_grpc
from mailplane.mailboxes.v1 import mailboxes_pb2_grpc
from mailplane.pods.v1 import pods_pb2_grpc

from services.chassis import auth
from services.chassis.errors import MailplaneError

_bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer mp_…`")
_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="`X-API-Key: mp_…`")


@dataclass(frozen=True)
class Stubs:
    """The gateway's stubs, built once over one channel per service."""

    pods: pods_pb2_grpc.PodServiceStub
    accounts: pods_pb2_grpc.AccountServiceStub
    api_keys: pods_pb2_grpc.ApiKeyServiceStub
    domains: domains_pb2_grpc.DomainServiceStub
    inboxes: inboxes_pb2_grpc.InboxServiceStub
    mailboxes: mailboxes_pb2_grpc.MailboxServiceStub

    @classmethod
    def over(cls, channels: dict[str, grpc.aio.Channel]) -> Stubs:
        """Builds every stub from the per-service channels."""
        pods = channels["pods"]
        return cls(
            pods=pods_pb2_grpc.PodServiceStub(pods),
            accounts=pods_pb2_grpc.AccountServiceStub(pods),
            api_keys=pods_pb2_grpc.ApiKeyServiceStub(pods),
            domains=domains_pb2_grpc.DomainServiceStub(channels["domains"]),
            inboxes=inboxes_pb2_grpc.InboxServiceStub(channels["inboxes"]),
            mailboxes=mailboxes_pb2_grpc.MailboxServiceStub(channels["mailboxes"]),
        )


@dataclass(frozen=True)
class Call:
    """What a route needs to call a service for this request.

    Attributes:
        stubs: the per-process stubs.
        metadata: the caller's key and request ID, as gRPC metadata.
        timeout: the deadline of each call, in seconds.
    """

    stubs: Stubs
    metadata: tuple[tuple[str, str], ...]
    timeout: float


def _caller_call(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
    api_key: Annotated[str | None, Security(_api_key_header)],
) -> Call:
    key = (bearer.credentials if bearer is not None else api_key or "").strip()
    if not key:
        raise MailplaneError(
            "unauthenticated",
            "Send your API key as `Authorization: Bearer <key>` or `X-API-Key: <key>`.",
        )
    if not auth.well_formed(key):  # refused here, before any call: no lookup for junk
        raise auth.bad_key()
    metadata = (
        ("authorization", f"Bearer {key}"),
        ("x-request-id", request.state.request_id),
    )
    state = request.app.state
    return Call(stubs=state.stubs, metadata=metadata, timeout=state.settings.peer_deadline_seconds)


CallerCall = Annotated[Call, Depends(_caller_call)]
