"""The event and webhook servicers: protobuf ↔ models and the caller's reach."""

from __future__ import annotations

import grpc
from mailplane.messages.v1 import events_pb2, events_pb2_grpc

from services.chassis import auth
from services.messages.api import reach_of, timestamp_of
from services.messages.event_log import Event
from services.messages.events import EventFilter, EventService
from services.messages.store import Reach
from services.messages.webhooks import Delivery, Webhook, WebhookFields, WebhookService

_STATUSES = {
    "pending": events_pb2.WEBHOOK_DELIVERY_STATUS_PENDING,
    "succeeded": events_pb2.WEBHOOK_DELIVERY_STATUS_SUCCEEDED,
    "failed": events_pb2.WEBHOOK_DELIVERY_STATUS_FAILED,
}


#: Who may call each EventService method: any key reads the events within its
#: reach (DESIGN §7.6).
EVENT_ACCESS: dict[str, auth.Access] = {
    "ListEvents": auth.keys("read", *auth.ALL_SCOPES, pod_filter="pod_id"),
}
#: Who may call each WebhookService method: any key manages the webhooks of its
#: reach; a webhook delivers only the events its maker's key could read.
WEBHOOK_ACCESS: dict[str, auth.Access] = {
    "CreateWebhook": auth.keys("write", *auth.ALL_SCOPES),
    "GetWebhook": auth.keys("read", *auth.ALL_SCOPES),
    "ListWebhooks": auth.keys("read", *auth.ALL_SCOPES),
    "UpdateWebhook": auth.keys("write", *auth.ALL_SCOPES),
    "DeleteWebhook": auth.keys("write", *auth.ALL_SCOPES),
    "RotateWebhookSecret": auth.keys("write", *auth.ALL_SCOPES),
    "ListWebhookDeliveries": auth.keys("read", *auth.ALL_SCOPES),
    "TestWebhook": auth.keys("write", *auth.ALL_SCOPES),
}


def _caller() -> tuple[str, Reach]:
    """The acting account and what the caller's key reaches (the interceptor has
    already checked the method's row)."""
    return auth.acting_account(), reach_of(auth.current())


def event_to_pb(event: Event) -> events_pb2.Event:
    """Converts an event to its message (``data`` as JSON text)."""
    out = events_pb2.Event(
        id=event.id,
        type=event.type,
        create_time=timestamp_of(event.created_at),
        account_id=event.account_id,
        data=event.data,
    )
    if event.pod_id is not None:
        out.pod_id = event.pod_id
    if event.inbox_id is not None:
        out.inbox_id = event.inbox_id
    if event.mailbox_id is not None:
        out.mailbox_id = event.mailbox_id
    return out


def webhook_to_pb(hook: Webhook) -> events_pb2.Webhook:
    """Converts a webhook to its message; the secret only when just made."""
    out = events_pb2.Webhook(
        id=hook.id,
        url=hook.url,
        event_types=hook.event_types,
        pod_ids=hook.pod_ids,
        inbox_ids=hook.inbox_ids,
        mailbox_ids=hook.mailbox_ids,
        enabled=hook.enabled,
        create_time=timestamp_of(hook.created_at),
        update_time=timestamp_of(hook.updated_at),
    )
    if hook.description is not None:
        out.description = hook.description
    if hook.secret is not None:
        out.secret = hook.secret
    return out


def delivery_to_pb(delivery: Delivery) -> events_pb2.WebhookDelivery:
    """Converts a delivery and its attempts to its message."""
    out = events_pb2.WebhookDelivery(
        id=delivery.id,
        webhook_id=delivery.webhook_id,
        event_id=delivery.event_id,
        event_type=delivery.event_type,
        status=_STATUSES[delivery.state],
        create_time=timestamp_of(delivery.created_at),
    )
    # A disabled webhook's pending deliveries are never due ('infinity').
    due = delivery.next_attempt_at
    if delivery.state == "pending" and due is not None and due.year < 9999:
        out.next_attempt_time.CopyFrom(timestamp_of(due))
    for attempt in delivery.attempts:
        one = out.attempts.add(
            attempt=attempt.attempt,
            duration_ms=attempt.duration_ms,
            attempt_time=timestamp_of(attempt.attempted_at),
        )
        if attempt.status_code is not None:
            one.status_code = attempt.status_code
        if attempt.error is not None:
            one.error = attempt.error
    return out


