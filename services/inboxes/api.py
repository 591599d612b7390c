"""The inboxes service's servicer: protobuf ↔ models and the caller's identity.

Who may call each method is ``INBOX_ACCESS``, enforced by the chassis
interceptor; which inboxes a key reaches is checked here."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import grpc
from google.protobuf import timestamp_pb2
from mailplane.inboxes.v1 import inboxes_pb2, inboxes_pb2_grpc

from services.chassis import auth
from services.chassis.addresses import domain_key
from services.chassis.errors import invalid_argument
from services.inboxes.credentials import MailServers
from services.inboxes.models import Inbox
from services.inboxes.service import InboxService, inbox_not_found

#: Revokes the keys scoped to a deleted inbox: ``(account_id, inbox_id)``
#: (through the pods service).
RevokeKeys = Callable[[str, str], Awaitable[None]]

#: Who may call each InboxService method: inbox keys read and
#: rename their inbox; creating, deleting and rotating need a pod or account
#: key; counting is internal (the service credential, or an account-wide admin
#: key for billing status); credential checks are the mail front's, with the
#: service credential.
INBOX_ACCESS: dict[str, auth.Access] = {
    "CreateInbox": auth.keys("write", "account", "pod"),
    "GetInbox": auth.keys("read", *auth.ALL_SCOPES),
    "ListInboxes": auth.keys("read", *auth.ALL_SCOPES, pod_filter="pod_id"),
    "UpdateInbox": auth.keys("write", *auth.ALL_SCOPES),
    "DeleteInbox": auth.keys("write", "account", "pod"),
    "RotateInboxCredentials": auth.keys("write", "account", "pod"),
    "CountInboxes": auth.keys("read", "account", operator=True),
    "VerifyInboxCredentials": auth.OPERATOR_ONLY,
    "GetInboxAddresses": auth.OPERATOR_ONLY,
}


def inbox_to_pb(inbox: Inbox) -> inboxes_pb2.Inbox:
    """Converts an inbox model to its message (the model holds no secret)."""
    created, updated = timestamp_pb2.Timestamp(), timestamp_pb2.Timestamp()
    created.FromDatetime(inbox.created_at)
    updated.FromDatetime(inbox.updated_at)
    message = inboxes_pb2.Inbox(
        id=inbox.id,
        pod_id=inbox.pod_id,
        email=inbox.email,
        username=inbox.username,
        domain=inbox.domain,
        account_id=inbox.account_id,
        create_time=created,
        update_time=updated,
    )
    if inbox.display_name is not None:
        message.display_name = inbox.display_name
    return message


def credentials_to_pb(servers: MailServers, email: str, password: str) -> inboxes_pb2.Credentials:
    """The IMAP (TLS) and SMTP (STARTTLS) logins of ``email`` with ``password``."""
    return inboxes_pb2.Credentials(
        imap=inboxes_pb2.ImapCredentials(
            host=servers.imap_host,
            port=servers.imap_port,
            tls=True,
            username=email,
            password=password,
        ),
        smtp=inboxes_pb2.SmtpCredentials(
            host=servers.smtp_host,
            port=servers.smtp_port,
            starttls=True,
            username=email,
            password=password,
        ),
    )


def _check_reach(inbox: Inbox) -> Inbox:
    """``inbox`` if the caller's key reaches it, else ``inbox_not_found``."""
    if not auth.reaches(inbox.pod_id, "inbox", inbox.id):
        raise inbox_not_found(inbox.id)
    return inbox


