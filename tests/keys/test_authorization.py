"""The authorization tables, tested exhaustively over gRPC against the real services:
every RPC of every service (enumerated from the service descriptors, so an RPC
without a row here fails) × every kind of caller, each answer compared with the
matrix below; then one regression test per hole the attack on the suite found
(issue 11, finding 1)."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf import field_mask_pb2
from google.protobuf.message import Message
from mailplane.domains.v1 import domains_pb2, domains_pb2_grpc
from mailplane.inboxes.v1 import inboxes_pb2, inboxes_pb2_grpc
from mailplane.mailboxes.v1 import mailboxes_pb2, mailboxes_pb2_grpc
from mailplane.messages.v1 import (
    addresses_pb2,
    addresses_pb2_grpc,
    events_pb2,
    events_pb2_grpc,
    messages_pb2,
    messages_pb2_grpc,
    sending_pb2,
    sending_pb2_grpc,
)
from mailplane.pods.v1 import pods_pb2, pods_pb2_grpc
from ulid import ULID

from services.chassis.config import Settings
from services.domains.api import DOMAIN_ACCESS
from services.inboxes.api import INBOX_ACCESS
from services.mailboxes.api import MAILBOX_ACCESS
from services.messages.api import MESSAGE_ACCESS
from services.messages.directory_api import ADDRESS_ACCESS
from services.messages.events_api import EVENT_ACCESS, WEBHOOK_ACCESS
from services.messages.ingest import Ingest
from services.messages.outbox_api import SENDING_ACCESS
from services.pods.api import ACCOUNT_ACCESS, API_KEY_ACCESS, POD_ACCESS
from tests.conftest import Tenant, Zone
from tests.gateway.test_rest import assert_error
from tests.inboxes.test_inboxes import new_pod, verified_domain
from tests.keys.test_scoped_keys import bearer, inbox, mailbox, new_key
from tests.messages.test_inbound import drain, message, send

Metadata = tuple[tuple[str, str], ...]

#: Each service's descriptor, its address setting, and its authorization table.
SERVICES = {
    "mailplane.pods.v1.PodService": (pods_pb2, "pods_addr", POD_ACCESS),
    "mailplane.pods.v1.AccountService": (pods_pb2, "pods_addr", ACCOUNT_ACCESS),
    "mailplane.pods.v1.ApiKeyService": (pods_pb2, "pods_addr", API_KEY_ACCESS),
    "mailplane.inboxes.v1.InboxService": (inboxes_pb2, "inboxes_addr", INBOX_ACCESS),
    "mailplane.mailboxes.v1.MailboxService": (mailboxes_pb2, "mailboxes_addr", MAILBOX_ACCESS),
    "mailplane.domains.v1.DomainService": (domains_pb2, "domains_addr", DOMAIN_ACCESS),
    "mailplane.messages.v1.MessageService": (messages_pb2, "messages_addr", MESSAGE_ACCESS),
    "mailplane.messages.v1.AddressService": (addresses_pb2, "messages_addr", ADDRESS_ACCESS),
    "mailplane.messages.v1.EventService": (events_pb2, "messages_addr", EVENT_ACCESS),
    "mailplane.messages.v1.WebhookService": (events_pb2, "messages_addr", WEBHOOK_ACCESS),
    "mailplane.messages.v1.SendingService": (sending_pb2, "messages_addr", SENDING_ACCESS),
}

#: The callers, in the matrix's column order. Every request names resources of
#: account A's pod P. ``admin``/``write``/``read``: account-wide keys of A with
#: read+write+admin, read+write, read. ``pod``: a key of pod P; ``podx``: a key of
#: A's other pod Q; ``inbox``: a key of inbox I (in P); ``mailbox``: a key of
#: mailbox M (in P) — the scoped keys have every permission, so only their scope
#: decides. ``operator``: the service credential. ``stranger``: an admin key of
#: another account. ``none``: no credential (always UNAUTHENTICATED).
CALLERS = ("admin", "write", "read", "pod", "podx", "inbox", "mailbox", "operator", "stranger")

#: What each caller gets: ``ok`` (OK, and a list shows the target), ``hid`` (NOT_FOUND,
#: or a list without the target: out of reach), ``deny`` (PERMISSION_DENIED).
_OPERATOR = "deny deny deny deny deny deny deny ok   deny"
_KEY_ADMINS = "ok   deny deny deny deny deny deny deny ok"
_COUNT = "ok   ok   ok   deny deny deny deny ok   hid"
_CREATE_IN_POD = "ok   ok   deny ok   hid  deny deny deny hid"
_READ_IN_POD = "ok   ok   ok   ok   hid  hid  hid  deny hid"
_INBOX_READ = "ok   ok   ok   ok   hid  ok   hid  deny hid"
_INBOX_WRITE = "ok   ok   deny ok   hid  ok   hid  deny hid"
_MAILBOX_READ = "ok   ok   ok   ok   hid  hid  ok   deny hid"
#: A resource of the account as a whole (an account key's webhook).
_ACCOUNT_READ = "ok   ok   ok   hid  hid  hid  hid  deny hid"
_ACCOUNT_WRITE = "ok   ok   deny hid  hid  hid  hid  deny hid"
_MAILBOX_WRITE = "ok   ok   deny ok   hid  hid  ok   deny hid"
EXPECTED: dict[str, str] = {
    # caller:                        admin write read pod  podx inbox mbox op  stranger
    "PodService/CreatePod": "ok   ok   deny deny deny deny deny deny ok",
    "PodService/GetPod": _READ_IN_POD,
    "PodService/ListPods": _READ_IN_POD,
    "PodService/UpdatePod": "ok   ok   deny deny deny deny deny deny hid",
    "PodService/DeletePod": "ok   ok   deny deny deny deny deny deny hid",
    "AccountService/CreateAccount": _OPERATOR,
    "AccountService/GetAccount": "ok   ok   ok   ok   ok   deny deny ok   hid",
    "AccountService/SetAccountPlan": _OPERATOR,
    "AccountService/SetAccountState": _OPERATOR,
    "ApiKeyService/CreateApiKey": _KEY_ADMINS,
    "ApiKeyService/ListApiKeys": _KEY_ADMINS,
    "ApiKeyService/DeleteApiKey": "ok   deny deny deny deny deny deny deny hid",
    "ApiKeyService/AuthenticateApiKey": _OPERATOR,
    "ApiKeyService/RevokeScopedApiKeys": _OPERATOR,
    "InboxService/CreateInbox": _CREATE_IN_POD,
    "InboxService/GetInbox": _INBOX_READ,
    "InboxService/ListInboxes": _READ_IN_POD,
    "InboxService/UpdateInbox": _INBOX_WRITE,
    "InboxService/DeleteInbox": _CREATE_IN_POD,
    "InboxService/RotateInboxCredentials": _CREATE_IN_POD,
    "InboxService/CountInboxes": _COUNT,
    "InboxService/VerifyInboxCredentials": _OPERATOR,
    "MailboxService/CreateMailbox": _CREATE_IN_POD,
    "MailboxService/GetMailbox": _MAILBOX_READ,
    "MailboxService/ListMailboxes": _READ_IN_POD,
    "MailboxService/UpdateMailbox": _MAILBOX_WRITE,
    "MailboxService/DeleteMailbox": "ok   deny deny ok   hid  hid  hid  deny hid",
    "MailboxService/CloneMailbox": "ok   deny deny ok   hid  deny deny deny hid",
    "MailboxService/CreateFolder": _MAILBOX_WRITE,
    "MailboxService/ListFolders": _MAILBOX_READ,
    "MailboxService/DeleteFolder": _MAILBOX_WRITE,
    "MailboxService/CreateRule": _MAILBOX_WRITE,
    "MailboxService/ListRules": _MAILBOX_READ,
    "MailboxService/UpdateRule": _MAILBOX_WRITE,
    "MailboxService/DeleteRule": _MAILBOX_WRITE,
    "MailboxService/CountMailboxes": _COUNT,
    "MailboxService/SetDomainReception": _OPERATOR,
    "DomainService/CreateDomain": _CREATE_IN_POD,
    "DomainService/GetDomain": "ok   ok   ok   ok   hid  hid  hid  ok   hid",
    "DomainService/ListDomains": _READ_IN_POD,
    "DomainService/UpdateDomain": "ok   ok   deny deny deny deny deny deny hid",
    "DomainService/DeleteDomain": _CREATE_IN_POD,
    "DomainService/VerifyDomain": _CREATE_IN_POD,
    "DomainService/CountDomains": _COUNT,
    "DomainService/SignDkim": _OPERATOR,
    "InboxService/GetInboxAddresses": _OPERATOR,
    "MailboxService/GetMailboxAddresses": _OPERATOR,
    "MessageService/ListMessages": _INBOX_READ,
    "MessageService/GetMessage": _INBOX_READ,
    "MessageService/GetRawMessage": _INBOX_READ,
    "MessageService/GetAttachment": _INBOX_READ,
    "MessageService/UpdateMessage": _INBOX_WRITE,
    "MessageService/DeleteMessage": _INBOX_WRITE,
    "MessageService/ListThreads": _INBOX_READ,
    "MessageService/GetThread": _INBOX_READ,
    "MessageService/UpdateThread": _INBOX_WRITE,
    "MessageService/DeleteThread": _INBOX_WRITE,
    "MessageService/RestoreThread": _INBOX_WRITE,
    "AddressService/ClaimAddress": _OPERATOR,
    "AddressService/ConfirmAddress": _OPERATOR,
    "AddressService/ReleaseAddress": _OPERATOR,
    "AddressService/SetDomainStatus": _OPERATOR,
    "AddressService/ForgetDomain": _OPERATOR,
    "AddressService/SetMailboxPolicy": _OPERATOR,
    "EventService/ListEvents": _INBOX_READ,
    "WebhookService/CreateWebhook": "ok   ok   deny ok   ok   ok   ok   deny ok",
    "WebhookService/GetWebhook": _ACCOUNT_READ,
    "WebhookService/ListWebhooks": _ACCOUNT_READ,
    "WebhookService/UpdateWebhook": _ACCOUNT_WRITE,
    "WebhookService/DeleteWebhook": _ACCOUNT_WRITE,
    "WebhookService/RotateWebhookSecret": _ACCOUNT_WRITE,
    "WebhookService/ListWebhookDeliveries": _ACCOUNT_READ,
    "WebhookService/TestWebhook": _ACCOUNT_WRITE,
    "SendingService/SendMessage": _INBOX_WRITE,
    "SendingService/ReplyToMessage": _INBOX_WRITE,
    "SendingService/ForwardMessage": _INBOX_WRITE,
    "SendingService/CreateDraft": _INBOX_WRITE,
    "SendingService/GetDraft": _INBOX_READ,
    "SendingService/ListDrafts": _INBOX_READ,
    "SendingService/UpdateDraft": _INBOX_WRITE,
    "SendingService/DeleteDraft": _INBOX_WRITE,
    "SendingService/SendDraft": _INBOX_WRITE,
    # The suppression list is the account's: account-wide keys only.
    "SendingService/ListSuppressions": "ok   ok   ok   deny deny deny deny deny hid",
    "SendingService/CreateSuppression": "ok   ok   deny deny deny deny deny deny ok",
    "SendingService/DeleteSuppression": "ok   ok   deny deny deny deny deny deny hid",
    "SendingService/GetSendingStats": _INBOX_READ,
}


def _mask(*paths: str) -> field_mask_pb2.FieldMask:
    return field_mask_pb2.FieldMask(paths=list(paths))


def _name() -> str:
    return uuid.uuid4().hex[:10]


@dataclass
class World:
    """Account A with pod P (inbox I, mailbox M with a rule, domain D scoped to P),
    its other pod Q, and every caller's metadata."""

    settings: Settings
    channels: dict[str, grpc.aio.Channel]
    account_id: str
    admin_secret: str
    pod: str
    inbox: str
    inbox_email: str
    inbox_password: str
    mailbox: str
    rule: str
    domain: str
    callers: dict[str, Metadata]
    edge: tuple[str, int] = ("", 0)
    ingest: Ingest | None = None
    message: str = ""
    thread: str = ""
    attachment: str = ""
    event: str = ""
    webhook: str = ""
    draft: str = ""
    suppressed: str = ""

    async def fresh_draft(self) -> str:
        stub = self.stub("mailplane.messages.v1.SendingService")
        made = await stub.CreateDraft(
            sending_pb2.CreateDraftRequest(
                inbox_id=self.inbox, draft=sending_pb2.Draft(to=["ada@example.com"], text="hi")
            ),
            metadata=self.admin,
        )
        return str(made.id)

    async def fresh_suppression(self) -> str:
        stub = self.stub("mailplane.messages.v1.SendingService")
        made = await stub.CreateSuppression(
            sending_pb2.CreateSuppressionRequest(
                suppression=sending_pb2.Suppression(address=f"{_name()}@example.com")
            ),
            metadata=self.admin,
        )
        return str(made.address)

    async def fresh_webhook(self) -> str:
        stub = self.stub("mailplane.messages.v1.WebhookService")
        hook = events_pb2.Webhook(url="http://127.0.0.1:9/hooks", event_types=["message.received"])
        made = await stub.CreateWebhook(
            events_pb2.CreateWebhookRequest(webhook=hook), metadata=self.admin
        )
        return str(made.id)

    @property
    def admin(self) -> Metadata:
        return self.callers["admin"]

    async def fresh_message(self) -> messages_pb2.Message:
        """A message with an attachment received by inbox I over real SMTP."""
        assert self.ingest is not None
        mail = message(self.inbox_email, subject=_name())
        mail.add_attachment(b"%PDF-1.4", maintype="application", subtype="pdf", filename="a.pdf")
        await send(self.edge, mail, [self.inbox_email])
        await drain(self.ingest)
        stub = self.stub("mailplane.messages.v1.MessageService")
        page = await stub.ListMessages(
            messages_pb2.ListMessagesRequest(inbox_id=self.inbox, page_size=1), metadata=self.admin
        )
        got: messages_pb2.Message = page.messages[0]
        assert got.subject == mail["Subject"]
        return got

    def stub(self, service: str) -> Any:
        module, address, _ = SERVICES[service]
        short = service.rsplit(".", 1)[1]
        grpc_module = {
            pods_pb2: pods_pb2_grpc,
            inboxes_pb2: inboxes_pb2_grpc,
            mailboxes_pb2: mailboxes_pb2_grpc,
            domains_pb2: domains_pb2_grpc,
            messages_pb2: messages_pb2_grpc,
            addresses_pb2: addresses_pb2_grpc,
            events_pb2: events_pb2_grpc,
            sending_pb2: sending_pb2_grpc,
        }[module]
        return getattr(grpc_module, f"{short}Stub")(self.channels[address])

    async def fresh_pod(self) -> str:
        pods = self.stub("mailplane.pods.v1.PodService")
        pod = await pods.CreatePod(pods_pb2.CreatePodRequest(), metadata=self.admin)
        return str(pod.id)

    async def fresh_inbox(self) -> inboxes_pb2.CreateInboxResponse:
        stub = self.stub("mailplane.inboxes.v1.InboxService")
        request = inboxes_pb2.CreateInboxRequest(
            inbox=inboxes_pb2.Inbox(username=f"u-{_name()}", pod_id=self.pod)
        )
        return await stub.CreateInbox(request, metadata=self.admin)

    async def fresh_mailbox(self) -> str:
        stub = self.stub("mailplane.mailboxes.v1.MailboxService")
        request = mailboxes_pb2.CreateMailboxRequest(
            mailbox=mailboxes_pb2.Mailbox(address=f"m-{_name()}@mailplane.test", pod_id=self.pod)
        )
        return str((await stub.CreateMailbox(request, metadata=self.admin)).id)

    async def fresh_domain(self) -> str:
        stub = self.stub("mailplane.domains.v1.DomainService")
        request = domains_pb2.CreateDomainRequest(
            domain=domains_pb2.Domain(name=f"d-{_name()}.example", pod_id=self.pod)
        )
        return str((await stub.CreateDomain(request, metadata=self.admin)).id)

    async def fresh_folder(self) -> str:
        stub = self.stub("mailplane.mailboxes.v1.MailboxService")
        request = mailboxes_pb2.CreateFolderRequest(
            mailbox_id=self.mailbox, folder=mailboxes_pb2.Folder(name=f"f-{_name()}")
        )
        return str((await stub.CreateFolder(request, metadata=self.admin)).id)

    async def fresh_rule(self) -> str:
        stub = self.stub("mailplane.mailboxes.v1.MailboxService")
        return str((await stub.CreateRule(rule_request(self.mailbox), metadata=self.admin)).id)

    async def fresh_key(self, scope: pods_pb2.KeyScope | None = None) -> tuple[str, str]:
        """A new key of A (account-wide unless ``scope``) with every permission;
        returns its ID and secret."""
        stub = self.stub("mailplane.pods.v1.ApiKeyService")
        key = pods_pb2.ApiKey(name=f"k-{_name()}", permissions=["read", "write", "admin"])
        if scope is not None:
            key.scope.CopyFrom(scope)
        made = await stub.CreateApiKey(
            pods_pb2.CreateApiKeyRequest(api_key=key), metadata=self.admin
        )
        return str(made.api_key.id), str(made.secret)