def _fields(hook: events_pb2.Webhook) -> WebhookFields:
    return WebhookFields(
        url=hook.url,
        event_types=tuple(hook.event_types),
        pod_ids=tuple(hook.pod_ids),
        inbox_ids=tuple(hook.inbox_ids),
        mailbox_ids=tuple(hook.mailbox_ids),
        description=hook.description if hook.HasField("description") else None,
        enabled=hook.enabled if hook.HasField("enabled") else True,
    )


class EventServicer(events_pb2_grpc.EventServiceServicer):
    """``mailplane.messages.v1.EventService`` over ``EventService``."""

    def __init__(self, service: EventService):
        self._service = service

    async def ListEvents(
        self, request: events_pb2.ListEventsRequest, context: grpc.aio.ServicerContext
    ) -> events_pb2.ListEventsResponse:
        account_id, reach = _caller()
        page = await self._service.list_events(
            account_id,
            reach,
            request.after,
            EventFilter(
                types=tuple(request.types),
                pod_ref=request.pod_id,
                inbox_id=request.inbox_id,
                mailbox_id=request.mailbox_id,
            ),
            request.page_size,
            request.wait_seconds,
        )
        return events_pb2.ListEventsResponse(
            events=[event_to_pb(e) for e in page.events], next=page.next
        )


class WebhookServicer(events_pb2_grpc.WebhookServiceServicer):
    """``mailplane.messages.v1.WebhookService`` over ``WebhookService``."""

    def __init__(self, service: WebhookService):
        self._service = service

    async def CreateWebhook(
        self, request: events_pb2.CreateWebhookRequest, context: grpc.aio.ServicerContext
    ) -> events_pb2.Webhook:
        account_id, reach = _caller()
        hook = await self._service.create(account_id, reach, _fields(request.webhook))
        return webhook_to_pb(hook)

    async def GetWebhook(
        self, request: events_pb2.GetWebhookRequest, context: grpc.aio.ServicerContext
    ) -> events_pb2.Webhook:
        account_id, reach = _caller()
        return webhook_to_pb(await self._service.get(account_id, reach, request.webhook_id))

    async def ListWebhooks(
        self, request: events_pb2.ListWebhooksRequest, context: grpc.aio.ServicerContext
    ) -> events_pb2.ListWebhooksResponse:
        account_id, reach = _caller()
        hooks, token = await self._service.list_webhooks(
            account_id, reach, request.page_size, request.page_token
        )
        return events_pb2.ListWebhooksResponse(
            webhooks=[webhook_to_pb(h) for h in hooks], next_page_token=token
        )

    async def UpdateWebhook(
        self, request: events_pb2.UpdateWebhookRequest, context: grpc.aio.ServicerContext
    ) -> events_pb2.Webhook:
        account_id, reach = _caller()
        hook = await self._service.update(
            account_id,
            reach,
            request.webhook_id,
            list(request.update_mask.paths),
            _fields(request.webhook),
        )
        return webhook_to_pb(hook)

    async def DeleteWebhook(
        self, request: events_pb2.DeleteWebhookRequest, context: grpc.aio.ServicerContext
    ) -> events_pb2.DeleteWebhookResponse:
        account_id, reach = _caller()
        await self._service.delete(account_id, reach, request.webhook_id)
        return events_pb2.DeleteWebhookResponse(webhook_id=request.webhook_id)

    async def RotateWebhookSecret(
        self, request: events_pb2.RotateWebhookSecretRequest, context: grpc.aio.ServicerContext
    ) -> events_pb2.Webhook:
        account_id, reach = _caller()
        hook = await self._service.rotate_secret(account_id, reach, request.webhook_id)
        return webhook_to_pb(hook)

    async def ListWebhookDeliveries(
        self, request: events_pb2.ListWebhookDeliveriesRequest, context: grpc.aio.ServicerContext
    ) -> events_pb2.ListWebhookDeliveriesResponse:
        account_id, reach = _caller()
        deliveries, token = await self._service.deliveries(
            account_id, reach, request.webhook_id, request.page_size, request.page_token
        )
        return events_pb2.ListWebhookDeliveriesResponse(
            deliveries=[delivery_to_pb(d) for d in deliveries], next_page_token=token
        )

    async def TestWebhook(
        self, request: events_pb2.TestWebhookRequest, context: grpc.aio.ServicerContext
    ) -> events_pb2.WebhookDelivery:
        account_id, reach = _caller()
        return delivery_to_pb(await self._service.test(account_id, reach, request.webhook_id))
