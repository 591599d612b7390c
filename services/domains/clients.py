"""The domains service's typed clients of the services that use domains (inboxes,
mailboxes): how many of their resources use a domain, for DESIGN §3's parent
side of a domain delete or re-scope, and the news that a domain's reception
changed, for mailbox status (seed 004). Every call carries the service
credential and the account's ID (these RPCs are internal: DESIGN §2; the
domains service has authorized its caller) and has a deadline."""

from __future__ import annotations

import grpc
from mailplane.inboxes.v1 import inboxes_pb2, inboxes_pb2_grpc
from mailplane.mailboxes.v1 import mailboxes_pb2, mailboxes_pb2_grpc

from services.chassis.auth import INTERNAL_TOKEN_METADATA
from services.chassis.rpc import call_peer


class InboxUserCounter:
    """Counts the inboxes (pending ones included) on a domain.

    Args:
        channel: the process's one channel to the inboxes service.
        deadline: seconds the call may take.
        internal_token: the service credential.
    """

    def __init__(self, channel: grpc.aio.Channel, deadline: float, internal_token: str):
        self._stub = inboxes_pb2_grpc.InboxServiceStub(channel)
        self._deadline = deadline
        self._operator = ((INTERNAL_TOKEN_METADATA, internal_token),)

    async def __call__(
        self, account_id: str, domain: str, outside_pod_id: str | None
    ) -> dict[str, int]:
        """Returns ``{"inboxes": n}``, not counting pod ``outside_pod_id``'s inboxes.

        Raises ``unavailable`` if the inboxes service is down.
        """
        reply = await call_peer(
            self._stub.CountInboxes,
            inboxes_pb2.CountInboxesRequest(
                domain=domain, outside_pod_id=outside_pod_id or "", account_id=account_id
            ),
            deadline=self._deadline,
            metadata=self._operator,
        )
        return {"inboxes": reply.inboxes}


class MailboxUserCounter:
    """Counts the mailboxes (not deleted; pending ones included) on a domain, and
    tells the mailboxes service when a domain's reception changed.

    Args:
        channel: the process's one channel to the mailboxes service.
        deadline: seconds each call may take.
        internal_token: the service credential.
    """

    def __init__(self, channel: grpc.aio.Channel, deadline: float, internal_token: str):
        self._stub = mailboxes_pb2_grpc.MailboxServiceStub(channel)
        self._deadline = deadline
        self._operator = ((INTERNAL_TOKEN_METADATA, internal_token),)

    async def __call__(
        self, account_id: str, domain: str, outside_pod_id: str | None
    ) -> dict[str, int]:
        """Returns ``{"mailboxes": n}``, not counting pod ``outside_pod_id``'s.

        Raises ``unavailable`` if the mailboxes service is down.
        """
        reply = await call_peer(
            self._stub.CountMailboxes,
            mailboxes_pb2.CountMailboxesRequest(
                domain=domain, outside_pod_id=outside_pod_id or "", account_id=account_id
            ),
            deadline=self._deadline,
            metadata=self._operator,
        )
        return {"mailboxes": reply.mailboxes}

    async def reception_changed(self, account_id: str, domain: str, can_receive: bool) -> None:
        """Tells the mailboxes service whether ``domain`` can receive now.

        Raises ``unavailable`` if the mailboxes service is down.
        """
        await call_peer(
            self._stub.SetDomainReception,
            mailboxes_pb2.SetDomainReceptionRequest(
                account_id=account_id, domain=domain, can_receive=can_receive
            ),
            deadline=self._deadline,
            metadata=self._operator,
        )