def rule_request(mailbox_id: str) -> mailboxes_pb2.CreateRuleRequest:
    return mailboxes_pb2.CreateRuleRequest(
        mailbox_id=mailbox_id,
        rule=mailboxes_pb2.Rule(
            name=f"r-{_name()}",
            enabled=True,
            priority=1,
            action=mailboxes_pb2.RuleAction(type="archive"),
        ),
    )


def _metadata(secret: str) -> Metadata:
    return (("authorization", f"Bearer {secret}"),)


async def build_world(
    settings: Settings,
    channels: dict[str, grpc.aio.Channel],
    make_tenant: Callable[..., Awaitable[Tenant]],
    operator_metadata: Metadata,
    edge: tuple[str, int],
    ingest: Ingest,
) -> World:
    owner = await make_tenant("Owner", pods_pb2.PLAN_ENTERPRISE)
    stranger = await make_tenant("Stranger", pods_pb2.PLAN_ENTERPRISE)
    world = World(settings, channels, owner.account_id, owner.key, "", "", "", "", "", "", "", {})
    world.callers["admin"] = owner.metadata
    world.pod = await world.fresh_pod()
    made = await world.fresh_inbox()
    world.inbox, world.inbox_email = made.inbox.id, made.inbox.email
    world.inbox_password = made.credentials.imap.password
    world.mailbox = await world.fresh_mailbox()
    world.rule = await world.fresh_rule()
    world.domain = await world.fresh_domain()
    other_pod = await world.fresh_pod()
    keys = world.stub("mailplane.pods.v1.ApiKeyService")
    for caller, permissions in (("write", ["read", "write"]), ("read", ["read"])):
        made_key = await keys.CreateApiKey(
            pods_pb2.CreateApiKeyRequest(
                api_key=pods_pb2.ApiKey(name=caller, permissions=permissions)
            ),
            metadata=world.admin,
        )
        world.callers[caller] = _metadata(made_key.secret)
    for caller, scope in (
        ("pod", pods_pb2.KeyScope(type=pods_pb2.SCOPE_TYPE_POD, ids=[world.pod])),
        ("podx", pods_pb2.KeyScope(type=pods_pb2.SCOPE_TYPE_POD, ids=[other_pod])),
        ("inbox", pods_pb2.KeyScope(type=pods_pb2.SCOPE_TYPE_INBOX, ids=[world.inbox])),
        ("mailbox", pods_pb2.KeyScope(type=pods_pb2.SCOPE_TYPE_MAILBOX, ids=[world.mailbox])),
    ):
        world.callers[caller] = _metadata((await world.fresh_key(scope))[1])
    world.callers["operator"] = operator_metadata
    world.callers["stranger"] = stranger.metadata
    world.callers["none"] = ()
    world.edge, world.ingest = edge, ingest
    received = await world.fresh_message()
    world.message, world.thread = received.id, received.thread_id
    world.attachment = received.attachments[0].id
    events = await world.stub("mailplane.messages.v1.EventService").ListEvents(
        events_pb2.ListEventsRequest(inbox_id=world.inbox), metadata=world.admin
    )
    world.event = events.events[-1].id
    world.webhook = await world.fresh_webhook()
    world.draft = await world.fresh_draft()
    world.suppressed = await world.fresh_suppression()
    return world


