"""The event log through the real gateway and services (DESIGN §7.6): events of
real messages and thread changes, the cursor, filters, scoped keys, isolation,
commit-order safety and the ``wait`` long-poll."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
from mailplane.pods.v1 import pods_pb2

from services.messages.event_log import START, EventLog
from services.messages.models import Owner
from services.messages.store import MailStore, Reach
from tests.conftest import Services, Tenant
from tests.gateway.test_rest import assert_error
from tests.keys.test_scoped_keys import bearer, new_key
from tests.messages.mail_events import RECEIVED, new_inbox, receive


async def events(http: httpx.AsyncClient, headers: dict[str, str], **params: Any) -> dict[str, Any]:
    answer = await http.get("/v1/events", params=params, headers=headers)
    assert answer.status_code == 200, answer.text
    return answer.json()  # type: ignore[no-any-return]


async def test_a_received_message_raises_message_received_in_order_with_a_cursor(
    http: httpx.AsyncClient, services: Services, tenant: Tenant
) -> None:
    inbox = await new_inbox(http, services, tenant)
    await receive(services, inbox, "First")
    await receive(services, inbox, "Second")

    page = await events(http, tenant.headers)
    first, second = page["events"]
    # The ingest of these tests authenticates no sender: `.unauthenticated`.
    assert {first["type"], second["type"]} <= {"message.received", RECEIVED}
    assert first["data"]["message"]["subject"] == "First"
    assert second["data"]["message"]["subject"] == "Second"
    assert first["accountId"] == tenant.account_id and first["inboxId"] == inbox["id"]
    assert first["podId"] == inbox["podId"] and first["mailboxId"] is None
    assert "text" not in first["data"]["message"] and "html" not in first["data"]["message"]
    assert page["next"] == second["id"]

    after_first = await events(http, tenant.headers, after=first["id"])
    assert [e["id"] for e in after_first["events"]] == [second["id"]]
    done = await events(http, tenant.headers, after=second["id"])
    assert done == {"events": [], "next": second["id"]}
    assert [e["id"] for e in (await events(http, tenant.headers, limit=1))["events"]] == [
        first["id"]
    ]


async def test_a_thread_label_change_raises_thread_updated_and_types_filter(
    http: httpx.AsyncClient, services: Services, tenant: Tenant
) -> None:
    inbox = await new_inbox(http, services, tenant)
    await receive(services, inbox)
    (received,) = (await events(http, tenant.headers))["events"]
    thread_id = received["data"]["thread"]["id"]
    changed = await http.patch(
        f"/v1/threads/{thread_id}", json={"addLabels": ["leads"]}, headers=tenant.headers
    )
    assert changed.status_code == 200, changed.text

    (updated,) = (await events(http, tenant.headers, types="thread.updated"))["events"]
    assert updated["data"]["thread"]["id"] == thread_id
    assert "leads" in updated["data"]["thread"]["labels"]
    both = await events(http, tenant.headers, types=f"thread.updated,{received['type']}")
    assert [e["type"] for e in both["events"]] == [received["type"], "thread.updated"]
    assert (await events(http, tenant.headers, types="mailbox.paused"))["events"] == []
    assert_error(
        await http.get("/v1/events", params={"types": "message.exploded"}, headers=tenant.headers),
        400,
        "invalid_argument",
    )
    assert_error(
        await http.get("/v1/events", params={"after": "evt_nope"}, headers=tenant.headers),
        400,
        "invalid_argument",
    )
    assert_error(
        await http.get("/v1/events", params={"wait": "31"}, headers=tenant.headers),
        400,
        "invalid_argument",
    )


async def test_another_account_sees_none_of_the_events_and_its_filters_are_not_found(
    http: httpx.AsyncClient, services: Services, tenant: Tenant, other_tenant: Tenant
) -> None:
    inbox = await new_inbox(http, services, tenant)
    await receive(services, inbox)
    (mine,) = (await events(http, tenant.headers))["events"]

    assert (await events(http, other_tenant.headers))["events"] == []
    assert_error(
        await http.get("/v1/events", params={"inboxId": inbox["id"]}, headers=other_tenant.headers),
        404,
        "inbox_not_found",
    )
    assert_error(
        await http.get(
            "/v1/events", params={"podId": inbox["podId"]}, headers=other_tenant.headers
        ),
        404,
        "pod_not_found",
    )
    # Another account's event is no cursor either.
    assert_error(
        await http.get("/v1/events", params={"after": mine["id"]}, headers=other_tenant.headers),
        400,
        "invalid_argument",
    )


async def test_scoped_keys_see_only_their_scopes_events(
    http: httpx.AsyncClient,
    services: Services,
    make_tenant,  # type: ignore[no-untyped-def]
) -> None:
    tenant: Tenant = await make_tenant("Enterprise", pods_pb2.PLAN_ENTERPRISE)
    other_pod = (await http.post("/v1/pods", json={}, headers=tenant.headers)).json()
    here = await new_inbox(http, services, tenant)
    there = await new_inbox(http, services, tenant)
    elsewhere = await new_inbox(http, services, tenant, podId=other_pod["id"])
    for inbox in (here, there, elsewhere):
        await receive(services, inbox)

    inbox_key = bearer((await new_key(http, tenant, inboxId=here["id"]))["key"])
    seen = (await events(http, inbox_key))["events"]
    assert [e["inboxId"] for e in seen] == [here["id"]]
    assert_error(
        await http.get("/v1/events", params={"inboxId": there["id"]}, headers=inbox_key),
        404,
        "inbox_not_found",
    )

    pod_key = bearer((await new_key(http, tenant, podId=other_pod["id"]))["key"])
    assert [e["inboxId"] for e in (await events(http, pod_key))["events"]] == [elsewhere["id"]]
    assert_error(
        await http.get("/v1/events", params={"podId": here["podId"]}, headers=pod_key),
        404,
        "pod_not_found",
    )

    account = (await events(http, tenant.headers))["events"]
    assert [e["inboxId"] for e in account] == [here["id"], there["id"], elsewhere["id"]]
    by_pod = (await events(http, tenant.headers, podId=other_pod["id"]))["events"]
    assert [e["inboxId"] for e in by_pod] == [elsewhere["id"]]
    by_inbox = (await events(http, tenant.headers, inboxId=there["id"]))["events"]
    assert [e["inboxId"] for e in by_inbox] == [there["id"]]


async def test_an_event_is_not_readable_before_an_earlier_transaction_ends(
    services: Services, tenant: Tenant
) -> None:
    """A cursor must never pass an event that commits late: B's event (written
    after A's) stays unreadable while A is open, then both come in write order."""
    pool = services.messages.pool
    store, log = MailStore(pool), EventLog(pool)
    owner = Owner("inb_01JD5B6Q8Z3Y7X2W1V0T9S8R7Q", tenant.account_id, tenant.default_pod_id)
    async with pool.acquire() as a, a.transaction():
        first = await store.record_event(a, owner, "thread.updated", {"n": 1})
        async with pool.acquire() as b, b.transaction():
            second = await store.record_event(b, owner, "thread.updated", {"n": 2})
        # B committed, A is still open: nothing may be read past A's place.
        assert await log.read(tenant.account_id, START, [], Reach(), 10) == []
    read = await log.read(tenant.account_id, START, [], Reach(), 10)
    assert [e.id for e in read] == [first, second]


