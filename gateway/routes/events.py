"""``/v1/events`` (the durable log, with ``wait`` long-polling) and ``/v1/webhooks…``
(DESIGN §7.6)."""

from __future__ import annotations

from typing import Any

from mailplane.messages.v1 import events_pb2

from gateway.operations import Operation, rpc_of
from services.chassis.errors import Code

_WEBHOOK = {"webhook": "webhook_id"}
#: Seconds a test delivery may wait on the endpoint (the delivery timeout).
TEST_DELIVERY_SECONDS = 15.0
_EVENT_EXAMPLE = {
    "id": "evt_01JD5B6Q8Z3Y7X2W1V0T9S8R7Q",
    "type": "message.received",
    "createdAt": "2026-03-01T12:00:00Z",
    "accountId": "acct_01JD5B6Q8Z3Y7X2W1V0T9S8R7Q",
    "podId": "pod_01JD5B6Q8Z3Y7X2W1V0T9S8R7Q",
    "inboxId": "inb_01JD5B6Q8Z3Y7X2W1V0T9S8R7Q",
    "mailboxId": None,
    "data": {
        "message": {"id": "msg_01JD5B6Q8Z3Y7X2W1V0T9S8R7Q", "subject": "Quote for 100 units"},
        "thread": {"id": "thr_01JD5B6Q8Z3Y7X2W1V0T9S8R7Q", "messageCount": 1},
    },
}
_WEBHOOK_EXAMPLE = {
    "id": "whk_01JD5B6Q8Z3Y7X2W1V0T9S8R7Q",
    "url": "https://agent.example.com/hooks/mail",
    "eventTypes": ["message.received"],
    "podIds": [],
    "inboxIds": ["inb_01JD5B6Q8Z3Y7X2W1V0T9S8R7Q"],
    "mailboxIds": [],
    "description": "Support agent",
    "enabled": True,
    "secret": None,
    "createdAt": "2026-03-01T12:00:00Z",
    "updatedAt": "2026-03-01T12:00:00Z",
}
_CREATED_EXAMPLE = {**_WEBHOOK_EXAMPLE, "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}
_DELIVERY_EXAMPLE = {
    "id": "whd_01JD5B6Q8Z3Y7X2W1V0T9S8R7Q",
    "webhookId": "whk_01JD5B6Q8Z3Y7X2W1V0T9S8R7Q",
    "eventId": "evt_01JD5B6Q8Z3Y7X2W1V0T9S8R7Q",
    "eventType": "message.received",
    "status": "succeeded",
    "attempts": [
        {
            "attempt": 1,
            "statusCode": 500,
            "error": None,
            "durationMs": 12,
            "attemptedAt": "2026-03-01T12:00:00Z",
        },
        {
            "attempt": 2,
            "statusCode": 204,
            "error": None,
            "durationMs": 9,
            "attemptedAt": "2026-03-01T12:00:05Z",
        },
    ],
    "nextAttemptAt": None,
    "createdAt": "2026-03-01T12:00:00Z",
}
_HOOK_ERRORS: tuple[Code, ...] = ("pod_not_found", "inbox_not_found", "mailbox_not_found")


def _wait(request: Any) -> float:
    # Only a wait the service accepts (0-30 s) extends the deadline; the service
    # answers any other with 400 naming `wait`.
    return float(min(max(request.wait_seconds, 0), 30))


def _test_delivery(_request: Any) -> float:
    return TEST_DELIVERY_SECONDS


OPERATIONS = (
    Operation(
        "GET",
        "/v1/events",
        rpc_of(events_pb2, "EventService", "ListEvents"),
        "listEvents",
        "List events",
        "events",
        query_fields={
            "after": "after",
            "types": "types",
            "podId": "pod_id",
            "inboxId": "inbox_id",
            "mailboxId": "mailbox_id",
            "limit": "page_size",
            "wait": "wait_seconds",
        },
        waits=_wait,
        errors=_HOOK_ERRORS,
        example={"events": [_EVENT_EXAMPLE], "next": _EVENT_EXAMPLE["id"]},
    ),
    Operation(
        "POST",
        "/v1/webhooks",
        rpc_of(events_pb2, "WebhookService", "CreateWebhook"),
        "createWebhook",
        "Create a webhook",
        "webhooks",
        body="webhook",
        body_required=True,
        status=201,
        errors=_HOOK_ERRORS,
        example=_CREATED_EXAMPLE,
    ),
    Operation(
        "GET",
        "/v1/webhooks",
        rpc_of(events_pb2, "WebhookService", "ListWebhooks"),
        "listWebhooks",
        "List webhooks",
        "webhooks",
        paged=True,
        example={"webhooks": [_WEBHOOK_EXAMPLE], "nextPageToken": None},
    ),
    Operation(
        "GET",
        "/v1/webhooks/{webhook}",
        rpc_of(events_pb2, "WebhookService", "GetWebhook"),
        "getWebhook",
        "Get a webhook",
        "webhooks",
        path_fields=_WEBHOOK,
        errors=("webhook_not_found",),
        example=_WEBHOOK_EXAMPLE,
    ),
    Operation(
        "PATCH",
        "/v1/webhooks/{webhook}",
        rpc_of(events_pb2, "WebhookService", "UpdateWebhook"),
        "updateWebhook",
        "Update a webhook",
        "webhooks",
        path_fields=_WEBHOOK,
        body="webhook",
        mask="update_mask",
        errors=("webhook_not_found", *_HOOK_ERRORS),
        example=_WEBHOOK_EXAMPLE,
    ),
    Operation(
        "DELETE",
        "/v1/webhooks/{webhook}",
        rpc_of(events_pb2, "WebhookService", "DeleteWebhook"),
        "deleteWebhook",
        "Delete a webhook",
        "webhooks",
        path_fields=_WEBHOOK,
        deleted=True,
        errors=("webhook_not_found",),
    ),
    Operation(
        "POST",
        "/v1/webhooks/{webhook}/rotate-secret",
        rpc_of(events_pb2, "WebhookService", "RotateWebhookSecret"),
        "rotateWebhookSecret",
        "Rotate a webhook's secret",
        "webhooks",
        path_fields=_WEBHOOK,
        errors=("webhook_not_found",),
        example=_CREATED_EXAMPLE,
    ),
    Operation(
        "GET",
        "/v1/webhooks/{webhook}/deliveries",
        rpc_of(events_pb2, "WebhookService", "ListWebhookDeliveries"),
        "listWebhookDeliveries",
        "List a webhook's deliveries",
        "webhooks",
        path_fields=_WEBHOOK,
        paged=True,
        errors=("webhook_not_found",),
        example={"deliveries": [_DELIVERY_EXAMPLE], "nextPageToken": None},
    ),
    Operation(
        "POST",
        "/v1/webhooks/{webhook}/test",
        rpc_of(events_pb2, "WebhookService", "TestWebhook"),
        "testWebhook",
        "Send a test event",
        "webhooks",
        path_fields=_WEBHOOK,
        waits=_test_delivery,
        errors=("webhook_not_found",),
        example={**_DELIVERY_EXAMPLE, "eventType": "webhook.test", "attempts": []},
    ),
)