Request = Callable[[World], Awaitable[Message]]


async def _fixed(message: Message) -> Message:
    return message


def _requests() -> dict[str, Request]:
    """A valid request of every RPC, about account A's pod P; destructive RPCs get
    a fresh target each call."""
    p, i, m, d = pods_pb2, inboxes_pb2, mailboxes_pb2, domains_pb2
    ms, a, ev, s = messages_pb2, addresses_pb2, events_pb2, sending_pb2
    return {
        "SendingService/SendMessage": lambda w: _fixed(
            s.SendMessageRequest(
                inbox_id=w.inbox, to=["ada@example.com"], text="hi", idempotency_key=_name()
            )
        ),
        "SendingService/ReplyToMessage": lambda w: _fixed(
            s.ReplyToMessageRequest(message_id=w.message, text="ok", idempotency_key=_name())
        ),
        "SendingService/ForwardMessage": lambda w: _fixed(
            s.ForwardMessageRequest(
                message_id=w.message, to=["bob@example.com"], idempotency_key=_name()
            )
        ),
        "SendingService/CreateDraft": lambda w: _fixed(
            s.CreateDraftRequest(inbox_id=w.inbox, draft=s.Draft(subject=_name()))
        ),
        "SendingService/GetDraft": lambda w: _fixed(s.GetDraftRequest(draft_id=w.draft)),
        "SendingService/ListDrafts": lambda w: _fixed(
            s.ListDraftsRequest(inbox_id=w.inbox, page_size=100)
        ),
        "SendingService/UpdateDraft": lambda w: _fixed(
            s.UpdateDraftRequest(
                draft_id=w.draft, draft=s.Draft(subject=_name()), update_mask=_mask("subject")
            )
        ),
        "SendingService/DeleteDraft": _delete_draft,
        "SendingService/SendDraft": _send_draft,
        "SendingService/ListSuppressions": lambda w: _fixed(
            s.ListSuppressionsRequest(page_size=100)
        ),
        "SendingService/CreateSuppression": lambda w: _fixed(
            s.CreateSuppressionRequest(suppression=s.Suppression(address=f"{_name()}@example.com"))
        ),
        "SendingService/DeleteSuppression": _delete_suppression,
        "SendingService/GetSendingStats": lambda w: _fixed(
            s.GetSendingStatsRequest(inbox_id=w.inbox, period="7d")
        ),
        "InboxService/GetInboxAddresses": lambda w: _fixed(
            i.GetInboxAddressesRequest(inbox_ids=[w.inbox])
        ),
        "MailboxService/GetMailboxAddresses": lambda w: _fixed(
            m.GetMailboxAddressesRequest(mailbox_ids=[w.mailbox])
        ),
        "MessageService/ListMessages": lambda w: _fixed(
            ms.ListMessagesRequest(inbox_id=w.inbox, page_size=100)
        ),
        "MessageService/GetMessage": lambda w: _fixed(ms.GetMessageRequest(message_id=w.message)),
        "MessageService/GetRawMessage": lambda w: _fixed(
            ms.GetRawMessageRequest(message_id=w.message)
        ),
        "MessageService/GetAttachment": lambda w: _fixed(
            ms.GetAttachmentRequest(message_id=w.message, attachment_id=w.attachment)
        ),
        "MessageService/UpdateMessage": lambda w: _fixed(
            ms.UpdateMessageRequest(message_id=w.message, add_labels=["seen-by-matrix"])
        ),
        "MessageService/DeleteMessage": _delete_message,
        "MessageService/ListThreads": lambda w: _fixed(
            ms.ListThreadsRequest(inbox_id=w.inbox, page_size=100)
        ),
        "MessageService/GetThread": lambda w: _fixed(ms.GetThreadRequest(thread_id=w.thread)),
        "MessageService/UpdateThread": lambda w: _fixed(
            ms.UpdateThreadRequest(thread_id=w.thread, add_labels=["seen-by-matrix"])
        ),
        "MessageService/DeleteThread": _delete_thread,
        "MessageService/RestoreThread": lambda w: _fixed(
            ms.RestoreThreadRequest(thread_id=w.thread)
        ),
        "EventService/ListEvents": lambda w: _fixed(ev.ListEventsRequest(inbox_id=w.inbox)),
        "WebhookService/CreateWebhook": lambda w: _fixed(
            ev.CreateWebhookRequest(
                webhook=ev.Webhook(url="http://127.0.0.1:9/x", event_types=["message.received"])
            )
        ),
        "WebhookService/GetWebhook": lambda w: _fixed(ev.GetWebhookRequest(webhook_id=w.webhook)),
        "WebhookService/ListWebhooks": lambda w: _fixed(ev.ListWebhooksRequest(page_size=100)),
        "WebhookService/UpdateWebhook": lambda w: _fixed(
            ev.UpdateWebhookRequest(
                webhook_id=w.webhook,
                webhook=ev.Webhook(description=_name()),
                update_mask=_mask("description"),
            )
        ),
        "WebhookService/DeleteWebhook": _delete_webhook,
        "WebhookService/RotateWebhookSecret": lambda w: _fixed(
            ev.RotateWebhookSecretRequest(webhook_id=w.webhook)
        ),
        "WebhookService/ListWebhookDeliveries": lambda w: _fixed(
            ev.ListWebhookDeliveriesRequest(webhook_id=w.webhook)
        ),
        "WebhookService/TestWebhook": lambda w: _fixed(ev.TestWebhookRequest(webhook_id=w.webhook)),
        "AddressService/ClaimAddress": lambda w: _fixed(a.ClaimAddressRequest(**_route_fields(w))),
        "AddressService/ConfirmAddress": lambda w: _fixed(
            a.ConfirmAddressRequest(**_route_fields(w))
        ),
        "AddressService/ReleaseAddress": lambda w: _fixed(
            a.ReleaseAddressRequest(owner_id=f"inb_{_ulid()}")
        ),
        "AddressService/SetDomainStatus": lambda w: _fixed(
            a.SetDomainStatusRequest(name=f"{_name()}.example", account_id=w.account_id)
        ),
        "AddressService/ForgetDomain": lambda w: _fixed(
            a.ForgetDomainRequest(name=f"{_name()}.example", account_id=w.account_id)
        ),
        "AddressService/SetMailboxPolicy": lambda w: _fixed(
            a.SetMailboxPolicyRequest(
                mailbox_id=f"mbx_{_ulid()}",
                account_id=w.account_id,
                pod_id=w.pod,
                version=1,
                status="active",
                address=f"p-{_name()}@mailplane.test",
            )
        ),
        "PodService/CreatePod": lambda w: _fixed(p.CreatePodRequest()),
        "PodService/GetPod": lambda w: _fixed(p.GetPodRequest(pod_id=w.pod)),
        "PodService/ListPods": lambda w: _fixed(p.ListPodsRequest(page_size=100)),
        "PodService/UpdatePod": lambda w: _fixed(
            p.UpdatePodRequest(pod_id=w.pod, pod=p.Pod(name=_name()), update_mask=_mask("name"))
        ),
        "PodService/DeletePod": _delete_pod,
        "AccountService/CreateAccount": lambda w: _fixed(p.CreateAccountRequest(name="New")),
        "AccountService/GetAccount": lambda w: _fixed(p.GetAccountRequest(account_id=w.account_id)),
        "AccountService/SetAccountPlan": lambda w: _fixed(
            p.SetAccountPlanRequest(account_id=w.account_id, plan=p.PLAN_ENTERPRISE)
        ),
        "AccountService/SetAccountState": lambda w: _fixed(
            p.SetAccountStateRequest(account_id=w.account_id, state=p.ACCOUNT_STATE_ACTIVE)
        ),
        "ApiKeyService/CreateApiKey": lambda w: _fixed(
            p.CreateApiKeyRequest(api_key=p.ApiKey(name=_name()))
        ),
        "ApiKeyService/ListApiKeys": lambda w: _fixed(p.ListApiKeysRequest(page_size=100)),
        "ApiKeyService/DeleteApiKey": _delete_key,
        "ApiKeyService/AuthenticateApiKey": lambda w: _fixed(
            p.AuthenticateApiKeyRequest(secret=w.admin_secret)
        ),
        "ApiKeyService/RevokeScopedApiKeys": _revoke_keys,
        "InboxService/CreateInbox": lambda w: _fixed(
            i.CreateInboxRequest(inbox=i.Inbox(username=f"u-{_name()}", pod_id=w.pod))
        ),
        "InboxService/GetInbox": lambda w: _fixed(i.GetInboxRequest(inbox_id=w.inbox)),
        "InboxService/ListInboxes": lambda w: _fixed(i.ListInboxesRequest(pod_id=w.pod)),
        "InboxService/UpdateInbox": lambda w: _fixed(
            i.UpdateInboxRequest(
                inbox_id=w.inbox,
                inbox=i.Inbox(display_name=_name()),
                update_mask=_mask("display_name"),
            )
        ),
        "InboxService/DeleteInbox": _delete_inbox,
        "InboxService/RotateInboxCredentials": _rotate,
        "InboxService/CountInboxes": lambda w: _fixed(
            i.CountInboxesRequest(pod_id=w.pod, account_id=w.account_id)
        ),
        "InboxService/VerifyInboxCredentials": lambda w: _fixed(
            i.VerifyInboxCredentialsRequest(username=w.inbox_email, password=w.inbox_password)
        ),
        "MailboxService/CreateMailbox": lambda w: _fixed(
            m.CreateMailboxRequest(
                mailbox=m.Mailbox(address=f"m-{_name()}@mailplane.test", pod_id=w.pod)
            )
        ),
        "MailboxService/GetMailbox": lambda w: _fixed(m.GetMailboxRequest(mailbox_id=w.mailbox)),
        "MailboxService/ListMailboxes": lambda w: _fixed(m.ListMailboxesRequest(pod_id=w.pod)),
        "MailboxService/UpdateMailbox": lambda w: _fixed(
            m.UpdateMailboxRequest(
                mailbox_id=w.mailbox,
                mailbox=m.Mailbox(display_name=_name()),
                update_mask=_mask("display_name"),
            )
        ),
        "MailboxService/DeleteMailbox": _delete_mailbox,
        "MailboxService/CloneMailbox": lambda w: _fixed(
            m.CloneMailboxRequest(mailbox_id=w.mailbox, address=f"c-{_name()}@mailplane.test")
        ),
        "MailboxService/CreateFolder": lambda w: _fixed(
            m.CreateFolderRequest(mailbox_id=w.mailbox, folder=m.Folder(name=_name()))
        ),
        "MailboxService/ListFolders": lambda w: _fixed(m.ListFoldersRequest(mailbox_id=w.mailbox)),
        "MailboxService/DeleteFolder": _delete_folder,
        "MailboxService/CreateRule": lambda w: _fixed(rule_request(w.mailbox)),
        "MailboxService/ListRules": lambda w: _fixed(m.ListRulesRequest(mailbox_id=w.mailbox)),
        "MailboxService/UpdateRule": lambda w: _fixed(
            m.UpdateRuleRequest(
                mailbox_id=w.mailbox,
                rule_id=w.rule,
                rule=m.Rule(name=_name()),
                update_mask=_mask("name"),
            )
        ),
        "MailboxService/DeleteRule": _delete_rule,
        "MailboxService/CountMailboxes": lambda w: _fixed(
            m.CountMailboxesRequest(pod_id=w.pod, account_id=w.account_id)
        ),
        "MailboxService/SetDomainReception": lambda w: _fixed(
            m.SetDomainReceptionRequest(
                account_id=w.account_id, domain=f"none-{_name()}.example", can_receive=True
            )
        ),
        "DomainService/CreateDomain": lambda w: _fixed(
            d.CreateDomainRequest(domain=d.Domain(name=f"d-{_name()}.example", pod_id=w.pod))
        ),
        "DomainService/GetDomain": lambda w: _fixed(
            d.GetDomainRequest(domain_id=w.domain, account_id=w.account_id)
        ),
        "DomainService/ListDomains": lambda w: _fixed(d.ListDomainsRequest(pod_id=w.pod)),
        "DomainService/UpdateDomain": lambda w: _fixed(
            d.UpdateDomainRequest(
                domain_id=w.domain, domain=d.Domain(pod_id=w.pod), update_mask=_mask("pod_id")
            )
        ),
        "DomainService/DeleteDomain": _delete_domain,
        "DomainService/VerifyDomain": lambda w: _fixed(d.VerifyDomainRequest(domain_id=w.domain)),
        "DomainService/CountDomains": lambda w: _fixed(
            d.CountDomainsRequest(pod_id=w.pod, account_id=w.account_id)
        ),
        "DomainService/SignDkim": lambda w: _fixed(
            d.SignDkimRequest(
                account_id=w.account_id, domain=w.settings.shared_domain, digest=bytes(32)
            )
        ),
    }


