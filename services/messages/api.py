"""The messages service's servicer: protobuf ↔ models and the caller's reach."""

from __future__ import annotations

from datetime import UTC, datetime

import grpc
from google.protobuf import timestamp_pb2
from mailplane.messages.v1 import messages_pb2, messages_pb2_grpc

from services.chassis import auth
from services.messages.models import AttachmentMeta, Message, Thread
from services.messages.service import MailService, Scope
from services.messages.store import Reach

#: Who may call each MessageService method: any key reads and labels the mail
#: within its reach (its account, pod, inboxes or mailboxes; DESIGN §7.4).
MESSAGE_ACCESS: dict[str, auth.Access] = {
    "ListMessages": auth.keys("read", *auth.ALL_SCOPES, pod_filter="pod_id"),
    "GetMessage": auth.keys("read", *auth.ALL_SCOPES),
    "GetRawMessage": auth.keys("read", *auth.ALL_SCOPES),
    "GetAttachment": auth.keys("read", *auth.ALL_SCOPES),
    "UpdateMessage": auth.keys("write", *auth.ALL_SCOPES),
    "DeleteMessage": auth.keys("write", *auth.ALL_SCOPES),
    "ListThreads": auth.keys("read", *auth.ALL_SCOPES, pod_filter="pod_id"),
    "GetThread": auth.keys("read", *auth.ALL_SCOPES),
    "UpdateThread": auth.keys("write", *auth.ALL_SCOPES),
    "DeleteThread": auth.keys("write", *auth.ALL_SCOPES),
    "RestoreThread": auth.keys("write", *auth.ALL_SCOPES),
}

_DIRECTIONS = {
    "inbound": messages_pb2.DIRECTION_INBOUND,
    "outbound": messages_pb2.DIRECTION_OUTBOUND,
}
_STATUSES = {
    name: messages_pb2.MessageStatus.Value(f"MESSAGE_STATUS_{name.upper()}")
    for name in (
        "received",
        "queued",
        "held",
        "scheduled",
        "sending",
        "sent",
        "delivered",
        "deferred",
        "bounced",
        "failed",
    )
}


def reach_of(principal: auth.Principal) -> Reach:
    """What a key reaches (issue 6): all of its account, one pod, or its inboxes
    or mailboxes."""
    if principal.scope_type == "pod":
        return Reach(pod_id=principal.pod_id)
    if principal.scope_type in ("inbox", "mailbox"):
        return Reach(owner_ids=tuple(principal.scope_ids))
    return Reach()


def timestamp_of(value: datetime) -> timestamp_pb2.Timestamp:
    """A ``datetime`` as a protobuf ``Timestamp``."""
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def _when(stamp: timestamp_pb2.Timestamp, present: bool) -> datetime | None:
    return stamp.ToDatetime(tzinfo=UTC) if present else None


def attachment_to_pb(meta: AttachmentMeta) -> messages_pb2.Attachment:
    """Converts attachment metadata to its message."""
    out = messages_pb2.Attachment(
        id=meta.id, content_type=meta.content_type, size=meta.size, disposition=meta.disposition
    )
    if meta.filename is not None:
        out.filename = meta.filename
    if meta.content_id is not None:
        out.content_id = meta.content_id
    return out


def message_to_pb(message: Message) -> messages_pb2.Message:
    """Converts a message model to its protobuf message."""
    out = messages_pb2.Message(
        id=message.id,
        thread_id=message.thread_id,
        pod_id=message.pod_id,
        direction=_DIRECTIONS[message.direction],
        status=_STATUSES.get(message.status, messages_pb2.MESSAGE_STATUS_UNSPECIFIED),
        labels=message.labels,
        to=message.to,
        cc=message.cc,
        bcc=message.bcc,
        reply_to=message.reply_to,
        subject=message.subject,
        preview=message.preview,
        extracted_text=message.extracted_text,
        attachments=[attachment_to_pb(a) for a in message.attachments],
        message_id=message.message_id,
        references=message.references,
        authentication=messages_pb2.Authentication(
            spf=message.authentication.get("spf", "none"),
            dkim=message.authentication.get("dkim", "none"),
            dmarc=message.authentication.get("dmarc", "none"),
        ),
        size=message.size,
        create_time=timestamp_of(message.created_at),
        update_time=timestamp_of(message.updated_at),
    )
    setattr(out, "from", message.sender)  # `from` is a Python keyword
    if message.owner_id.startswith("inb_"):
        out.inbox_id = message.owner_id
    else:
        out.mailbox_id = message.owner_id
    if message.text is not None:
        out.text = message.text
    if message.html is not None:
        out.html = message.html
    if message.in_reply_to is not None:
        out.in_reply_to = message.in_reply_to
    return out


def thread_to_pb(thread: Thread) -> messages_pb2.Thread:
    """Converts a thread model (with its messages, if loaded) to its message."""
    out = messages_pb2.Thread(
        id=thread.id,
        pod_id=thread.pod_id,
        subject=thread.subject,
        labels=thread.labels,
        preview=thread.preview,
        message_count=thread.message_count,
        senders=thread.senders,
        recipients=thread.recipients,
        last_message_time=timestamp_of(thread.last_message_at),
        create_time=timestamp_of(thread.created_at),
        update_time=timestamp_of(thread.updated_at),
        messages=[message_to_pb(m) for m in thread.messages],
    )
    if thread.owner_id.startswith("inb_"):
        out.inbox_id = thread.owner_id
    else:
        out.mailbox_id = thread.owner_id
    if thread.folder_id is not None:
        out.folder_id = thread.folder_id
    return out


