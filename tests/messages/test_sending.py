"""Mail leaves, the API half (DESIGN §7.4-7.5; seeds 001, 004): send, reply,
reply-all, forward, idempotency, drafts, pause holds, suppressions, send limits
and stats — through the real gateway and services, with the queue inspected in
PostgreSQL (the delivery worker has its own tests)."""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
import uuid
from typing import Any

import httpx

from services.messages.ingest import Ingest
from tests.conftest import Services, Tenant
from tests.keys.test_scoped_keys import bearer, new_key
from tests.messages.test_inbound import drain, message, new_inbox, send
from tests.messages.test_mailbox_policy import new_mailbox, patch


def key() -> dict[str, str]:
    return {"Idempotency-Key": uuid.uuid4().hex}


async def post(
    http: httpx.AsyncClient, tenant: Tenant, path: str, body: dict[str, Any], **headers: str
) -> httpx.Response:
    return await http.post(path, json=body, headers={**tenant.headers, **key(), **headers})


async def raw_of(http: httpx.AsyncClient, tenant: Tenant, message_id: str) -> Any:
    answer = await http.get(f"/v1/messages/{message_id}/raw", headers=tenant.headers)
    assert answer.status_code == 200, answer.text
    return email.message_from_bytes(answer.content, policy=email.policy.default)


async def deliveries(services: Services, message_id: str) -> list[tuple[str, list[str], str]]:
    rows = await services.messages.pool.fetch(
        "SELECT domain, recipients, state FROM deliveries WHERE message_id = $1 ORDER BY domain",
        message_id,
    )
    return [(r["domain"], list(r["recipients"]), r["state"]) for r in rows]


async def events_of(
    http: httpx.AsyncClient, tenant: Tenant, kind: str, **params: str
) -> list[dict[str, Any]]:
    answer = await http.get("/v1/events", params={"types": kind, **params}, headers=tenant.headers)
    assert answer.status_code == 200, answer.text
    return answer.json()["events"]  # type: ignore[no-any-return]


async def test_a_send_is_queued_with_one_delivery_per_recipient_domain(
    http: httpx.AsyncClient, services: Services, tenant: Tenant
) -> None:
    inbox = await new_inbox(http, services, tenant)
    answer = await post(
        http,
        tenant,
        f"/v1/inboxes/{inbox['id']}/messages",
        {
            "to": ["Ada Lovelace <Ada@Example.com>", "bob@example.com"],
            "cc": ["carol@example.org"],
            "bcc": ["dave@example.net"],
            "subject": "Quote for 100 units",
            "text": "Here is the quote.",
            "html": "<p>Here is the quote.</p>",
            "headers": {"X-Campaign": "q4"},
            "labels": ["quotes"],
            "attachments": [
                {
                    "filename": "quote.csv",
                    "contentType": "text/csv",
                    "content": base64.b64encode(b"units,price\n100,42\n").decode(),
                }
            ],
        },
    )
    assert answer.status_code == 202, answer.text
    sent = answer.json()
    assert sent["status"] == "queued" and sent["direction"] == "outbound"
    assert sent["labels"] == ["quotes", "sent"]
    assert sent["from"] == inbox["email"] and sent["inboxId"] == inbox["id"]
    assert sent["to"] == ["Ada Lovelace <Ada@example.com>", "bob@example.com"]
    assert sent["bcc"] == ["dave@example.net"]
    assert [a["filename"] for a in sent["attachments"]] == ["quote.csv"]
    assert await deliveries(services, sent["id"]) == [
        ("example.com", ["ada@example.com", "bob@example.com"], "queued"),
        ("example.net", ["dave@example.net"], "queued"),
        ("example.org", ["carol@example.org"], "queued"),
    ]
    raw = await raw_of(http, tenant, sent["id"])
    assert raw["From"] == inbox["email"] and raw["Bcc"] is None
    assert raw["X-Campaign"] == "q4" and raw["Message-ID"] == sent["messageId"]
    assert sent["messageId"].endswith("@mailplane.test>")
    return_path = await services.messages.pool.fetchval(
        "SELECT return_path FROM messages WHERE id = $1", sent["id"]
    )
    local, domain = inbox["email"].split("@")
    assert return_path == f"{local}+bounce-{sent['id'][4:].lower()}@{domain}"
    (event,) = await events_of(http, tenant, "message.queued", inboxId=inbox["id"])
    assert event["data"]["message"]["id"] == sent["id"]