async def _delete_pod(w: World) -> Message:
    return pods_pb2.DeletePodRequest(pod_id=await w.fresh_pod())


async def _delete_key(w: World) -> Message:
    return pods_pb2.DeleteApiKeyRequest(api_key_id=(await w.fresh_key())[0])


async def _revoke_keys(w: World) -> Message:
    return pods_pb2.RevokeScopedApiKeysRequest(
        scope_type=pods_pb2.SCOPE_TYPE_INBOX,
        resource_id=(await w.fresh_inbox()).inbox.id,
        account_id=w.account_id,
    )


def _ulid() -> str:
    return str(ULID())


def _route_fields(w: World) -> dict[str, Any]:
    return {
        "address": f"r-{_name()}@mailplane.test",
        "kind": addresses_pb2.ROUTE_KIND_INBOX,
        "owner_id": f"inb_{_ulid()}",
        "account_id": w.account_id,
        "pod_id": w.pod,
    }


async def _delete_draft(w: World) -> Message:
    return sending_pb2.DeleteDraftRequest(draft_id=await w.fresh_draft())


async def _send_draft(w: World) -> Message:
    return sending_pb2.SendDraftRequest(draft_id=await w.fresh_draft())


async def _delete_suppression(w: World) -> Message:
    return sending_pb2.DeleteSuppressionRequest(address=await w.fresh_suppression())


