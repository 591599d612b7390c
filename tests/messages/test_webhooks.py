"""Webhooks through the real gateway and services, delivered by the worker's
dispatcher (in process, short retries) to a real receiver on loopback that
verifies every signature with the ``standardwebhooks`` package (DESIGN §7.6)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
import pytest_asyncio
from mailplane.pods.v1 import pods_pb2
from standardwebhooks import Webhook as Verifier

from services.chassis.config import Settings
from services.chassis.errors import MailplaneError
from services.chassis.pagination import PageTokens
from services.messages.dispatch import SecretBox, Sender
from services.messages.event_log import Event, Position
from services.messages.store import MailStore, Reach
from services.messages.webhooks import WebhookFields, WebhookService, WebhookStore, resolve_host
from tests.conftest import Services, Tenant
from tests.gateway.test_rest import assert_error
from tests.keys.test_scoped_keys import bearer, new_key
from tests.messages.mail_events import (
    RECEIVED,
    TEST_RETRY_SCHEDULE,
    Receiver,
    dispatcher_of,
    new_inbox,
    receive,
    start_receiver,
)


@pytest_asyncio.fixture(scope="session")
async def dispatching(services: Services, settings: Settings) -> AsyncIterator[None]:
    """The webhook dispatcher, running for the whole session."""
    dispatcher, listener, sender = dispatcher_of(services, settings)
    task = asyncio.create_task(dispatcher.run_forever())
    yield
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await sender.close()
    await listener.close()


@pytest_asyncio.fixture
async def receiver() -> AsyncIterator[Receiver]:
    got, runner = await start_receiver()
    yield got
    await runner.cleanup()


async def new_webhook(
    http: httpx.AsyncClient, headers: dict[str, str], url: str, **body: Any
) -> dict[str, Any]:
    body.setdefault("eventTypes", [RECEIVED])
    answer = await http.post("/v1/webhooks", json={"url": url, **body}, headers=headers)
    assert answer.status_code == 201, answer.text
    return answer.json()  # type: ignore[no-any-return]


def verified(secret: str, request: tuple[dict[str, str], bytes]) -> dict[str, Any]:
    """The payload, once the signature checks out (raises otherwise)."""
    headers, body = request
    payload: dict[str, Any] = Verifier(secret).verify(body, headers)
    return payload


async def deliveries_when(
    http: httpx.AsyncClient, headers: dict[str, str], hook_id: str, status: str
) -> list[dict[str, Any]]:
    """The delivery log once its newest delivery has ``status`` (polls ≤ 10 s)."""
    async with asyncio.timeout(10):
        while True:
            answer = await http.get(f"/v1/webhooks/{hook_id}/deliveries", headers=headers)
            assert answer.status_code == 200, answer.text
            found: list[dict[str, Any]] = answer.json()["deliveries"]
            if found and found[0]["status"] == status:
                return found
            await asyncio.sleep(0.05)


@pytest.mark.usefixtures("dispatching")
async def test_a_received_message_is_delivered_signed_and_logged(
    http: httpx.AsyncClient, services: Services, tenant: Tenant, receiver: Receiver
) -> None:
    inbox = await new_inbox(http, services, tenant)
    hook = await new_webhook(http, tenant.headers, receiver.url, description="agent")
    assert hook["secret"].startswith("whsec_") and hook["enabled"] is True
    assert hook["eventTypes"] == [RECEIVED] and hook["description"] == "agent"
    shown = (await http.get(f"/v1/webhooks/{hook['id']}", headers=tenant.headers)).json()
    assert shown["secret"] is None and shown["url"] == receiver.url

    await receive(services, inbox, "Quote please")
    (request,) = await receiver.wait_for(1)
    payload = verified(hook["secret"], request)
    headers = request[0]
    assert headers["webhook-id"] == payload["id"] and payload["id"].startswith("evt_")
    assert headers["Content-Type"] == "application/json"
    assert payload["type"] == RECEIVED and payload["accountId"] == tenant.account_id
    assert payload["inboxId"] == inbox["id"] and payload["podId"] == inbox["podId"]
    assert payload["data"]["message"]["subject"] == "Quote please"
    assert set(payload) == {
        "id", "type", "createdAt", "accountId", "podId", "inboxId", "mailboxId", "data"
    }  # fmt: skip
    # The same event is in the log.
    logged = (await http.get("/v1/events", headers=tenant.headers)).json()["events"]
    assert [e["id"] for e in logged] == [payload["id"]]

    (delivery,) = await deliveries_when(http, tenant.headers, hook["id"], "succeeded")
    assert delivery["eventId"] == payload["id"] and delivery["eventType"] == RECEIVED
    (attempt,) = delivery["attempts"]
    assert attempt["attempt"] == 1 and attempt["statusCode"] == 204 and attempt["error"] is None
    assert delivery["nextAttemptAt"] is None


@pytest.mark.usefixtures("dispatching")
async def test_a_500_is_retried_with_the_same_webhook_id(
    http: httpx.AsyncClient, services: Services, tenant: Tenant, receiver: Receiver
) -> None:
    inbox = await new_inbox(http, services, tenant)
    hook = await new_webhook(http, tenant.headers, receiver.url)
    receiver.statuses = [500]
    await receive(services, inbox)

    first, second = await receiver.wait_for(2)
    assert first[0]["webhook-id"] == second[0]["webhook-id"]
    assert verified(hook["secret"], first) == verified(hook["secret"], second)
    (delivery,) = await deliveries_when(http, tenant.headers, hook["id"], "succeeded")
    assert [(a["attempt"], a["statusCode"]) for a in delivery["attempts"]] == [(1, 500), (2, 204)]


@pytest.mark.usefixtures("dispatching")
async def test_a_delivery_fails_after_the_last_retry(
    http: httpx.AsyncClient, services: Services, tenant: Tenant, receiver: Receiver
) -> None:
    inbox = await new_inbox(http, services, tenant)
    hook = await new_webhook(http, tenant.headers, receiver.url)
    receiver.statuses = [500, 503, 500, 200]
    await receive(services, inbox)

    (delivery,) = await deliveries_when(http, tenant.headers, hook["id"], "failed")
    attempts = len(TEST_RETRY_SCHEDULE) + 1
    assert [a["statusCode"] for a in delivery["attempts"]] == [500, 503, 500][:attempts]
    await asyncio.sleep(3 * TEST_RETRY_SCHEDULE[-1])
    assert len(receiver.requests) == attempts  # nothing after it failed


@pytest.mark.usefixtures("dispatching")
async def test_an_unreachable_endpoint_is_logged_with_its_error(
    http: httpx.AsyncClient, services: Services, tenant: Tenant
) -> None:
    inbox = await new_inbox(http, services, tenant)
    closed, runner = await start_receiver()
    await runner.cleanup()  # nothing listens there any more
    hook = await new_webhook(http, tenant.headers, closed.url)
    await receive(services, inbox)
    (delivery,) = await deliveries_when(http, tenant.headers, hook["id"], "failed")
    assert all(a["statusCode"] is None and a["error"] for a in delivery["attempts"])


@pytest.mark.usefixtures("dispatching")
async def test_filters_disable_and_event_types_decide_what_is_delivered(
    http: httpx.AsyncClient, services: Services, tenant: Tenant, receiver: Receiver
) -> None:
    wanted = await new_inbox(http, services, tenant)
    other = await new_inbox(http, services, tenant)
    hook = await new_webhook(http, tenant.headers, receiver.url, inboxIds=[wanted["id"]])
    await receive(services, other, "Not for the hook")
    await receive(services, wanted, "For the hook")
    (request,) = await receiver.wait_for(1)
    assert verified(hook["secret"], request)["data"]["message"]["subject"] == "For the hook"

    off = await http.patch(
        f"/v1/webhooks/{hook['id']}", json={"enabled": False}, headers=tenant.headers
    )
    assert off.status_code == 200 and off.json()["enabled"] is False
    assert off.json()["inboxIds"] == [wanted["id"]]  # the mask left the rest alone
    await receive(services, wanted, "While disabled")
    retyped = await http.patch(
        f"/v1/webhooks/{hook['id']}",
        json={"enabled": True, "eventTypes": ["thread.updated"]},
        headers=tenant.headers,
    )
    assert retyped.status_code == 200 and retyped.json()["eventTypes"] == ["thread.updated"]
    await receive(services, wanted, "Wrong type")
    thread_id = verified(hook["secret"], request)["data"]["thread"]["id"]
    await http.patch(f"/v1/threads/{thread_id}", json={"addLabels": ["x"]}, headers=tenant.headers)
    second = (await receiver.wait_for(2))[1]
    assert verified(hook["secret"], second)["type"] == "thread.updated"
    await asyncio.sleep(0.5)
    assert len(receiver.requests) == 2


@pytest.mark.usefixtures("dispatching")
async def test_rotate_secret_and_test_delivery(
    http: httpx.AsyncClient, tenant: Tenant, receiver: Receiver
) -> None:
    hook = await new_webhook(http, tenant.headers, receiver.url)
    rotated = await http.post(f"/v1/webhooks/{hook['id']}/rotate-secret", headers=tenant.headers)
    assert rotated.status_code == 200, rotated.text
    secret = rotated.json()["secret"]
    assert secret.startswith("whsec_") and secret != hook["secret"]

    tested = await http.post(f"/v1/webhooks/{hook['id']}/test", headers=tenant.headers)
    assert tested.status_code == 200, tested.text
    delivery = tested.json()
    assert delivery["eventType"] == "webhook.test" and delivery["status"] == "succeeded"
    assert delivery["attempts"][0]["statusCode"] == 204
    (request,) = receiver.requests
    payload = verified(secret, request)
    assert payload["type"] == "webhook.test" and payload["data"]["webhookId"] == hook["id"]
    assert payload["id"] == delivery["eventId"]
    with pytest.raises(Exception, match="signature"):
        verified(hook["secret"], request)  # the old secret no longer signs
    logged = (
        await http.get(f"/v1/webhooks/{hook['id']}/deliveries", headers=tenant.headers)
    ).json()
    assert [d["id"] for d in logged["deliveries"]] == [delivery["id"]]


async def test_webhook_crud_pages_and_validation(
    http: httpx.AsyncClient, services: Services, tenant: Tenant
) -> None:
    url = "http://127.0.0.1:9/hooks"
    made = [await new_webhook(http, tenant.headers, url) for _ in range(3)]
    first = await http.get("/v1/webhooks", params={"limit": 2}, headers=tenant.headers)
    body = first.json()
    assert [h["id"] for h in body["webhooks"]] == [h["id"] for h in made[:2]]
    assert all(h["secret"] is None for h in body["webhooks"])
    rest = await http.get(
        "/v1/webhooks", params={"pageToken": body["nextPageToken"]}, headers=tenant.headers
    )
    assert [h["id"] for h in rest.json()["webhooks"]] == [made[2]["id"]]

    gone = await http.delete(f"/v1/webhooks/{made[0]['id']}", headers=tenant.headers)
    assert gone.json() == {"id": made[0]["id"], "deleted": True}
    assert_error(
        await http.get(f"/v1/webhooks/{made[0]['id']}", headers=tenant.headers),
        404,
        "webhook_not_found",
    )

    for body_, field in (
        ({"url": "ftp://example.com/x", "eventTypes": [RECEIVED]}, "url"),
        ({"url": "not a url", "eventTypes": [RECEIVED]}, "url"),
        ({"url": url, "eventTypes": []}, "eventTypes"),
        ({"url": url, "eventTypes": ["message.exploded"]}, "eventTypes"),
        (
            {"url": url, "eventTypes": [RECEIVED], "inboxIds": [f"inb_{i}" for i in range(11)]},
            "inboxIds",
        ),
    ):
        answer = await http.post("/v1/webhooks", json=body_, headers=tenant.headers)
        assert_error(answer, 400, "invalid_argument")
        assert answer.json()["details"]["field"] == field, answer.text
    assert_error(
        await http.post(
            "/v1/webhooks",
            json={
                "url": url,
                "eventTypes": [RECEIVED],
                "inboxIds": ["inb_01JD5B6Q8Z3Y7X2W1V0T9S8R7Q"],
            },
            headers=tenant.headers,
        ),
        404,
        "inbox_not_found",
    )
    assert_error(
        await http.patch(
            f"/v1/webhooks/{made[1]['id']}", json={"secret": "whsec_x"}, headers=tenant.headers
        ),
        400,
        "invalid_argument",
    )


async def test_another_account_gets_404_on_every_webhook_route(
    http: httpx.AsyncClient, tenant: Tenant, other_tenant: Tenant
) -> None:
    hook = await new_webhook(http, tenant.headers, "http://127.0.0.1:9/hooks")
    path = f"/v1/webhooks/{hook['id']}"
    theirs = other_tenant.headers
    for answer in (
        await http.get(path, headers=theirs),
        await http.patch(path, json={"enabled": False}, headers=theirs),
        await http.delete(path, headers=theirs),
        await http.post(f"{path}/rotate-secret", headers=theirs),
        await http.get(f"{path}/deliveries", headers=theirs),
        await http.post(f"{path}/test", headers=theirs),
    ):
        assert_error(answer, 404, "webhook_not_found")
    assert (await http.get("/v1/webhooks", headers=theirs)).json()["webhooks"] == []
    assert (await http.get(path, headers=tenant.headers)).json()["enabled"] is True


@pytest.mark.usefixtures("dispatching")
async def test_a_scoped_keys_webhook_delivers_only_its_scope_and_others_are_out_of_reach(
    http: httpx.AsyncClient,
    services: Services,
    make_tenant,
    receiver: Receiver,  # type: ignore[no-untyped-def]
) -> None:
    tenant: Tenant = await make_tenant("Enterprise", pods_pb2.PLAN_ENTERPRISE)
    mine = await new_inbox(http, services, tenant)
    other = await new_inbox(http, services, tenant)
    inbox_key = bearer((await new_key(http, tenant, inboxId=mine["id"]))["key"])
    scoped = await new_webhook(http, inbox_key, receiver.url)
    account_hook = await new_webhook(http, tenant.headers, "http://127.0.0.1:9/hooks")

    # The inbox key sees its own webhook only; the account key sees both.
    assert_error(
        await http.get(f"/v1/webhooks/{account_hook['id']}", headers=inbox_key),
        404,
        "webhook_not_found",
    )
    listed = (await http.get("/v1/webhooks", headers=inbox_key)).json()["webhooks"]
    assert [h["id"] for h in listed] == [scoped["id"]]
    listed = (await http.get("/v1/webhooks", headers=tenant.headers)).json()["webhooks"]
    assert {h["id"] for h in listed} == {scoped["id"], account_hook["id"]}
    assert_error(
        await http.post(
            "/v1/webhooks",
            json={"url": receiver.url, "eventTypes": [RECEIVED], "inboxIds": [other["id"]]},
            headers=inbox_key,
        ),
        404,
        "inbox_not_found",
    )

    await receive(services, other, "Out of scope")
    await receive(services, mine, "In scope")
    (request,) = await receiver.wait_for(1)
    assert verified(scoped["secret"], request)["inboxId"] == mine["id"]
    await asyncio.sleep(0.5)
    assert len(receiver.requests) == 1


async def test_private_targets_are_refused_unless_allowed(
    services: Services, settings: Settings, tenant: Tenant
) -> None:
    """With ``webhook_allow_private`` off (production): refused at registration,
    and again when a delivery connects."""
    box = SecretBox(settings.webhook_secret_key.get_secret_value())
    sender = Sender(box, 5.0, False, 4)

    names = {"internal.example.com": ["10.1.2.3"], "public.example.com": ["93.184.216.34"]}

    async def resolve(host: str) -> list[str]:  # two made-up names, else the system's
        return names[host] if host in names else await resolve_host(host)

    async def no_pods(ref: str) -> str:
        raise AssertionError(ref)

    pool = services.messages.pool
    strict = WebhookService(
        WebhookStore(pool),
        MailStore(pool),
        no_pods,
        box,
        sender,
        False,
        resolve,
        page_tokens=PageTokens(b"k" * 32),
    )
    for url in (
        "http://127.0.0.1:8080/hooks",
        "http://localhost/hooks",
        "https://10.0.0.8/hooks",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]:8080/hooks",
        "http://[::ffff:127.0.0.1]/hooks",
        "https://internal.example.com/hooks",
    ):
        with pytest.raises(MailplaneError) as refused:
            await strict.create(
                tenant.account_id, Reach(), WebhookFields(url=url, event_types=(RECEIVED,))
            )
        assert refused.value.code == "invalid_argument" and refused.value.details == {
            "field": "url"
        }, url
    made = await strict.create(
        tenant.account_id,
        Reach(),
        WebhookFields(url="https://public.example.com/hooks", event_types=(RECEIVED,)),
    )
    assert made.secret is not None

    # At connect time: the sender refuses a loopback receiver that is listening.
    got, runner = await start_receiver()
    try:
        event = Event(
            "evt_01JD5B6Q8Z3Y7X2W1V0T9S8R7Q",
            RECEIVED,
            made.created_at,
            tenant.account_id,
            None,
            None,
            None,
            orjson.dumps({}).decode(),
            Position(),
        )
        for url in (got.url, got.url.replace("127.0.0.1", "localhost")):
            outcome = await sender.send(url, made.sealed_secret, event)
            assert outcome.status_code is None and outcome.error, url
            assert "private" in outcome.error
        assert got.requests == []
    finally:
        await runner.cleanup()
        await sender.close()
