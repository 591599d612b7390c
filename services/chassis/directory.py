"""The typed client of the messages service's route directory (DESIGN §7.2), for
the services whose resources hold addresses (inboxes, mailboxes) or decide
where they deliver (domains).

Every call carries the service credential, not the caller's key: the directory
is internal, and claims are made for the calling service, which decides what
its own caller is told. Each call has a deadline; the messages service being
down is ``unavailable``, so a create or delete fails closed (DESIGN §3).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import grpc
from mailplane.messages.v1 import addresses_pb2, addresses_pb2_grpc

from services.chassis.auth import INTERNAL_TOKEN_METADATA
from services.chassis.errors import MailplaneError
from services.chassis.rpc import call_peer

RouteKind = Literal["inbox", "mailbox", "catch_all"]
_KINDS: dict[str, int] = {
    "inbox": addresses_pb2.ROUTE_KIND_INBOX,
    "mailbox": addresses_pb2.ROUTE_KIND_MAILBOX,
    "catch_all": addresses_pb2.ROUTE_KIND_CATCH_ALL,
}


def catch_all_address(domain: str) -> str:
    """The directory's address of a domain's catch-all: ``*@domain``."""
    return f"*@{domain}"


@dataclass(frozen=True)
class Claim:
    """An address an owner holds or wants to hold.

    Attributes:
        address: lower case; ``*@domain`` for a catch-all.
        kind: ``inbox``, ``mailbox`` or ``catch_all``.
        owner_id: ``inb_…`` or ``mbx_…``.
        account_id: the owner's account.
        pod_id: the owner's pod.
    """

    address: str
    kind: RouteKind
    owner_id: str
    account_id: str
    pod_id: str


class AddressHeld(Exception):
    """The directory holds the address for another owner (pending, live or a
    tombstone not reclaimable by this pod). ``holder`` describes it for the
    calling service's logs; it is never shown to a caller, who may not see
    another account's resources."""

    def __init__(self, address: str, holder: dict[str, str]):
        super().__init__(address)
        self.address = address
        self.holder = holder


class AddressDirectory:
    """Claims, confirms and releases routes; reports custom domains' owners.

    Args:
        channel: the process's one channel to the messages service.
        deadline: seconds each call may take.
        internal_token: the service credential.
    """

    def __init__(self, channel: grpc.aio.Channel, deadline: float, internal_token: str):
        self._stub = addresses_pb2_grpc.AddressServiceStub(channel)
        self._deadline = deadline
        self._operator = ((INTERNAL_TOKEN_METADATA, internal_token),)

    async def _call(self, method: object, request: object) -> object:
        try:
            return await call_peer(
                method,  # type: ignore[arg-type]
                request,
                deadline=self._deadline,
                metadata=self._operator,
            )
        except MailplaneError as error:
            if error.code in ("address_taken", "catch_all_taken"):
                details = {k: str(v) for k, v in (error.details or {}).items()}
                raise AddressHeld(details.get("address", ""), details) from None
            raise

    async def claim(self, claim: Claim) -> bool:
        """Claims an address as pending (DESIGN §3 child side, step 2).

        Returns:
            Whether the route is already live (the same owner claimed it before).

        Raises:
            AddressHeld: another owner holds it.
            MailplaneError: ``unavailable``.
        """
        route = await self._call(
            self._stub.ClaimAddress, _request(addresses_pb2.ClaimAddressRequest, claim)
        )
        return route.state == addresses_pb2.ROUTE_STATE_LIVE  # type: ignore[attr-defined,no-any-return]

    async def confirm(self, claim: Claim) -> None:
        """Makes the owner's route live (after the owner is live).

        Raises:
            AddressHeld: another owner holds it (its claim was swept and retaken).
            MailplaneError: ``unavailable``.
        """
        await self._call(
            self._stub.ConfirmAddress, _request(addresses_pb2.ConfirmAddressRequest, claim)
        )

    async def release(self, owner_id: str, address: str | None = None) -> int:
        """Releases one of the owner's addresses, or all of them (``None``): a
        pending claim is removed, a live inbox address tombstoned, any other
        removed. Returns how many routes changed. Raises ``unavailable``."""
        reply = await self._call(
            self._stub.ReleaseAddress,
            addresses_pb2.ReleaseAddressRequest(owner_id=owner_id, address=address or ""),
        )
        return int(reply.released)  # type: ignore[attr-defined]

    async def set_domain_status(
        self, name: str, account_id: str, routes_deliver: bool, can_send: bool
    ) -> None:
        """Tells the directory whether ``account_id`` holds ``name`` verified and
        able to receive, and whether it can send (SPF and DKIM valid). Raises
        ``unavailable``."""
        await self._call(
            self._stub.SetDomainStatus,
            addresses_pb2.SetDomainStatusRequest(
                name=name, account_id=account_id, routes_deliver=routes_deliver, can_send=can_send
            ),
        )

    async def set_mailbox_policy(
        self,
        *,
        mailbox_id: str,
        account_id: str,
        pod_id: str,
        version: int,
        status: str,
        address: str,
        display_name: str | None,
        inbound_rate_limit: int | None,
        paused_auto_reply: str | None,
        reply_to: str | None,
        rules: Sequence[Mapping[str, Any]],
    ) -> bool:
        """Records a mailbox's receiving policy in the messages service (an older
        version than the recorded one is ignored).

        Args:
            rules: the enabled rules in the order they apply, each ``{"id",
                "priority", "match": {"from"?, "to"?, "subject_contains"?},
                "action", "folderId"}``.

        Returns:
            Whether this version was recorded. Raises ``unavailable``.
        """
        request = addresses_pb2.SetMailboxPolicyRequest(
            mailbox_id=mailbox_id,
            account_id=account_id,
            pod_id=pod_id,
            version=version,
            status=status,
            address=address,
            display_name=display_name or "",
            inbound_rate_limit=inbound_rate_limit or 0,
            paused_auto_reply=paused_auto_reply or "",
            reply_to=reply_to or "",
            rules=[
                addresses_pb2.MailboxRule(
                    id=rule["id"],
                    priority=rule["priority"],
                    match_from=rule["match"].get("from") or "",
                    match_to=rule["match"].get("to") or "",
                    match_subject_contains=rule["match"].get("subject_contains") or "",
                    action=rule["action"],
                    folder_id=rule.get("folderId") or "",
                )
                for rule in rules
            ],
        )
        reply = await self._call(self._stub.SetMailboxPolicy, request)
        return bool(reply.recorded)  # type: ignore[attr-defined]

    async def forget_domain(self, name: str, account_id: str) -> None:
        """Tells the directory that ``account_id`` deleted ``name``. Raises ``unavailable``."""
        await self._call(
            self._stub.ForgetDomain,
            addresses_pb2.ForgetDomainRequest(name=name, account_id=account_id),
        )


def _request(message: type, claim: Claim) -> object:
    return message(
        address=claim.address,
        kind=_KINDS[claim.kind],
        owner_id=claim.owner_id,
        account_id=claim.account_id,
        pod_id=claim.pod_id,
    )
