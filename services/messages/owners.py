"""The route directory's typed clients of the owner services (inboxes,
mailboxes): which addresses some owners hold, for the sweep of stale claims
(DESIGN §3). Calls carry the service credential (work no caller started) and a
deadline; an owner service that is down is ``unavailable``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import grpc
from mailplane.inboxes.v1 import inboxes_pb2, inboxes_pb2_grpc
from mailplane.mailboxes.v1 import mailboxes_pb2, mailboxes_pb2_grpc

from services.chassis.auth import INTERNAL_TOKEN_METADATA
from services.chassis.rpc import call_peer


class InboxOwners:
    """Asks the inboxes service which addresses some inboxes hold.

    Args:
        channel: the process's one channel to the inboxes service.
        deadline: seconds the call may take.
        internal_token: the service credential.
    """

    def __init__(self, channel: grpc.aio.Channel, deadline: float, internal_token: str):
        self._stub = inboxes_pb2_grpc.InboxServiceStub(channel)
        self._deadline = deadline
        self._operator = ((INTERNAL_TOKEN_METADATA, internal_token),)

    async def __call__(self, owner_ids: Sequence[str]) -> Mapping[tuple[str, str], bool]:
        """Returns ``{(inbox_id, address): live}``. Raises ``unavailable``."""
        reply = await call_peer(
            self._stub.GetInboxAddresses,
            inboxes_pb2.GetInboxAddressesRequest(inbox_ids=list(owner_ids)),
            deadline=self._deadline,
            metadata=self._operator,
        )
        return {(a.owner_id, a.address): a.live for a in reply.addresses}


class MailboxOwners:
    """Asks the mailboxes service which addresses (and catch-alls) some mailboxes hold.

    Args:
        channel: the process's one channel to the mailboxes service.
        deadline: seconds the call may take.
        internal_token: the service credential.
    """

    def __init__(self, channel: grpc.aio.Channel, deadline: float, internal_token: str):
        self._stub = mailboxes_pb2_grpc.MailboxServiceStub(channel)
        self._deadline = deadline
        self._operator = ((INTERNAL_TOKEN_METADATA, internal_token),)

    async def __call__(self, owner_ids: Sequence[str]) -> Mapping[tuple[str, str], bool]:
        """Returns ``{(mailbox_id, address): live}``. Raises ``unavailable``."""
        reply = await call_peer(
            self._stub.GetMailboxAddresses,
            mailboxes_pb2.GetMailboxAddressesRequest(mailbox_ids=list(owner_ids)),
            deadline=self._deadline,
            metadata=self._operator,
        )
        return {(a.owner_id, a.address): a.live for a in reply.addresses}
