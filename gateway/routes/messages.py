"""Messages and threads (DESIGN §7.4): per inbox, per mailbox, per pod (seed 001)
and account-wide, with raw and attachment downloads."""

from __future__ import annotations

import dataclasses
from typing import Any

from mailplane.messages.v1 import messages_pb2

from gateway.operations import Operation, rpc_of

_MESSAGE = {"message": "message_id"}
_THREAD = {"thread": "thread_id"}
_MESSAGE_FILTERS = {
    "labels": "labels",
    "before": "before",
    "after": "after",
    "includeSpam": "include_spam",
    "includeTrash": "include_trash",
}
_THREAD_FILTERS = {
    "labels": "labels",
    "folderId": "folder_id",
    "includeSpam": "include_spam",
    "includeTrash": "include_trash",
}
MESSAGE_EXAMPLE: dict[str, Any] = {
    "id": "msg_01JD5B6Q8Z3Y7X2W1V0T9S8R7Q",
    "threadId": "thr_01JD5B6Q8Z3Y7X2W1V0T9S8R7Q",
    "podId": "pod_01JD5B6Q8Z3Y7X2W1V0T9S8R7Q",
    "inboxId": "inb_01JD5B6Q8Z3Y7X2W1V0T9S8R7Q",
    "mailboxId": None,
    "direction": "inbound",
    "status": "received",
    "labels": ["received", "unread"],
    "from": "Ada <ada@example.com>",
    "to": ["scout@mailplane.test"],
    "cc": [],
    "bcc": [],
    "replyTo": [],
    "subject": "Quote for 100 units",
    "preview": "Hi, could you send a quote for 100 units?",
    "text": "Hi, could you send a quote for 100 units?",
    "html": None,
    "extractedText": "Hi, could you send a quote for 100 units?",
    "attachments": [],
    "messageId": "<CAF1234@example.com>",
    "inReplyTo": None,
    "references": [],
    "authentication": {"spf": "pass", "dkim": "pass", "dmarc": "pass"},
    "size": 2048,
    "createdAt": "2026-03-01T12:00:00Z",
    "updatedAt": "2026-03-01T12:00:00Z",
}
_THREAD_EXAMPLE = {
    "id": "thr_01JD5B6Q8Z3Y7X2W1V0T9S8R7Q",
    "podId": "pod_01JD5B6Q8Z3Y7X2W1V0T9S8R7Q",
    "inboxId": "inb_01JD5B6Q8Z3Y7X2W1V0T9S8R7Q",
    "mailboxId": None,
    "subject": "Quote for 100 units",
    "labels": ["received", "unread"],
    "preview": "Hi, could you send a quote for 100 units?",
    "messageCount": 1,
    "senders": ["Ada <ada@example.com>"],
    "recipients": ["scout@mailplane.test"],
    "folderId": None,
    "lastMessageAt": "2026-03-01T12:00:00Z",
    "createdAt": "2026-03-01T12:00:00Z",
    "updatedAt": "2026-03-01T12:00:00Z",
    "messages": [],
}


def _raw(response: Any) -> tuple[bytes, str]:
    return bytes(response.raw), "message/rfc822"


def _attachment(response: Any) -> tuple[bytes, str]:
    return bytes(response.content), response.attachment.content_type or "application/octet-stream"


_LIST_INBOX_MESSAGES = Operation(
    "GET",
    "/v1/inboxes/{inbox}/messages",
    rpc_of(messages_pb2, "MessageService", "ListMessages"),
    "listInboxMessages",
    "List an inbox's messages",
    "messages",
    path_fields={"inbox": "inbox_id"},
    query_fields=_MESSAGE_FILTERS,
    paged=True,
    errors=("inbox_not_found",),
    example={"messages": [MESSAGE_EXAMPLE], "nextPageToken": None},
)
_LIST_INBOX_THREADS = Operation(
    "GET",
    "/v1/inboxes/{inbox}/threads",
    rpc_of(messages_pb2, "MessageService", "ListThreads"),
    "listInboxThreads",
    "List an inbox's threads",
    "threads",
    path_fields={"inbox": "inbox_id"},
    query_fields=_THREAD_FILTERS,
    paged=True,
    errors=("inbox_not_found",),
    example={"threads": [_THREAD_EXAMPLE], "nextPageToken": None},
)