async def test_wait_returns_as_soon_as_an_event_commits(
    http: httpx.AsyncClient, services: Services, tenant: Tenant
) -> None:
    inbox = await new_inbox(http, services, tenant)
    await receive(services, inbox, "Before")
    (before,) = (await events(http, tenant.headers))["events"]

    # Nothing comes: the wait ends empty, the cursor unchanged.
    started = time.monotonic()
    empty = await events(http, tenant.headers, after=before["id"], wait=1)
    assert empty == {"events": [], "next": before["id"]}
    assert 0.9 <= time.monotonic() - started < 3

    # Many waits at once (one listener for all), each answered by one commit.
    async def poll() -> tuple[dict[str, Any], float]:
        answer = await events(http, tenant.headers, after=before["id"], wait=20)
        return answer, time.monotonic()

    polls = [asyncio.create_task(poll()) for _ in range(10)]
    await asyncio.sleep(0.5)
    assert not any(p.done() for p in polls)
    committed = time.monotonic()
    await receive(services, inbox, "During")
    for answer, at in await asyncio.gather(*polls):
        (during,) = answer["events"]
        assert during["data"]["message"]["subject"] == "During"
        assert answer["next"] == during["id"]
        assert at - committed < 2.0, "the long-poll answered late"


async def test_a_wait_out_of_range_is_a_400_naming_it(
    http: httpx.AsyncClient, tenant: Tenant
) -> None:
    for wait in ("-5", "31", "-2147483647"):
        body = assert_error(
            await http.get(f"/v1/events?wait={wait}", headers=tenant.headers),
            400,
            "invalid_argument",
        )
        assert body["details"]["field"] == "wait", body
