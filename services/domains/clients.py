"""The domains service's typed clients of the services that use domains: each
answers how many of its resources use a domain, for DESIGN §3's parent side of a
domain delete or re-scope."""

from __future__ import annotations

import grpc
from mailplane.inboxes.v1 import inboxes_pb2, inboxes_pb2_grpc

from services.chassis.rpc import call_peer


class InboxUserCounter:
    """Counts the inboxes (pending ones included) on a domain through the inboxes
    service, forwarding the caller's credentials.

    Args:
        channel: the process's one channel to the inboxes service.
        deadline: seconds the call may take.
    """

    def __init__(self, channel: grpc.aio.Channel, deadline: float):
        self._stub = inboxes_pb2_grpc.InboxServiceStub(channel)
        self._deadline = deadline

    async def __call__(
        self, account_id: str, domain: str, outside_pod_id: str | None
    ) -> dict[str, int]:
        """Returns ``{"inboxes": n}``, not counting pod ``outside_pod_id``'s inboxes.

        Raises ``unavailable`` if the inboxes service is down.
        """
        reply = await call_peer(
            self._stub.CountInboxes,
            inboxes_pb2.CountInboxesRequest(domain=domain, outside_pod_id=outside_pod_id or ""),
            deadline=self._deadline,
        )
        return {"inboxes": reply.inboxes}