async def _delete_webhook(w: World) -> Message:
    return events_pb2.DeleteWebhookRequest(webhook_id=await w.fresh_webhook())


async def _delete_message(w: World) -> Message:
    return messages_pb2.DeleteMessageRequest(message_id=(await w.fresh_message()).id)


async def _delete_thread(w: World) -> Message:
    return messages_pb2.DeleteThreadRequest(thread_id=(await w.fresh_message()).thread_id)


async def _delete_inbox(w: World) -> Message:
    return inboxes_pb2.DeleteInboxRequest(inbox_id=(await w.fresh_inbox()).inbox.id)


async def _rotate(w: World) -> Message:
    return inboxes_pb2.RotateInboxCredentialsRequest(inbox_id=(await w.fresh_inbox()).inbox.id)


async def _delete_mailbox(w: World) -> Message:
    return mailboxes_pb2.DeleteMailboxRequest(mailbox_id=await w.fresh_mailbox())


async def _delete_folder(w: World) -> Message:
    return mailboxes_pb2.DeleteFolderRequest(mailbox_id=w.mailbox, folder_id=await w.fresh_folder())


async def _delete_rule(w: World) -> Message:
    return mailboxes_pb2.DeleteRuleRequest(mailbox_id=w.mailbox, rule_id=await w.fresh_rule())


