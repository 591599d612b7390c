"""``/v1/inboxes…`` and ``/v1/pods/{pod}/inboxes`` (seeds 000, 001, 003; DESIGN §4 Inboxes)."""

from __future__ import annotations

from mailplane.inboxes.v1 import inboxes_pb2

from gateway.operations import Operation, pod_listing, rpc_of

_INBOX = {"inbox": "inbox_id"}
_EXAMPLE = {
    "id": "inb_01JD5B6Q8Z3Y7X2W1V0T9S8R7Q",
    "podId": "pod_01JD5B6Q8Z3Y7X2W1V0T9S8R7Q",
    "email": "scout@mailplane.test",
    "username": "scout",
    "domain": "mailplane.test",
    "displayName": "Scout",
    "createdAt": "2026-03-01T12:00:00Z",
    "updatedAt": "2026-03-01T12:00:00Z",
}
_SECRET = "9f3c…(shown once)"
_CREDENTIALS = {
    "imap": {
        "host": "127.0.0.1",
        "port": 1993,
        "tls": True,
        "username": "scout@mailplane.test",
        "password": _SECRET,
    },
    "smtp": {
        "host": "127.0.0.1",
        "port": 2587,
        "starttls": True,
        "username": "scout@mailplane.test",
        "password": _SECRET,
    },
}
_LIST = {"inboxes": [_EXAMPLE], "nextPageToken": None}

_LIST_INBOXES = Operation(
    "GET",
    "/v1/inboxes",
    rpc_of(inboxes_pb2, "InboxService", "ListInboxes"),
    "listInboxes",
    "List inboxes",
    "inboxes",
    query_fields={"podId": "pod_id", "domain": "domain"},
    paged=True,
    errors=("pod_not_found",),
    example=_LIST,
)

OPERATIONS = (
    Operation(
        "POST",
        "/v1/inboxes",
        rpc_of(inboxes_pb2, "InboxService", "CreateInbox"),
        "createInbox",
        "Create an inbox (idempotent on the address)",
        "inboxes",
        query_fields={"strict": "strict"},
        body="inbox",
        status_of=lambda created: 200 if created.existed else 201,
        lift="inbox",
        errors=(
            "pod_not_found",
            "pod_busy",
            "domain_not_found",
            "domain_not_verified",
            "domain_pod_mismatch",
            "domain_busy",
            "account_expired",
            "inbox_limit_reached",
            "username_taken",
            "address_taken",
        ),
        example={**_EXAMPLE, "existed": False, "credentials": _CREDENTIALS},
    ),
    _LIST_INBOXES,
    pod_listing(_LIST_INBOXES, "inboxes"),
    Operation(
        "GET",
        "/v1/inboxes/{inbox}",
        rpc_of(inboxes_pb2, "InboxService", "GetInbox"),
        "getInbox",
        "Get an inbox",
        "inboxes",
        path_fields=_INBOX,
        errors=("inbox_not_found",),
        example=_EXAMPLE,
    ),
    Operation(
        "PATCH",
        "/v1/inboxes/{inbox}",
        rpc_of(inboxes_pb2, "InboxService", "UpdateInbox"),
        "updateInbox",
        "Update an inbox's display name",
        "inboxes",
        path_fields=_INBOX,
        body="inbox",
        mask="update_mask",
        errors=("inbox_not_found",),
        example=_EXAMPLE,
    ),
    Operation(
        "DELETE",
        "/v1/inboxes/{inbox}",
        rpc_of(inboxes_pb2, "InboxService", "DeleteInbox"),
        "deleteInbox",
        "Delete an inbox",
        "inboxes",
        path_fields=_INBOX,
        deleted=True,
        errors=("inbox_not_found",),
    ),
    Operation(
        "POST",
        "/v1/inboxes/{inbox}/rotate-credentials",
        rpc_of(inboxes_pb2, "InboxService", "RotateInboxCredentials"),
        "rotateInboxCredentials",
        "Rotate an inbox's credentials",
        "inboxes",
        path_fields=_INBOX,
        lift="inbox",
        errors=("inbox_not_found",),
        example={**_EXAMPLE, "credentials": _CREDENTIALS},
    ),
)