OPERATIONS = (
    _LIST_INBOX_MESSAGES,
    dataclasses.replace(
        _LIST_INBOX_MESSAGES,
        path="/v1/agent/mailboxes/{mailbox}/messages",
        operation_id="listMailboxMessages",
        summary="List a mailbox's messages",
        path_fields={"mailbox": "mailbox_id"},
        errors=("mailbox_not_found",),
    ),
    Operation(
        "GET",
        "/v1/messages/{message}",
        rpc_of(messages_pb2, "MessageService", "GetMessage"),
        "getMessage",
        "Get a message",
        "messages",
        path_fields=_MESSAGE,
        errors=("message_not_found",),
        example=MESSAGE_EXAMPLE,
    ),
    Operation(
        "GET",
        "/v1/messages/{message}/raw",
        rpc_of(messages_pb2, "MessageService", "GetRawMessage"),
        "getRawMessage",
        "Download a message as RFC 5322 (message/rfc822)",
        "messages",
        path_fields=_MESSAGE,
        media=_raw,
        media_type="message/rfc822",
        errors=("message_not_found",),
    ),
    Operation(
        "GET",
        "/v1/messages/{message}/attachments/{attachment}",
        rpc_of(messages_pb2, "MessageService", "GetAttachment"),
        "getAttachment",
        "Download an attachment",
        "messages",
        path_fields={**_MESSAGE, "attachment": "attachment_id"},
        media=_attachment,
        errors=("message_not_found", "attachment_not_found"),
    ),
    Operation(
        "PATCH",
        "/v1/messages/{message}",
        rpc_of(messages_pb2, "MessageService", "UpdateMessage"),
        "updateMessage",
        "Add and remove a message's labels",
        "messages",
        path_fields=_MESSAGE,
        body="*",
        body_required=True,
        errors=("message_not_found",),
        example=MESSAGE_EXAMPLE,
    ),
    Operation(
        "DELETE",
        "/v1/messages/{message}",
        rpc_of(messages_pb2, "MessageService", "DeleteMessage"),
        "deleteMessage",
        "Delete a message for good",
        "messages",
        path_fields=_MESSAGE,
        deleted=True,
        errors=("message_not_found",),
    ),
    _LIST_INBOX_THREADS,
    dataclasses.replace(
        _LIST_INBOX_THREADS,
        path="/v1/agent/mailboxes/{mailbox}/threads",
        operation_id="listMailboxThreads",
        summary="List a mailbox's threads",
        path_fields={"mailbox": "mailbox_id"},
        errors=("mailbox_not_found",),
    ),
    dataclasses.replace(
        _LIST_INBOX_THREADS,
        path="/v1/pods/{pod}/threads",
        operation_id="listPodThreads",
        summary="List a pod's threads",
        tag="pods",
        path_fields={"pod": "pod_id"},
        errors=("pod_not_found",),
    ),
    dataclasses.replace(
        _LIST_INBOX_THREADS,
        path="/v1/threads",
        operation_id="listThreads",
        summary="List the account's threads",
        path_fields={},
        query_fields={
            **_THREAD_FILTERS,
            "podId": "pod_id",
            "inboxId": "inbox_id",
            "mailboxId": "mailbox_id",
        },
        errors=("pod_not_found", "inbox_not_found", "mailbox_not_found"),
    ),
    Operation(
        "GET",
        "/v1/threads/{thread}",
        rpc_of(messages_pb2, "MessageService", "GetThread"),
        "getThread",
        "Get a thread with its messages",
        "threads",
        path_fields=_THREAD,
        errors=("thread_not_found",),
        example=_THREAD_EXAMPLE,
    ),
    Operation(
        "PATCH",
        "/v1/threads/{thread}",
        rpc_of(messages_pb2, "MessageService", "UpdateThread"),
        "updateThread",
        "Add and remove a thread's labels",
        "threads",
        path_fields=_THREAD,
        body="*",
        body_required=True,
        errors=("thread_not_found",),
        example=_THREAD_EXAMPLE,
    ),
    Operation(
        "DELETE",
        "/v1/threads/{thread}",
        rpc_of(messages_pb2, "MessageService", "DeleteThread"),
        "deleteThread",
        "Trash a thread; delete a trashed thread for good",
        "threads",
        path_fields=_THREAD,
        deleted=True,
        errors=("thread_not_found",),
    ),
    Operation(
        "POST",
        "/v1/threads/{thread}/restore",
        rpc_of(messages_pb2, "MessageService", "RestoreThread"),
        "restoreThread",
        "Take a thread out of the trash",
        "threads",
        path_fields=_THREAD,
        errors=("thread_not_found",),
        example=_THREAD_EXAMPLE,
    ),
)