async def _delete_domain(w: World) -> Message:
    return domains_pb2.DeleteDomainRequest(domain_id=await w.fresh_domain())


def _sees(method: str, world: World, response: Message) -> bool:
    """Whether a list answer shows account A's target in pod P."""
    targets = {
        "PodService/ListPods": ("pods", world.pod),
        "InboxService/ListInboxes": ("inboxes", world.inbox),
        "MailboxService/ListMailboxes": ("mailboxes", world.mailbox),
        "DomainService/ListDomains": ("domains", world.domain),
        "MessageService/ListMessages": ("messages", world.message),
        "MessageService/ListThreads": ("threads", world.thread),
        "EventService/ListEvents": ("events", world.event),
        "WebhookService/ListWebhooks": ("webhooks", world.webhook),
        "SendingService/ListDrafts": ("drafts", world.draft),
    }
    if method == "SendingService/ListSuppressions":
        return world.suppressed in {s.address for s in response.suppressions}
    if method not in targets:
        return True
    field, target = targets[method]
    return target in {item.id for item in getattr(response, field)}


async def _outcome(world: World, service: str, method: str, caller: str) -> str:
    key = f"{service.rsplit('.', 1)[1]}/{method}"
    request = await _requests()[key](world)
    try:
        response = await getattr(world.stub(service), method)(
            request, metadata=world.callers[caller], timeout=10
        )
    except grpc.aio.AioRpcError as error:
        return {
            grpc.StatusCode.UNAUTHENTICATED: "unauth",
            grpc.StatusCode.PERMISSION_DENIED: "deny",
            grpc.StatusCode.NOT_FOUND: "hid",
        }.get(error.code(), f"{error.code().name}: {error.details()}")
    return "ok" if _sees(key, world, response) else "hid"


