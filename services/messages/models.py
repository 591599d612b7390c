"""What the messages service's rules work with: plain dataclasses, no transport."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

#: Labels Mailplane sets; a caller may add or remove only ``USER_SETTABLE`` of them.
SYSTEM_LABELS = frozenset(
    {
        "received",
        "sent",
        "unread",
        "spam",
        "unauthenticated",
        "trash",
        "archived",
        "bounced",
        "held",
    }
)
#: System labels a caller may add or remove (DESIGN §7.4); ``read`` means "remove unread".
USER_SETTABLE = frozenset({"unread", "spam", "trash", "archived"})
#: Left out of listings unless asked for.
HIDDEN = ("spam", "trash")


@dataclass(frozen=True)
class Owner:
    """Whom mail belongs to: an inbox (``inb_…``) or a mailbox (``mbx_…``),
    with its account and pod, as the address directory knows it."""

    id: str
    account_id: str
    pod_id: str

    @property
    def kind(self) -> str:
        """``inbox`` or ``mailbox``, from the ID's prefix."""
        return "inbox" if self.id.startswith("inb_") else "mailbox"


@dataclass(frozen=True)
class MailboxPolicy:
    """A mailbox's receiving policy (DESIGN §7.3) as the mailboxes service sent it.

    Attributes:
        inbound_rate_limit: messages per rolling hour, or ``None``.
        rules: the enabled rules in ascending priority, each
            ``{"id", "priority", "from", "to", "subjectContains", "action", "folderId"}``.
    """

    mailbox_id: str
    account_id: str
    pod_id: str
    version: int
    status: str
    address: str
    display_name: str | None
    inbound_rate_limit: int | None
    paused_auto_reply: str | None
    reply_to: str | None
    rules: list[dict[str, Any]]


@dataclass(frozen=True)
class AttachmentMeta:
    """An attachment's metadata; sizes in bytes."""

    id: str
    filename: str | None
    content_type: str
    size: int
    content_id: str | None
    disposition: str


@dataclass
class Message:
    """A stored message (DESIGN §7.4 ``Message``); ``text``/``html`` are ``None``
    in listings and when the message has no such body."""

    id: str
    thread_id: str
    account_id: str
    pod_id: str
    owner_id: str
    direction: str
    status: str
    labels: list[str]
    sender: str
    to: list[str]
    cc: list[str]
    bcc: list[str]
    reply_to: list[str]
    subject: str
    preview: str
    text: str | None
    html: str | None
    extracted_text: str
    message_id: str
    in_reply_to: str | None
    references: list[str]
    authentication: dict[str, str]
    size: int
    created_at: datetime
    updated_at: datetime
    attachments: list[AttachmentMeta] = field(default_factory=list)


@dataclass
class Thread:
    """A stored thread (DESIGN §7.4 ``Thread``); ``messages`` only in GetThread."""

    id: str
    account_id: str
    pod_id: str
    owner_id: str
    subject: str
    labels: list[str]
    preview: str
    message_count: int
    senders: list[str]
    recipients: list[str]
    folder_id: str | None
    last_message_at: datetime
    created_at: datetime
    updated_at: datetime
    messages: list[Message] = field(default_factory=list)


def message_of(row: Any, attachments: list[AttachmentMeta] | None = None) -> Message:
    """Builds a ``Message`` from a ``messages`` row (bodies may be absent)."""
    auth = row["authentication"]
    if isinstance(auth, str):
        auth = orjson.loads(auth)
    return Message(
        id=row["id"],
        thread_id=row["thread_id"],
        account_id=row["account_id"],
        pod_id=row["pod_id"],
        owner_id=row["owner_id"],
        direction=row["direction"],
        status=row["status"],
        labels=sorted(row["labels"]),
        sender=row["from_address"],
        to=list(row["to_addresses"]),
        cc=list(row["cc_addresses"]),
        bcc=list(row["bcc_addresses"]),
        reply_to=list(row["reply_to"]),
        subject=row["subject"],
        preview=row["preview"],
        text=row.get("text_body"),
        html=row.get("html_body"),
        extracted_text=row["extracted_text"],
        message_id=row["rfc_message_id"],
        in_reply_to=row["in_reply_to"],
        references=list(row["refs"]),
        authentication=dict(auth) if isinstance(auth, dict) else {},
        size=row["size"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        attachments=attachments or [],
    )


def thread_of(row: Any) -> Thread:
    """Builds a ``Thread`` from a ``threads`` row."""
    return Thread(
        id=row["id"],
        account_id=row["account_id"],
        pod_id=row["pod_id"],
        owner_id=row["owner_id"],
        subject=row["subject"],
        labels=sorted(row["labels"]),
        preview=row["preview"],
        message_count=row["message_count"],
        senders=list(row["senders"]),
        recipients=list(row["recipients"]),
        folder_id=row["folder_id"],
        last_message_at=row["last_message_at"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )
