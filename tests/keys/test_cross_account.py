"""The cross-account matrix (issue 6): every REST route of ``/openapi.json`` that
names a resource, called by another account with the first account's IDs,
answers 404 — never 403, never data. A new route is walked automatically; one
that needs a body must add it to ``BODIES``, or the test fails."""

from __future__ import annotations

import re
import uuid
from typing import Any

import httpx
from mailplane.pods.v1 import pods_pb2

from services.messages.ingest import Ingest
from tests.conftest import Services, Tenant
from tests.inboxes.test_inboxes import new_pod
from tests.messages.test_inbound import drain, message, route, send

#: Valid bodies for the routes that refuse an empty one (so the call reaches the
#: service and its account filter, not the gateway's validation).
BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("patch", "/v1/domains/{domain}"): {"podId": None},
    ("post", "/v1/agent/mailboxes/{mailbox}/clone"): {"address": "clone-x@mailplane.test"},
    ("post", "/v1/agent/mailboxes/{mailbox}/folders"): {"name": "Probe"},
    ("post", "/v1/agent/mailboxes/{mailbox}/rules"): {
        "name": "Probe",
        "action": {"type": "archive"},
    },
    ("post", "/v1/inboxes/{inbox}/messages"): {"to": ["probe@example.com"], "text": "x"},
    ("post", "/v1/agent/mailboxes/{mailbox}/messages"): {"to": ["probe@example.com"]},
    ("post", "/v1/messages/{message}/forward"): {"to": ["probe@example.com"]},
    ("patch", "/v1/drafts/{draft}"): {"subject": "Probe"},
}


async def received(
    http: httpx.AsyncClient,
    services: Services,
    tenant: Tenant,
    edge: tuple[str, int],
    ingest: Ingest,
    inbox: dict[str, Any],
) -> dict[str, Any]:
    """A message with an attachment received by ``inbox`` over real SMTP."""
    await route(services, inbox["email"], {**inbox, "accountId": tenant.account_id}, "inbox")
    mail = message(inbox["email"])
    mail.add_attachment(b"%PDF-1.4", maintype="application", subtype="pdf", filename="q.pdf")
    await send(edge, mail, [inbox["email"]])
    await drain(ingest)
    page = await http.get(f"/v1/inboxes/{inbox['id']}/messages", headers=tenant.headers)
    (got,) = page.json()["messages"]
    return got  # type: ignore[no-any-return]


async def test_every_route_with_another_accounts_ids_answers_404(
    http: httpx.AsyncClient,
    make_tenant: Any,
    services: Services,
    edge: tuple[str, int],
    ingest: Ingest,
) -> None:
    victim: Tenant = await make_tenant("Victim", pods_pb2.PLAN_ENTERPRISE)
    intruder: Tenant = await make_tenant("Intruder", pods_pb2.PLAN_ENTERPRISE)
    h = victim.headers
    pod = await new_pod(http, victim, clientId="victim-pod")
    inbox = (await http.post("/v1/inboxes", json={"podId": pod["id"]}, headers=h)).json()
    domain = (
        await http.post(
            "/v1/domains", json={"domain": f"v{uuid.uuid4().hex[:8]}.example"}, headers=h
        )
    ).json()
    mailbox = (
        await http.post(
            "/v1/agent/mailboxes",
            json={"address": f"v{uuid.uuid4().hex[:8]}@mailplane.test"},
            headers=h,
        )
    ).json()
    base = f"/v1/agent/mailboxes/{mailbox['id']}"
    folder = (await http.post(f"{base}/folders", json={"name": "F"}, headers=h)).json()
    rule = (
        await http.post(
            f"{base}/rules", json={"name": "R", "action": {"type": "archive"}}, headers=h
        )
    ).json()
    key = (await http.post("/v1/api-keys", json={"name": "victim"}, headers=h)).json()
    mail = await received(http, services, victim, edge, ingest, inbox)
    webhook = (
        await http.post(
            "/v1/webhooks",
            json={"url": "http://127.0.0.1:9/hooks", "eventTypes": ["thread.updated"]},
            headers=h,
        )
    ).json()
    draft = (
        await http.post(
            f"/v1/inboxes/{inbox['id']}/drafts", json={"to": ["ada@example.com"]}, headers=h
        )
    ).json()
    suppressed = (
        await http.post("/v1/suppressions", json={"address": "gone@example.com"}, headers=h)
    ).json()
    ids = {
        "draft": draft["id"],
        "address": suppressed["address"],
        "pod": pod["id"],
        "inbox": inbox["id"],
        "domain": domain["id"],
        "mailbox": mailbox["id"],
        "folder": folder["id"],
        "rule": rule["id"],
        "key_id": key["id"],
        "message": mail["id"],
        "thread": mail["threadId"],
        "attachment": mail["attachments"][0]["id"],
        "webhook": webhook["id"],
    }
    paths = (await http.get("/openapi.json")).json()["paths"]
    walked = 0
    for path, methods in paths.items():
        params = re.findall(r"{(\w+)}", path)
        if not params:
            continue
        url = path.format(**{p: ids[p] for p in params})
        for method in methods:
            body = BODIES.get((method, path))
            response = await http.request(
                method.upper(),
                url,
                json=body if body is not None else ({} if method in ("post", "patch") else None),
                headers={**intruder.headers, "Idempotency-Key": uuid.uuid4().hex},
            )
            assert response.status_code == 404, (method, path, response.text)
            assert response.json()["error"].endswith("not_found"), (method, path, response.text)
            for secret in ids.values():
                assert secret not in response.text or secret in url, (method, path)
            walked += 1
    assert walked >= 25
    # Listings with no resource in the path show none of the victim's.
    for listing in (
        "/v1/pods",
        "/v1/inboxes",
        "/v1/domains",
        "/v1/agent/mailboxes",
        "/v1/api-keys",
        "/v1/threads",
    ):
        text = (await http.get(listing, headers=intruder.headers)).text
        assert not any(i in text for i in ids.values()), listing
    # The victim's resources are unchanged.
    assert (await http.get(f"/v1/inboxes/{inbox['id']}", headers=h)).status_code == 200
    assert len((await http.get(f"{base}/rules", headers=h)).json()["rules"]) == 1