def test_the_matrix_names_every_rpc_of_every_service_and_every_table_row() -> None:
    for service, (module, _, table) in SERVICES.items():
        short = service.rsplit(".", 1)[1]
        methods = set(module.DESCRIPTOR.services_by_name[short].methods_by_name)
        assert set(table) == methods, f"{service}: the authorization table differs from the RPCs"
        assert {k for k in EXPECTED if k.startswith(f"{short}/")} == {
            f"{short}/{m}" for m in methods
        }, f"{service}: the matrix differs from the RPCs"
    assert set(EXPECTED) == set(_requests())


@pytest.mark.parametrize("service", list(SERVICES))
async def test_every_rpc_answers_every_caller_as_the_matrix_says(
    service: str,
    settings: Settings,
    services: Any,
    make_tenant: Callable[..., Awaitable[Tenant]],
    operator_metadata: Metadata,
    edge: tuple[str, int],
    ingest: Ingest,
) -> None:
    addresses = {a for _, a, _ in SERVICES.values()}
    channels = {a: grpc.aio.insecure_channel(getattr(settings, a)) for a in addresses}
    try:
        world = await build_world(settings, channels, make_tenant, operator_metadata, edge, ingest)
        module, _, _ = SERVICES[service]
        short = service.rsplit(".", 1)[1]
        wrong: list[str] = []
        for method in module.DESCRIPTOR.services_by_name[short].methods_by_name:
            wanted = dict(zip(CALLERS, EXPECTED[f"{short}/{method}"].split(), strict=True))
            wanted["none"] = "unauth"
            for caller, expected in wanted.items():
                got = await _outcome(world, service, method, caller)
                if got != expected:
                    wrong.append(f"{short}/{method} as {caller}: wanted {expected}, got {got}")
        assert wrong == []
    finally:
        for channel in channels.values():
            await channel.close()


# Regressions: issue 11, finding 1 ---------------------------------------------------


async def test_a_scoped_key_cannot_revoke_another_inboxs_keys(
    http: httpx.AsyncClient, big_tenant: Tenant, settings: Settings
) -> None:
    mine, theirs = await new_pod(http, big_tenant), await new_pod(http, big_tenant)
    own = (await inbox(http, big_tenant.headers, podId=mine["id"])).json()
    victim = (await inbox(http, big_tenant.headers, podId=theirs["id"])).json()
    victim_key = await new_key(http, big_tenant, inboxId=victim["id"])
    attacker = (await new_key(http, big_tenant, inboxId=own["id"]))["key"]
    async with grpc.aio.insecure_channel(settings.pods_addr) as channel:
        stub = pods_pb2_grpc.ApiKeyServiceStub(channel)
        for account_id in ("", big_tenant.account_id):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.RevokeScopedApiKeys(
                    pods_pb2.RevokeScopedApiKeysRequest(
                        scope_type=pods_pb2.SCOPE_TYPE_INBOX,
                        resource_id=victim["id"],
                        account_id=account_id,
                    ),
                    metadata=_metadata(attacker),
                )
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    still = await http.get(f"/v1/inboxes/{victim['id']}", headers=bearer(victim_key["key"]))
    assert still.status_code == 200
    keys = (await http.get("/v1/api-keys", headers=big_tenant.headers)).json()["apiKeys"]
    assert victim_key["id"] in {k["id"] for k in keys}