async def test_bad_sends_are_refused_and_change_nothing(
    http: httpx.AsyncClient, services: Services, tenant: Tenant, other_tenant: Tenant
) -> None:
    inbox = await new_inbox(http, services, tenant)
    path = f"/v1/inboxes/{inbox['id']}/messages"
    body = {"to": ["ada@example.com"], "subject": "Hi", "text": "Hello"}
    missing = await http.post(path, json=body, headers=tenant.headers)
    assert missing.status_code == 400 and "Idempotency-Key" in missing.json()["message"]
    for bad, field in (
        ({**body, "to": ["not an address"]}, "to[0]"),
        ({**body, "to": []}, "to"),
        ({**body, "headers": {"From": "boss@example.com"}}, "headers"),
        ({**body, "labels": ["spam"]}, "labels"),
    ):
        answer = await post(http, tenant, path, bad)
        assert answer.status_code == 400, answer.text
        assert field in answer.json()["message"]
    elsewhere = await post(http, other_tenant, path, body)
    assert elsewhere.status_code == 404 and elsewhere.json()["error"] == "inbox_not_found"
    reader = bearer((await new_key(http, tenant, permissions=["read"]))["key"])
    refused = await http.post(path, json=body, headers={**reader, **key()})
    assert refused.status_code == 403
    listed = await http.get(f"/v1/inboxes/{inbox['id']}/messages", headers=tenant.headers)
    assert listed.json()["messages"] == []


async def test_an_idempotency_key_sends_once(
    http: httpx.AsyncClient, services: Services, tenant: Tenant
) -> None:
    inbox = await new_inbox(http, services, tenant)
    path = f"/v1/inboxes/{inbox['id']}/messages"
    body = {"to": ["ada@example.com"], "subject": "Once", "text": "Only once."}
    headers = {**tenant.headers, "Idempotency-Key": "order-42"}
    first = await http.post(path, json=body, headers=headers)
    again = await http.post(path, json=body, headers=headers)
    assert first.status_code == again.status_code == 202
    assert again.json() == first.json()
    other = await http.post(path, json={**body, "text": "Changed."}, headers=headers)
    assert other.status_code == 422 and other.json()["error"] == "idempotency_key_reused"

    racing = {**tenant.headers, "Idempotency-Key": "order-43"}
    answers = await asyncio.gather(*(http.post(path, json=body, headers=racing) for _ in range(8)))
    codes = sorted({a.status_code for a in answers})
    assert set(codes) <= {202, 409}, codes
    ids = {a.json()["id"] for a in answers if a.status_code == 202}
    assert len(ids) == 1
    conflicts = [a.json()["error"] for a in answers if a.status_code == 409]
    assert set(conflicts) <= {"idempotency_key_in_use"}
    stored = await services.messages.pool.fetchval(
        "SELECT count(*) FROM messages WHERE owner_id = $1", inbox["id"]
    )
    assert stored == 2  # order-42 and order-43, once each


async def test_a_reply_and_a_forward_are_threaded_with_the_original(
    http: httpx.AsyncClient,
    services: Services,
    tenant: Tenant,
    edge: tuple[str, int],
    ingest: Ingest,
) -> None:
    inbox = await new_inbox(http, services, tenant)
    original = message(inbox["email"], subject="Re: Re: Quote", body="Could you quote?")
    original["Cc"] = f"bob@example.com, {inbox['email']}"
    original["References"] = "<older@example.com>"
    await send(edge, original, [inbox["email"]])
    await drain(ingest)
    listed = await http.get(f"/v1/inboxes/{inbox['id']}/messages", headers=tenant.headers)
    (received,) = listed.json()["messages"]

    reply = await post(
        http, tenant, f"/v1/messages/{received['id']}/reply", {"text": "100 units: $4,200."}
    )
    assert reply.status_code == 202, reply.text
    got = reply.json()
    assert got["threadId"] == received["threadId"]
    assert got["subject"] == "Re: Re: Quote"
    assert got["to"] == ["Ada Lovelace <ada@example.com>"] and got["cc"] == []
    assert got["inReplyTo"] == original["Message-ID"]
    assert got["references"] == ["<older@example.com>", original["Message-ID"]]
    raw = await raw_of(http, tenant, got["id"])
    assert raw["In-Reply-To"] == original["Message-ID"]

    everyone = await post(http, tenant, f"/v1/messages/{received['id']}/reply-all", {"text": "."})
    assert everyone.status_code == 202, everyone.text
    assert everyone.json()["cc"] == ["bob@example.com"]  # never the inbox itself

    forward = await post(
        http,
        tenant,
        f"/v1/messages/{received['id']}/forward",
        {"to": ["carol@example.org"], "text": "FYI"},
    )
    assert forward.status_code == 202, forward.text
    fwd = forward.json()
    assert fwd["subject"] == "Fwd: Re: Re: Quote" and fwd["threadId"] == received["threadId"]
    body = (await http.get(f"/v1/messages/{fwd['id']}", headers=tenant.headers)).json()["text"]
    assert body.startswith("FYI") and "Could you quote?" in body
    thread = (await http.get(f"/v1/threads/{received['threadId']}", headers=tenant.headers)).json()
    assert thread["messageCount"] == 4 and "sent" in thread["labels"]


