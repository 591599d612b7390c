"""The route directory's servicer (``mailplane.messages.v1.AddressService``):
protobuf ↔ routes. Every method is internal (DESIGN §2: work the inboxes,
mailboxes and domains services do for themselves), so each needs the service
credential."""

from __future__ import annotations

import grpc
from mailplane.messages.v1 import addresses_pb2, addresses_pb2_grpc

from services.chassis import auth
from services.chassis.errors import invalid_argument
from services.messages.directory import AddressDirectory, check_route
from services.messages.directory_store import Route
from services.messages.models import MailboxPolicy

_KINDS = {
    addresses_pb2.ROUTE_KIND_INBOX: "inbox",
    addresses_pb2.ROUTE_KIND_MAILBOX: "mailbox",
    addresses_pb2.ROUTE_KIND_CATCH_ALL: "catch_all",
}
_KIND_VALUES = {name: value for value, name in _KINDS.items()}
_STATES = {
    "pending": addresses_pb2.ROUTE_STATE_PENDING,
    "live": addresses_pb2.ROUTE_STATE_LIVE,
    "tombstone": addresses_pb2.ROUTE_STATE_TOMBSTONE,
}


#: Who may call each AddressService method: only the service credential (the
#: inboxes, mailboxes and domains services, for work of their own; DESIGN §7.2).
ADDRESS_ACCESS: dict[str, auth.Access] = {
    "ClaimAddress": auth.OPERATOR_ONLY,
    "ConfirmAddress": auth.OPERATOR_ONLY,
    "ReleaseAddress": auth.OPERATOR_ONLY,
    "SetDomainStatus": auth.OPERATOR_ONLY,
    "ForgetDomain": auth.OPERATOR_ONLY,
    "SetMailboxPolicy": auth.OPERATOR_ONLY,
}


def route_to_pb(route: Route) -> addresses_pb2.Route:
    """Converts a route to its message."""
    return addresses_pb2.Route(
        address=route.address,
        domain=route.domain,
        kind=_KIND_VALUES[route.kind],  # type: ignore[arg-type]
        owner_id=route.owner_id,
        account_id=route.account_id,
        pod_id=route.pod_id,
        state=_STATES[route.state],  # type: ignore[arg-type]
    )


def _route_of(
    request: addresses_pb2.ClaimAddressRequest | addresses_pb2.ConfirmAddressRequest,
) -> Route:
    return check_route(
        request.address,
        _KINDS.get(request.kind, ""),
        request.owner_id,
        request.account_id,
        request.pod_id,
    )


class AddressServicer(addresses_pb2_grpc.AddressServiceServicer):
    """gRPC front of the route directory."""

    def __init__(self, directory: AddressDirectory):
        self._directory = directory

    async def ClaimAddress(
        self, request: addresses_pb2.ClaimAddressRequest, context: grpc.aio.ServicerContext
    ) -> addresses_pb2.Route:
        return route_to_pb(await self._directory.claim(_route_of(request)))

    async def ConfirmAddress(
        self, request: addresses_pb2.ConfirmAddressRequest, context: grpc.aio.ServicerContext
    ) -> addresses_pb2.Route:
        return route_to_pb(await self._directory.confirm(_route_of(request)))

    async def ReleaseAddress(
        self, request: addresses_pb2.ReleaseAddressRequest, context: grpc.aio.ServicerContext
    ) -> addresses_pb2.ReleaseAddressResponse:
        if not request.owner_id:
            raise invalid_argument("owner_id", "is required.")
        released = await self._directory.release(request.owner_id, request.address or None)
        return addresses_pb2.ReleaseAddressResponse(released=released)

    async def SetDomainStatus(
        self, request: addresses_pb2.SetDomainStatusRequest, context: grpc.aio.ServicerContext
    ) -> addresses_pb2.SetDomainStatusResponse:
        await self._directory.set_domain_status(
            request.name, request.account_id, request.routes_deliver, request.can_send
        )
        return addresses_pb2.SetDomainStatusResponse()

    async def ForgetDomain(
        self, request: addresses_pb2.ForgetDomainRequest, context: grpc.aio.ServicerContext
    ) -> addresses_pb2.ForgetDomainResponse:
        await self._directory.forget_domain(request.name, request.account_id)
        return addresses_pb2.ForgetDomainResponse()

    async def SetMailboxPolicy(
        self, request: addresses_pb2.SetMailboxPolicyRequest, context: grpc.aio.ServicerContext
    ) -> addresses_pb2.SetMailboxPolicyResponse:
        rules = sorted(
            (
                {
                    "id": r.id,
                    "priority": r.priority,
                    "from": r.match_from.strip().lower() or None,
                    "to": r.match_to.strip().lower() or None,
                    "subjectContains": r.match_subject_contains.casefold() or None,
                    "action": r.action,
                    "folderId": r.folder_id or None,
                }
                for r in request.rules
            ),
            key=lambda r: r["priority"],
        )
        recorded = await self._directory.set_mailbox_policy(
            MailboxPolicy(
                mailbox_id=request.mailbox_id,
                account_id=request.account_id,
                pod_id=request.pod_id,
                version=request.version,
                status=request.status,
                address=request.address.strip().lower(),
                display_name=request.display_name or None,
                inbound_rate_limit=request.inbound_rate_limit or None,
                paused_auto_reply=request.paused_auto_reply or None,
                reply_to=request.reply_to or None,
                rules=rules,
            )
        )
        return addresses_pb2.SetMailboxPolicyResponse(recorded=recorded)