async def test_deleting_an_inbox_still_revokes_its_keys_with_the_service_credential(
    http: httpx.AsyncClient, big_tenant: Tenant
) -> None:
    target = (await inbox(http, big_tenant.headers)).json()
    doomed = await new_key(http, big_tenant, inboxId=target["id"])
    pod_key = bearer((await new_key(http, big_tenant, podId=target["podId"]))["key"])
    assert (await http.delete(f"/v1/inboxes/{target['id']}", headers=pod_key)).status_code == 200
    keys = (await http.get("/v1/api-keys", headers=big_tenant.headers)).json()["apiKeys"]
    assert doomed["id"] not in {k["id"] for k in keys}


async def test_a_read_only_pod_key_cannot_count_another_pods_children(
    http: httpx.AsyncClient, big_tenant: Tenant, settings: Settings
) -> None:
    mine, theirs = await new_pod(http, big_tenant), await new_pod(http, big_tenant)
    await inbox(http, big_tenant.headers, podId=theirs["id"])
    key = _metadata(
        (await new_key(http, big_tenant, podId=mine["id"], permissions=["read"]))["key"]
    )
    calls = (
        (
            settings.inboxes_addr,
            lambda c: inboxes_pb2_grpc.InboxServiceStub(c).CountInboxes,
            inboxes_pb2.CountInboxesRequest,
        ),
        (
            settings.mailboxes_addr,
            lambda c: mailboxes_pb2_grpc.MailboxServiceStub(c).CountMailboxes,
            mailboxes_pb2.CountMailboxesRequest,
        ),
        (
            settings.domains_addr,
            lambda c: domains_pb2_grpc.DomainServiceStub(c).CountDomains,
            domains_pb2.CountDomainsRequest,
        ),
    )
    for address, method, request in calls:
        async with grpc.aio.insecure_channel(address) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await method(channel)(request(pod_id=theirs["id"]), metadata=key)
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_a_mailbox_key_cannot_get_another_pods_domain(
    http: httpx.AsyncClient, big_tenant: Tenant, dns_zone: Zone
) -> None:
    mine, theirs = await new_pod(http, big_tenant), await new_pod(http, big_tenant)
    box = (await mailbox(http, big_tenant.headers, podId=mine["id"])).json()
    elsewhere = await verified_domain(http, big_tenant, dns_zone, pod=theirs["id"])
    key = bearer((await new_key(http, big_tenant, mailboxIds=[box["id"]]))["key"])
    for ref in (elsewhere["domain"], elsewhere["id"]):
        assert_error(await http.get(f"/v1/domains/{ref}", headers=key), 404, "domain_not_found")
    assert (await http.get("/v1/domains", headers=key)).json()["domains"] == []


async def test_a_mailbox_key_still_moves_its_mailbox_onto_its_pods_domain(
    http: httpx.AsyncClient, big_tenant: Tenant, dns_zone: Zone
) -> None:
    mine, theirs = await new_pod(http, big_tenant), await new_pod(http, big_tenant)
    ours = await verified_domain(http, big_tenant, dns_zone, pod=mine["id"])
    elsewhere = await verified_domain(http, big_tenant, dns_zone, pod=theirs["id"])
    box = (
        await mailbox(http, big_tenant.headers, podId=mine["id"], address=f"a@{ours['domain']}")
    ).json()
    key = bearer((await new_key(http, big_tenant, mailboxIds=[box["id"]]))["key"])
    moved = await http.patch(
        f"/v1/agent/mailboxes/{box['id']}", json={"address": f"b@{ours['domain']}"}, headers=key
    )
    assert moved.status_code == 200, moved.text
    assert moved.json()["address"] == f"b@{ours['domain']}"
    # Another pod's domain is out of the key's reach: not found, as GetDomain answers.
    assert_error(
        await http.patch(
            f"/v1/agent/mailboxes/{box['id']}",
            json={"address": f"c@{elsewhere['domain']}"},
            headers=key,
        ),
        404,
        "domain_not_found",
    )


@pytest.mark.parametrize("scope", ["inbox", "mailbox"])
async def test_an_inbox_or_mailbox_keys_pod_filter_outside_its_reach_is_not_found(
    scope: str, http: httpx.AsyncClient, big_tenant: Tenant
) -> None:
    mine, theirs = await new_pod(http, big_tenant), await new_pod(http, big_tenant)
    if scope == "inbox":
        own = (await inbox(http, big_tenant.headers, podId=mine["id"])).json()
        key = bearer((await new_key(http, big_tenant, inboxId=own["id"]))["key"])
        path, field = "/v1/inboxes", "inboxes"
    else:
        own = (await mailbox(http, big_tenant.headers, podId=mine["id"])).json()
        key = bearer((await new_key(http, big_tenant, mailboxIds=[own["id"]]))["key"])
        path, field = "/v1/agent/mailboxes", "mailboxes"
    assert [r["id"] for r in (await http.get(path, headers=key)).json()[field]] == [own["id"]]
    for listing in (path, "/v1/inboxes", "/v1/agent/mailboxes", "/v1/domains"):
        assert_error(
            await http.get(listing, params={"podId": theirs["id"]}, headers=key),
            404,
            "pod_not_found",
        )
    # As for a pod key whose filter names another pod.
    pod_key = bearer((await new_key(http, big_tenant, podId=mine["id"]))["key"])
    assert_error(
        await http.get(path, params={"podId": theirs["id"]}, headers=pod_key), 404, "pod_not_found"
    )


async def test_billing_status_needs_an_account_wide_key(
    http: httpx.AsyncClient, big_tenant: Tenant
) -> None:
    pod = await new_pod(http, big_tenant)
    pod_key = bearer((await new_key(http, big_tenant, podId=pod["id"]))["key"])
    assert_error(await http.get("/v1/billing/status", headers=pod_key), 403, "permission_denied")
    reader = bearer((await new_key(http, big_tenant, permissions=["read"]))["key"])
    assert (await http.get("/v1/billing/status", headers=reader)).status_code == 200


@pytest.fixture
async def big_tenant(make_tenant: Callable[..., Awaitable[Tenant]]) -> Tenant:
    return await make_tenant("Enterprise", pods_pb2.PLAN_ENTERPRISE)