async def test_drafts_are_listed_per_inbox_and_pod_and_sent_once(
    http: httpx.AsyncClient, services: Services, tenant: Tenant
) -> None:
    inbox = await new_inbox(http, services, tenant)
    made = await http.post(
        f"/v1/inboxes/{inbox['id']}/drafts",
        json={"to": ["ada@example.com"], "subject": "Draft", "text": "v1"},
        headers=tenant.headers,
    )
    assert made.status_code == 201, made.text
    draft = made.json()
    assert draft["id"].startswith("drf_") and draft["inboxId"] == inbox["id"]
    changed = await http.patch(
        f"/v1/drafts/{draft['id']}", json={"text": "v2"}, headers=tenant.headers
    )
    assert changed.status_code == 200 and changed.json()["text"] == "v2"
    assert changed.json()["subject"] == "Draft"
    for path in (f"/v1/inboxes/{inbox['id']}/drafts", f"/v1/pods/{inbox['podId']}/drafts"):
        listed = await http.get(path, headers=tenant.headers)
        assert [d["id"] for d in listed.json()["drafts"]] == [draft["id"]], path

    sent = await http.post(f"/v1/drafts/{draft['id']}/send", json={}, headers=tenant.headers)
    assert sent.status_code == 202, sent.text
    assert sent.json()["status"] == "queued" and sent.json()["text"] == "v2"
    again = await http.post(f"/v1/drafts/{draft['id']}/send", json={}, headers=tenant.headers)
    assert again.status_code == 404 and again.json()["error"] == "draft_not_found"
    (event,) = await events_of(http, tenant, "draft.sent", inboxId=inbox["id"])
    assert event["data"]["draft"]["id"] == draft["id"]


async def test_a_paused_mailbox_refuses_sends_and_holds_then_releases_its_queue(
    http: httpx.AsyncClient, services: Services, tenant: Tenant
) -> None:
    mailbox = await new_mailbox(http, tenant, displayName="Support")
    path = f"/v1/agent/mailboxes/{mailbox['id']}/messages"
    queued = await post(http, tenant, path, {"to": ["ada@example.com"], "text": "now"})
    assert queued.status_code == 202, queued.text
    assert queued.json()["from"] == f"Support <{mailbox['address']}>"
    draft = (
        await http.post(
            f"/v1/agent/mailboxes/{mailbox['id']}/drafts",
            json={"to": ["bob@example.com"], "text": "later"},
            headers=tenant.headers,
        )
    ).json()
    scheduled = await http.post(
        f"/v1/drafts/{draft['id']}/send",
        json={"sendAt": "2099-01-01T00:00:00Z"},
        headers=tenant.headers,
    )
    assert scheduled.status_code == 400  # more than 30 days ahead
    scheduled = await http.post(
        f"/v1/drafts/{draft['id']}/send", json={"sendAt": _in_days(2)}, headers=tenant.headers
    )
    assert scheduled.status_code == 202 and scheduled.json()["status"] == "scheduled"

    await patch(http, tenant, mailbox, status="paused")
    refused = await post(http, tenant, path, {"to": ["ada@example.com"], "text": "x"})
    assert refused.status_code == 409 and refused.json()["error"] == "mailbox_paused"
    assert refused.json()["details"] == {"blockReason": "mailbox_paused"}
    ids = [queued.json()["id"], scheduled.json()["id"]]
    for message_id in ids:
        got = (await http.get(f"/v1/messages/{message_id}", headers=tenant.headers)).json()
        assert got["status"] == "held" and "held" in got["labels"]
        assert {d[2] for d in await deliveries(services, message_id)} == {"held"}
    held = await events_of(http, tenant, "message.held", mailboxId=mailbox["id"])
    assert sorted(e["data"]["message"]["id"] for e in held) == sorted(ids)

    await patch(http, tenant, mailbox, status="active")
    statuses = []
    for message_id in ids:
        got = (await http.get(f"/v1/messages/{message_id}", headers=tenant.headers)).json()
        statuses.append(got["status"])
        assert "held" not in got["labels"]
        assert {d[2] for d in await deliveries(services, message_id)} == {"queued"}
    assert statuses == ["queued", "scheduled"]
    released = await events_of(http, tenant, "message.released", mailboxId=mailbox["id"])
    assert sorted(e["data"]["message"]["id"] for e in released) == sorted(ids)


