"""The pods service's typed clients of its child services: each answers how many
children a pod has, for DESIGN §3's parent side of a pod delete. The counts are
asked with the service credential and the account's ID (the count RPCs are
internal: DESIGN §2); the pods service has already authorized the delete."""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from mailplane.domains.v1 import domains_pb2, domains_pb2_grpc
from mailplane.inboxes.v1 import inboxes_pb2, inboxes_pb2_grpc
from mailplane.mailboxes.v1 import mailboxes_pb2, mailboxes_pb2_grpc

from services.chassis.auth import INTERNAL_TOKEN_METADATA
from services.chassis.rpc import call_peer


class DomainsCounter:
    """Counts a pod's pod-scoped domains (pending and re-scoping ones included)
    through the domains service.

    Args:
        channel: the process's one channel to the domains service.
        deadline: seconds the call may take.
        internal_token: the service credential.
    """

    def __init__(self, channel: grpc.aio.Channel, deadline: float, internal_token: str):
        self._stub = domains_pb2_grpc.DomainServiceStub(channel)
        self._deadline = deadline
        self._operator = ((INTERNAL_TOKEN_METADATA, internal_token),)

    async def __call__(self, account_id: str, pod_id: str) -> dict[str, int]:
        """Returns ``{"domains": n}``. Raises ``unavailable`` if the service is down."""
        reply = await call_peer(
            self._stub.CountDomains,
            domains_pb2.CountDomainsRequest(pod_id=pod_id, account_id=account_id),
            deadline=self._deadline,
            metadata=self._operator,
        )
        return {"domains": reply.domains}


class InboxesCounter:
    """Counts a pod's inboxes (pending ones included) through the inboxes
    service.

    Args:
        channel: the process's one channel to the inboxes service.
        deadline: seconds the call may take.
        internal_token: the service credential.
    """

    def __init__(self, channel: grpc.aio.Channel, deadline: float, internal_token: str):
        self._stub = inboxes_pb2_grpc.InboxServiceStub(channel)
        self._deadline = deadline
        self._operator = ((INTERNAL_TOKEN_METADATA, internal_token),)

    async def __call__(self, account_id: str, pod_id: str) -> dict[str, int]:
        """Returns ``{"inboxes": n}``. Raises ``unavailable`` if the service is down."""
        reply = await call_peer(
            self._stub.CountInboxes,
            inboxes_pb2.CountInboxesRequest(pod_id=pod_id, account_id=account_id),
            deadline=self._deadline,
            metadata=self._operator,
        )
        return {"inboxes": reply.inboxes}


class MailboxesCounter:
    """Counts a pod's mailboxes that are not deleted (pending ones included)
    through the mailboxes service.

    Args:
        channel: the process's one channel to the mailboxes service.
        deadline: seconds the call may take.
        internal_token: the service credential.
    """

    def __init__(self, channel: grpc.aio.Channel, deadline: float, internal_token: str):
        self._stub = mailboxes_pb2_grpc.MailboxServiceStub(channel)
        self._deadline = deadline
        self._operator = ((INTERNAL_TOKEN_METADATA, internal_token),)

    async def __call__(self, account_id: str, pod_id: str) -> dict[str, int]:
        """Returns ``{"mailboxes": n}``. Raises ``unavailable`` if the service is down."""
        reply = await call_peer(
            self._stub.CountMailboxes,
            mailboxes_pb2.CountMailboxesRequest(pod_id=pod_id, account_id=account_id),
            deadline=self._deadline,
            metadata=self._operator,
        )
        return {"mailboxes": reply.mailboxes}


class ScopeResources:
    """Confirms, through the inboxes and mailboxes services, that the inbox or
    mailboxes a new key is scoped to exist in the caller's account.

    Args:
        inboxes: the process's one channel to the inboxes service.
        mailboxes: the process's one channel to the mailboxes service.
        deadline: seconds each call may take.
    """

    def __init__(self, inboxes: grpc.aio.Channel, mailboxes: grpc.aio.Channel, deadline: float):
        self._inboxes = inboxes_pb2_grpc.InboxServiceStub(inboxes)
        self._mailboxes = mailboxes_pb2_grpc.MailboxServiceStub(mailboxes)
        self._deadline = deadline

    async def __call__(self, scope_type: str, resource_ids: Sequence[str]) -> None:
        """Raises ``inbox_not_found``/``mailbox_not_found``/``unavailable`` unless
        every ID is the caller's."""
        for resource_id in resource_ids:
            if scope_type == "inbox":
                await call_peer(
                    self._inboxes.GetInbox,
                    inboxes_pb2.GetInboxRequest(inbox_id=resource_id),
                    deadline=self._deadline,
                )
            else:
                await call_peer(
                    self._mailboxes.GetMailbox,
                    mailboxes_pb2.GetMailboxRequest(mailbox_id=resource_id),
                    deadline=self._deadline,
                )
