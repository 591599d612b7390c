"""The gRPC front of sending: ``mailplane.messages.v1.SendingService`` over
``Outbox`` (protobuf ↔ compositions, drafts, suppressions and stats)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import grpc
from mailplane.messages.v1 import messages_pb2, sending_pb2, sending_pb2_grpc

from services.chassis import auth
from services.chassis.errors import invalid_argument
from services.messages import compose
from services.messages.api import message_to_pb, reach_of, timestamp_of
from services.messages.compose import Attachment, Composition
from services.messages.models import Message
from services.messages.outbox import Idempotency, Outbox, Replay, request_digest
from services.messages.outbox_store import Draft, Suppression
from services.messages.service import Scope, label_change

#: Who may call each SendingService method: a key with ``write`` that reaches the
#: sender sends (DESIGN §7.5; a read-only key cannot); the suppression list is the
#: account's, so only account-wide keys manage it.
SENDING_ACCESS: dict[str, auth.Access] = {
    "SendMessage": auth.keys("write", *auth.ALL_SCOPES),
    "ReplyToMessage": auth.keys("write", *auth.ALL_SCOPES),
    "ForwardMessage": auth.keys("write", *auth.ALL_SCOPES),
    "CreateDraft": auth.keys("write", *auth.ALL_SCOPES),
    "GetDraft": auth.keys("read", *auth.ALL_SCOPES),
    "ListDrafts": auth.keys("read", *auth.ALL_SCOPES, pod_filter="pod_id"),
    "UpdateDraft": auth.keys("write", *auth.ALL_SCOPES),
    "DeleteDraft": auth.keys("write", *auth.ALL_SCOPES),
    "SendDraft": auth.keys("write", *auth.ALL_SCOPES),
    "ListSuppressions": auth.keys("read", "account"),
    "CreateSuppression": auth.keys("write", "account"),
    "DeleteSuppression": auth.keys("write", "account"),
    "GetSendingStats": auth.keys("read", *auth.ALL_SCOPES),
}
#: Draft fields UpdateDraft may change (proto names).
_DRAFT_FIELDS = frozenset(
    {
        "in_reply_to_message_id",
        "to",
        "cc",
        "bcc",
        "reply_to",
        "subject",
        "text",
        "html",
        "labels",
        "send_at",
    }
)


def _caller() -> tuple[str, Any]:
    return auth.acting_account(), reach_of(auth.current())


def _attachments(items: Any, path: str) -> list[Attachment]:
    return [
        compose.attachment(
            a.filename, a.content_type, a.content, a.content_id, a.disposition, f"{path}[{i}]"
        )
        for i, a in enumerate(items)
    ]


def _labels(labels: Any) -> list[str]:
    change = label_change(list(labels), [])
    if set(change.add) - {"unread"} != set(change.add) or any(
        label in ("spam", "trash", "archived") for label in change.add
    ):
        raise invalid_argument("labels", "may only hold labels of your own.")
    return change.add


def _idempotency(method: str, request: Any) -> Idempotency:
    key = request.idempotency_key
    unkeyed = type(request)()
    unkeyed.CopyFrom(request)
    unkeyed.ClearField("idempotency_key")
    return Idempotency(
        key,
        request_digest(method, unkeyed.SerializeToString(deterministic=True)),
        lambda message: message_to_pb(message).SerializeToString(),
    )


def _when(stamp: Any, present: bool) -> datetime | None:
    return stamp.ToDatetime(tzinfo=UTC) if present else None


def draft_to_pb(draft: Draft) -> sending_pb2.Draft:
    """Converts a draft to its message."""
    out = sending_pb2.Draft(
        id=draft.id,
        pod_id=draft.pod_id,
        in_reply_to_message_id=draft.reply_to_message_id or "",
        to=draft.to,
        cc=draft.cc,
        bcc=draft.bcc,
        reply_to=draft.reply_to,
        subject=draft.subject,
        labels=draft.labels,
        create_time=timestamp_of(draft.created_at),
        update_time=timestamp_of(draft.updated_at),
    )
    if draft.owner_id.startswith("inb_"):
        out.inbox_id = draft.owner_id
    else:
        out.mailbox_id = draft.owner_id
    if draft.text is not None:
        out.text = draft.text
    if draft.html is not None:
        out.html = draft.html
    if draft.send_at is not None:
        out.send_at.CopyFrom(timestamp_of(draft.send_at))
    return out


def _draft_of(pb: sending_pb2.Draft, base: Draft | None = None) -> Draft:
    now = datetime.now(UTC)
    return Draft(
        id=base.id if base else "",
        account_id=base.account_id if base else "",
        pod_id=base.pod_id if base else "",
        owner_id=base.owner_id if base else "",
        reply_to_message_id=pb.in_reply_to_message_id or None,
        to=list(pb.to),
        cc=list(pb.cc),
        bcc=list(pb.bcc),
        reply_to=list(pb.reply_to),
        subject=pb.subject,
        text=pb.text if pb.HasField("text") else None,
        html=pb.html if pb.HasField("html") else None,
        attachments=base.attachments if base else [],
        headers=base.headers if base else {},
        labels=_labels(pb.labels),
        send_at=_when(pb.send_at, pb.HasField("send_at")),
        created_at=base.created_at if base else now,
        updated_at=now,
    )


def _suppression_to_pb(item: Suppression) -> sending_pb2.Suppression:
    out = sending_pb2.Suppression(
        address=item.address, reason=item.reason, create_time=timestamp_of(item.created_at)
    )
    if item.message_id:
        out.message_id = item.message_id
    return out


class SendingServicer(sending_pb2_grpc.SendingServiceServicer):
    """``mailplane.messages.v1.SendingService`` over ``Outbox``."""

    def __init__(self, outbox: Outbox):
        self._outbox = outbox

    async def _send(self, context: Any, send: Any) -> messages_pb2.Message:
        try:
            message: Message = await send
        except Replay as replay:
            return messages_pb2.Message.FromString(replay.response)
        return message_to_pb(message)

    async def SendMessage(
        self, request: sending_pb2.SendMessageRequest, context: grpc.aio.ServicerContext
    ) -> messages_pb2.Message:
        account_id, reach = _caller()
        sender = await self._outbox.sender(account_id, reach, request.inbox_id, request.mailbox_id)
        composition = Composition(
            to=compose.recipients(request.to, "to"),
            cc=compose.recipients(request.cc, "cc"),
            bcc=compose.recipients(request.bcc, "bcc"),
            reply_to=compose.recipients(request.reply_to, "replyTo"),
            subject=request.subject,
            text=request.text if request.HasField("text") else None,
            html=request.html if request.HasField("html") else None,
            attachments=_attachments(request.attachments, "attachments"),
            headers=compose.check_headers(request.headers),
        )
        return await self._send(
            context,
            self._outbox.send(
                sender,
                composition,
                _labels(request.labels),
                _idempotency("SendMessage", request),
            ),
        )

    async def ReplyToMessage(
        self, request: sending_pb2.ReplyToMessageRequest, context: grpc.aio.ServicerContext
    ) -> messages_pb2.Message:
        account_id, reach = _caller()
        parent, sender = await self._outbox.parent(account_id, reach, request.message_id)
        own = sender.address
        if parent.direction == "inbound":
            to = list(parent.reply_to or [parent.sender])
            cc = [*parent.to, *parent.cc] if request.reply_all else []
        else:
            to, cc = list(parent.to), (list(parent.cc) if request.reply_all else [])
        to_checked = compose.recipients([*to, *request.to], "to")
        seen = {r.bare for r in to_checked} | {own}
        to_checked = [r for r in to_checked if r.bare != own] or to_checked
        cc_checked = [r for r in compose.recipients([*cc, *request.cc], "cc") if r.bare not in seen]
        composition = Composition(
            to=to_checked,
            cc=cc_checked,
            bcc=compose.recipients(request.bcc, "bcc"),
            subject=compose.reply_subject(parent.subject),
            text=request.text if request.HasField("text") else None,
            html=request.html if request.HasField("html") else None,
            attachments=_attachments(request.attachments, "attachments"),
            headers=compose.check_headers(request.headers),
        )
        return await self._send(
            context,
            self._outbox.send(
                sender,
                composition,
                _labels(request.labels),
                _idempotency("ReplyToMessage", request),
                parent=parent,
            ),
        )

    async def ForwardMessage(
        self, request: sending_pb2.ForwardMessageRequest, context: grpc.aio.ServicerContext
    ) -> messages_pb2.Message:
        account_id, reach = _caller()
        parent, sender = await self._outbox.parent(account_id, reach, request.message_id)
        quoted = compose.quoted_forward(
            parent.sender, parent.created_at, parent.subject, parent.to, parent.text
        )
        above = request.text if request.HasField("text") else ""
        html = None
        if request.HasField("html") or parent.html is not None:
            html = (
                f"{request.html if request.HasField('html') else ''}"
                "<br><br>---------- Forwarded message ---------<br>"
                f"{parent.html if parent.html is not None else ''}"
            )
        composition = Composition(
            to=compose.recipients(request.to, "to"),
            cc=compose.recipients(request.cc, "cc"),
            bcc=compose.recipients(request.bcc, "bcc"),
            subject=compose.forward_subject(parent.subject),
            text=f"{above}\n\n{quoted}" if above else quoted,
            html=html,
            written=above,
            attachments=await self._outbox.attachments_of(parent),
        )
        return await self._send(
            context,
            self._outbox.send(
                sender,
                composition,
                _labels(request.labels),
                _idempotency("ForwardMessage", request),
                parent=parent,
                forward=True,
            ),
        )

    async def CreateDraft(
        self, request: sending_pb2.CreateDraftRequest, context: grpc.aio.ServicerContext
    ) -> sending_pb2.Draft:
        account_id, reach = _caller()
        sender = await self._outbox.sender(account_id, reach, request.inbox_id, request.mailbox_id)
        draft = await self._outbox.create_draft(sender, _draft_of(request.draft))
        return draft_to_pb(draft)

    async def GetDraft(
        self, request: sending_pb2.GetDraftRequest, context: grpc.aio.ServicerContext
    ) -> sending_pb2.Draft:
        account_id, reach = _caller()
        return draft_to_pb(await self._outbox.get_draft(account_id, reach, request.draft_id))

    async def ListDrafts(
        self, request: sending_pb2.ListDraftsRequest, context: grpc.aio.ServicerContext
    ) -> sending_pb2.ListDraftsResponse:
        account_id, reach = _caller()
        drafts, token = await self._outbox.list_drafts(
            account_id,
            reach,
            Scope(request.inbox_id, request.mailbox_id, request.pod_id),
            request.page_size,
            request.page_token,
        )
        return sending_pb2.ListDraftsResponse(
            drafts=[draft_to_pb(d) for d in drafts], next_page_token=token
        )

    async def UpdateDraft(
        self, request: sending_pb2.UpdateDraftRequest, context: grpc.aio.ServicerContext
    ) -> sending_pb2.Draft:
        account_id, reach = _caller()
        current = await self._outbox.get_draft(account_id, reach, request.draft_id)
        paths = list(request.update_mask.paths)
        unknown = [p for p in paths if p not in _DRAFT_FIELDS]
        if unknown:
            raise invalid_argument("updateMask", f"names {unknown[0]!r}, which cannot be changed.")
        merged = draft_to_pb(current)
        for path in paths:
            if path in ("to", "cc", "bcc", "reply_to", "labels"):
                del getattr(merged, path)[:]
                getattr(merged, path).extend(getattr(request.draft, path))
            elif path in ("text", "html", "send_at"):
                merged.ClearField(path)
                if request.draft.HasField(path):
                    if path == "send_at":
                        merged.send_at.CopyFrom(request.draft.send_at)
                    else:
                        setattr(merged, path, getattr(request.draft, path))
            else:
                setattr(merged, path, getattr(request.draft, path))
        draft = await self._outbox.update_draft(account_id, reach, _draft_of(merged, current))
        return draft_to_pb(draft)

    async def DeleteDraft(
        self, request: sending_pb2.DeleteDraftRequest, context: grpc.aio.ServicerContext
    ) -> sending_pb2.DeleteDraftResponse:
        account_id, reach = _caller()
        await self._outbox.delete_draft(account_id, reach, request.draft_id)
        return sending_pb2.DeleteDraftResponse(draft_id=request.draft_id)

    async def SendDraft(
        self, request: sending_pb2.SendDraftRequest, context: grpc.aio.ServicerContext
    ) -> messages_pb2.Message:
        account_id, reach = _caller()
        message = await self._outbox.send_draft(
            account_id, reach, request.draft_id, _when(request.send_at, request.HasField("send_at"))
        )
        return message_to_pb(message)

    async def ListSuppressions(
        self, request: sending_pb2.ListSuppressionsRequest, context: grpc.aio.ServicerContext
    ) -> sending_pb2.ListSuppressionsResponse:
        account_id, _ = _caller()
        items, token = await self._outbox.list_suppressions(
            account_id, request.page_size, request.page_token
        )
        return sending_pb2.ListSuppressionsResponse(
            suppressions=[_suppression_to_pb(s) for s in items], next_page_token=token
        )

    async def CreateSuppression(
        self, request: sending_pb2.CreateSuppressionRequest, context: grpc.aio.ServicerContext
    ) -> sending_pb2.Suppression:
        account_id, _ = _caller()
        return _suppression_to_pb(
            await self._outbox.suppress(account_id, request.suppression.address)
        )

    async def DeleteSuppression(
        self, request: sending_pb2.DeleteSuppressionRequest, context: grpc.aio.ServicerContext
    ) -> sending_pb2.DeleteSuppressionResponse:
        account_id, _ = _caller()
        await self._outbox.unsuppress(account_id, request.address)
        return sending_pb2.DeleteSuppressionResponse(address=request.address.strip().lower())

    async def GetSendingStats(
        self, request: sending_pb2.GetSendingStatsRequest, context: grpc.aio.ServicerContext
    ) -> sending_pb2.SendingStats:
        account_id, reach = _caller()
        sender = await self._outbox.sender(account_id, reach, request.inbox_id, request.mailbox_id)
        stats: dict[str, Any] = await self._outbox.stats(sender, request.period)
        out = sending_pb2.SendingStats(
            period=stats["period"],
            sends=sending_pb2.SendCounts(total=stats["total"], period=stats["sends"]),
            inbound=sending_pb2.InboundCounts(period=stats["inbound"]),
            deliverability=sending_pb2.Deliverability(
                delivered=stats["delivered"],
                bounced=stats["bounced"],
                complained=stats["complained"],
                delivery_rate=stats["delivery_rate"],
                bounce_rate=stats["bounce_rate"],
                complaint_rate=stats["complaint_rate"],
            ),
            suppression_count=stats["suppressions"],
            daily_sends=[sending_pb2.DailySends(day=d, count=n) for d, n in stats["daily_sends"]],
        )
        if request.mailbox_id:
            out.mailbox_id = request.mailbox_id
        if stats["last_send_at"] is not None:
            out.last_send_time.CopyFrom(timestamp_of(stats["last_send_at"]))
        return out