async def test_suppressed_recipients_and_send_limits_refuse_a_send(
    http: httpx.AsyncClient, services: Services, tenant: Tenant
) -> None:
    inbox = await new_inbox(http, services, tenant)
    path = f"/v1/inboxes/{inbox['id']}/messages"
    made = await http.post(
        "/v1/suppressions", json={"address": "Gone@Example.com"}, headers=tenant.headers
    )
    assert made.status_code == 201 and made.json()["reason"] == "manual"
    refused = await post(http, tenant, path, {"to": ["gone@example.com"], "text": "x"})
    assert refused.status_code == 422 and refused.json()["error"] == "recipient_suppressed"
    listed = (await http.get("/v1/suppressions", headers=tenant.headers)).json()
    assert [s["address"] for s in listed["suppressions"]] == ["gone@example.com"]
    removed = await http.delete("/v1/suppressions/gone@example.com", headers=tenant.headers)
    assert removed.status_code == 200
    again = await post(http, tenant, path, {"to": ["gone@example.com"], "text": "x"})
    assert again.status_code == 202

    # The day's window full (the setting's default is 50,000 per day).
    await services.messages.pool.execute(
        "UPDATE send_counts SET n = 50000 WHERE owner_id = $1 AND window_kind = 'day'",
        inbox["id"],
    )
    limited = await post(http, tenant, path, {"to": ["ada@example.com"], "text": "x"})
    assert limited.status_code == 429 and limited.json()["error"] == "send_rate_limited"
    assert 0 < int(limited.headers["Retry-After"]) <= 86_400
    count = await services.messages.pool.fetchval(
        "SELECT count(*) FROM messages WHERE owner_id = $1", inbox["id"]
    )
    assert count == 1


async def test_stats_count_what_was_sent_and_received(
    http: httpx.AsyncClient,
    services: Services,
    tenant: Tenant,
    edge: tuple[str, int],
    ingest: Ingest,
) -> None:
    mailbox = await new_mailbox(http, tenant)
    path = f"/v1/agent/mailboxes/{mailbox['id']}"
    for _ in range(3):
        sent = await post(http, tenant, f"{path}/messages", {"to": ["a@example.com"]})
        assert sent.status_code == 202
    await send(edge, message(mailbox["address"]), [mailbox["address"]])
    await drain(ingest)
    answer = await http.get(f"{path}/stats", params={"period": "24h"}, headers=tenant.headers)
    assert answer.status_code == 200, answer.text
    stats = answer.json()
    assert stats["mailboxId"] == mailbox["id"] and stats["period"] == "24h"
    assert stats["sends"] == {"total": 3, "period": 3}
    assert stats["inbound"] == {"period": 1}
    assert stats["deliverability"]["opened"] is None
    assert stats["lastSendAt"] is not None
    assert sum(d["count"] for d in stats["dailySends"]) == 3
    bad = await http.get(f"{path}/stats", params={"period": "1y"}, headers=tenant.headers)
    assert bad.status_code == 400


def _in_days(days: int) -> str:
    from datetime import UTC, datetime, timedelta

    return (datetime.now(UTC) + timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%SZ")