def _caller() -> tuple[str, Reach]:
    """The acting account and what the caller's key reaches (the interceptor has
    already checked the method's row of ``MESSAGE_ACCESS``)."""
    return auth.acting_account(), reach_of(auth.current())


class MessageServicer(messages_pb2_grpc.MessageServiceServicer):
    """``mailplane.messages.v1.MessageService`` over ``MailService``."""

    def __init__(self, service: MailService):
        self._service = service

    async def ListMessages(
        self, request: messages_pb2.ListMessagesRequest, context: grpc.aio.ServicerContext
    ) -> messages_pb2.ListMessagesResponse:
        account_id, reach = _caller()
        messages, token = await self._service.list_messages(
            account_id,
            reach,
            Scope(request.inbox_id, request.mailbox_id, request.pod_id),
            list(request.labels),
            _when(request.before, request.HasField("before")),
            _when(request.after, request.HasField("after")),
            request.include_spam,
            request.include_trash,
            request.page_size,
            request.page_token,
        )
        return messages_pb2.ListMessagesResponse(
            messages=[message_to_pb(m) for m in messages], next_page_token=token
        )

    async def GetMessage(
        self, request: messages_pb2.GetMessageRequest, context: grpc.aio.ServicerContext
    ) -> messages_pb2.Message:
        account_id, reach = _caller()
        return message_to_pb(await self._service.get_message(account_id, reach, request.message_id))

    async def GetRawMessage(
        self, request: messages_pb2.GetRawMessageRequest, context: grpc.aio.ServicerContext
    ) -> messages_pb2.GetRawMessageResponse:
        account_id, reach = _caller()
        raw = await self._service.raw(account_id, reach, request.message_id)
        return messages_pb2.GetRawMessageResponse(raw=raw)

    async def GetAttachment(
        self, request: messages_pb2.GetAttachmentRequest, context: grpc.aio.ServicerContext
    ) -> messages_pb2.GetAttachmentResponse:
        account_id, reach = _caller()
        message, content = await self._service.attachment(
            account_id, reach, request.message_id, request.attachment_id
        )
        meta = next(a for a in message.attachments if a.id == request.attachment_id)
        return messages_pb2.GetAttachmentResponse(
            attachment=attachment_to_pb(meta), content=content
        )

    async def UpdateMessage(
        self, request: messages_pb2.UpdateMessageRequest, context: grpc.aio.ServicerContext
    ) -> messages_pb2.Message:
        account_id, reach = _caller()
        message = await self._service.relabel_message(
            account_id, reach, request.message_id, request.add_labels, request.remove_labels
        )
        return message_to_pb(message)

    async def DeleteMessage(
        self, request: messages_pb2.DeleteMessageRequest, context: grpc.aio.ServicerContext
    ) -> messages_pb2.DeleteMessageResponse:
        account_id, reach = _caller()
        deleted = await self._service.delete_message(account_id, reach, request.message_id)
        return messages_pb2.DeleteMessageResponse(message_id=deleted)

    async def ListThreads(
        self, request: messages_pb2.ListThreadsRequest, context: grpc.aio.ServicerContext
    ) -> messages_pb2.ListThreadsResponse:
        account_id, reach = _caller()
        threads, token = await self._service.list_threads(
            account_id,
            reach,
            Scope(request.inbox_id, request.mailbox_id, request.pod_id),
            list(request.labels),
            request.folder_id or None,
            request.include_spam,
            request.include_trash,
            request.page_size,
            request.page_token,
        )
        return messages_pb2.ListThreadsResponse(
            threads=[thread_to_pb(t) for t in threads], next_page_token=token
        )

    async def GetThread(
        self, request: messages_pb2.GetThreadRequest, context: grpc.aio.ServicerContext
    ) -> messages_pb2.Thread:
        account_id, reach = _caller()
        return thread_to_pb(await self._service.get_thread(account_id, reach, request.thread_id))

    async def UpdateThread(
        self, request: messages_pb2.UpdateThreadRequest, context: grpc.aio.ServicerContext
    ) -> messages_pb2.Thread:
        account_id, reach = _caller()
        thread = await self._service.relabel_thread(
            account_id, reach, request.thread_id, request.add_labels, request.remove_labels
        )
        return thread_to_pb(thread)

    async def DeleteThread(
        self, request: messages_pb2.DeleteThreadRequest, context: grpc.aio.ServicerContext
    ) -> messages_pb2.DeleteThreadResponse:
        account_id, reach = _caller()
        purged = await self._service.delete_thread(account_id, reach, request.thread_id)
        return messages_pb2.DeleteThreadResponse(thread_id=request.thread_id, purged=purged)

    async def RestoreThread(
        self, request: messages_pb2.RestoreThreadRequest, context: grpc.aio.ServicerContext
    ) -> messages_pb2.Thread:
        account_id, reach = _caller()
        return thread_to_pb(
            await self._service.restore_thread(account_id, reach, request.thread_id)
        )