class InboxServicer(inboxes_pb2_grpc.InboxServiceServicer):
    """``mailplane.inboxes.v1.InboxService`` over ``InboxService``."""

    def __init__(self, service: InboxService, revoke_keys: RevokeKeys):
        self._service = service
        self._revoke_keys = revoke_keys

    async def _reachable(self, account_id: str, inbox_id: str) -> None:
        """Raises ``inbox_not_found`` unless the caller's key reaches the inbox.
        Account keys reach all of their account's (and the service answers not found
        for the rest), so only scoped keys pay this lookup."""
        if auth.current().scope_type != "account":
            _check_reach(await self._service.get(account_id, inbox_id))

    async def CreateInbox(
        self, request: inboxes_pb2.CreateInboxRequest, context: grpc.aio.ServicerContext
    ) -> inboxes_pb2.CreateInboxResponse:
        account_id = auth.acting_account()  # a pod key's pod is enforced by the pods service
        wanted = request.inbox
        created = await self._service.create(
            account_id,
            username=wanted.username or None,
            domain=wanted.domain or None,
            display_name=wanted.display_name if wanted.HasField("display_name") else None,
            pod_ref=wanted.pod_id or None,
            strict=request.strict,
        )
        response = inboxes_pb2.CreateInboxResponse(
            inbox=inbox_to_pb(created.inbox), existed=created.existed
        )
        if created.password is not None:
            response.credentials.CopyFrom(
                credentials_to_pb(self._service.servers, created.inbox.email, created.password)
            )
        return response

    async def GetInbox(
        self, request: inboxes_pb2.GetInboxRequest, context: grpc.aio.ServicerContext
    ) -> inboxes_pb2.Inbox:
        account_id = auth.acting_account()
        return inbox_to_pb(_check_reach(await self._service.get(account_id, request.inbox_id)))

    async def ListInboxes(
        self, request: inboxes_pb2.ListInboxesRequest, context: grpc.aio.ServicerContext
    ) -> inboxes_pb2.ListInboxesResponse:
        principal = auth.current()
        account_id = auth.acting_account()
        if principal.scope_type in ("inbox", "mailbox"):  # only the key's own inbox
            own = [
                inbox
                for inbox_id in principal.scope_ids
                if principal.scope_type == "inbox"
                for inbox in [await self._service.get(account_id, inbox_id)]
                if not request.domain or inbox.domain == domain_key(request.domain)
            ]
            return inboxes_pb2.ListInboxesResponse(inboxes=[inbox_to_pb(i) for i in own])
        inboxes, token = await self._service.list_inboxes(
            account_id,
            request.pod_id or principal.pod_id,
            request.domain or None,
            request.page_size,
            request.page_token,
        )
        return inboxes_pb2.ListInboxesResponse(
            inboxes=[inbox_to_pb(i) for i in inboxes], next_page_token=token
        )

    async def UpdateInbox(
        self, request: inboxes_pb2.UpdateInboxRequest, context: grpc.aio.ServicerContext
    ) -> inboxes_pb2.Inbox:
        account_id = auth.acting_account()
        await self._reachable(account_id, request.inbox_id)
        paths = list(request.update_mask.paths)
        if not paths:  # nothing to change (an empty PATCH): the inbox as it is
            return inbox_to_pb(_check_reach(await self._service.get(account_id, request.inbox_id)))
        if paths != ["display_name"]:
            raise invalid_argument(
                "update_mask", "must be exactly `display_name`: an inbox never changes pod."
            )
        name = request.inbox.display_name if request.inbox.HasField("display_name") else None
        return inbox_to_pb(
            await self._service.update_display_name(account_id, request.inbox_id, name)
        )

    async def DeleteInbox(
        self, request: inboxes_pb2.DeleteInboxRequest, context: grpc.aio.ServicerContext
    ) -> inboxes_pb2.DeleteInboxResponse:
        account_id = auth.acting_account()
        await self._reachable(account_id, request.inbox_id)
        await self._revoke_keys(account_id, request.inbox_id)  # first: a failure leaves the inbox
        inbox_id = await self._service.delete(account_id, request.inbox_id)
        return inboxes_pb2.DeleteInboxResponse(inbox_id=inbox_id)

    async def RotateInboxCredentials(
        self,
        request: inboxes_pb2.RotateInboxCredentialsRequest,
        context: grpc.aio.ServicerContext,
    ) -> inboxes_pb2.RotateInboxCredentialsResponse:
        account_id = auth.acting_account()
        await self._reachable(account_id, request.inbox_id)
        inbox, password = await self._service.rotate_credentials(account_id, request.inbox_id)
        return inboxes_pb2.RotateInboxCredentialsResponse(
            inbox=inbox_to_pb(inbox),
            credentials=credentials_to_pb(self._service.servers, inbox.email, password),
        )

    async def CountInboxes(
        self, request: inboxes_pb2.CountInboxesRequest, context: grpc.aio.ServicerContext
    ) -> inboxes_pb2.CountInboxesResponse:
        account_id = auth.acting_account(request.account_id)
        count = await self._service.count(
            account_id,
            request.pod_id or None,
            request.domain or None,
            request.outside_pod_id or None,
        )
        return inboxes_pb2.CountInboxesResponse(inboxes=count)

    async def VerifyInboxCredentials(
        self,
        request: inboxes_pb2.VerifyInboxCredentialsRequest,
        context: grpc.aio.ServicerContext,
    ) -> inboxes_pb2.VerifyInboxCredentialsResponse:
        inbox_id, account_id, pod_id = await self._service.verify_login(
            request.username, request.password
        )
        return inboxes_pb2.VerifyInboxCredentialsResponse(
            inbox_id=inbox_id, account_id=account_id, pod_id=pod_id
        )

    async def GetInboxAddresses(
        self, request: inboxes_pb2.GetInboxAddressesRequest, context: grpc.aio.ServicerContext
    ) -> inboxes_pb2.GetInboxAddressesResponse:
        held = await self._service.held_addresses(list(request.inbox_ids))
        return inboxes_pb2.GetInboxAddressesResponse(
            addresses=[
                inboxes_pb2.HeldAddress(owner_id=inbox_id, address=email, live=live)
                for inbox_id, email, live in held
            ]
        )
