"""Custom domains through the real gateway, the real domains and pods services and a
real DNS server on loopback: records, verification, scope, limits, isolation,
secrets and races (DESIGN §3, §4 Domains)."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import grpc
import httpx
import pytest
import structlog
from cryptography.fernet import Fernet
from mailplane.pods.v1 import pods_pb2, pods_pb2_grpc

from services.chassis.config import Settings
from services.domains.server import DomainsProcess
from tests.conftest import Tenant, Zone
from tests.gateway.test_rest import assert_error

ENTERPRISE = pods_pb2.PLAN_ENTERPRISE


def new_name() -> str:
    return f"d{uuid.uuid4().hex[:12]}.example.com"


def publish(
    zone: Zone,
    domain: dict[str, Any],
    skip: tuple[str, ...] = (),
    wrong: dict[str, str] | None = None,
) -> None:
    """Publishes the domain's records in the test DNS, except ``skip`` purposes;
    ``wrong`` maps a purpose to another value to publish instead."""
    for record in domain["records"]:
        zone.clear(record["name"], record["type"])
        if record["purpose"] in skip:
            continue
        zone.publish(
            record["name"], record["type"], (wrong or {}).get(record["purpose"], record["value"])
        )


def by_purpose(domain: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["purpose"]: r for r in domain["records"]}


async def create(http: httpx.AsyncClient, tenant: Tenant, **body: Any) -> httpx.Response:
    return await http.post("/v1/domains", json=body, headers=tenant.headers)


@pytest.fixture
async def big_tenant(make_tenant) -> Tenant:  # type: ignore[no-untyped-def]
    return await make_tenant("Enterprise", ENTERPRISE)  # type: ignore[no-any-return]


async def test_create_answers_pending_domain_with_records_to_publish(
    http: httpx.AsyncClient, tenant: Tenant, settings: Settings
) -> None:
    name = new_name()
    response = await create(http, tenant, domain=name.upper())
    assert response.status_code == 201, response.text
    domain = response.json()
    assert set(domain) == {
        "id",
        "domain",
        "podId",
        "status",
        "records",
        "canSend",
        "canReceive",
        "createdAt",
        "verifiedAt",
    }
    assert domain["domain"] == name and domain["podId"] is None and domain["status"] == "pending"
    assert domain["canSend"] is False and domain["verifiedAt"] is None
    records = by_purpose(domain)
    assert records["receiving"] == {
        "type": "MX",
        "name": name,
        "value": f"10 {settings.mail_host}",
        "purpose": "receiving",
        "status": "missing",
        "observed": None,
    }
    assert records["sending"]["value"] == f"v=spf1 include:{settings.spf_include} ~all"
    assert records["dkim"]["name"] == f"mailplane._domainkey.{name}"
    assert records["dkim"]["value"].startswith("v=DKIM1; k=rsa; p=")
    assert len(records["dkim"]["value"]) > 380  # an RSA-2048 public key
    assert records["dmarc"]["name"] == f"_dmarc.{name}"
    again = (await create(http, tenant, domain=new_name())).status_code
    assert again == 403  # trial plan: one custom domain


async def test_verify_with_every_record_right_verifies(
    http: httpx.AsyncClient, big_tenant: Tenant, dns_zone: Zone
) -> None:
    domain = (await create(http, big_tenant, domain=new_name())).json()
    publish(dns_zone, domain)
    verified = await http.post(f"/v1/domains/{domain['id']}/verify", headers=big_tenant.headers)
    assert verified.status_code == 200, verified.text
    body = verified.json()
    assert body["status"] == "verified" and body["canSend"] and body["canReceive"]
    assert body["verifiedAt"] is not None
    for record in body["records"]:
        assert record["status"] == "valid", record
        assert record["observed"] == record["value"]
    fetched = await http.get(f"/v1/domains/{domain['domain']}", headers=big_tenant.headers)
    assert fetched.json() == body


@pytest.mark.parametrize(
    ("missing", "can_send", "can_receive", "status"),
    [
        ("receiving", True, False, "failed"),
        ("sending", False, True, "failed"),
        ("dkim", False, False, "failed"),
        ("dmarc", True, True, "verified"),
    ],
)
async def test_each_missing_record_is_reported_missing(
    http: httpx.AsyncClient,
    big_tenant: Tenant,
    dns_zone: Zone,
    missing: str,
    can_send: bool,
    can_receive: bool,
    status: str,
) -> None:
    domain = (await create(http, big_tenant, domain=new_name())).json()
    publish(dns_zone, domain, skip=(missing,))
    body = (
        await http.post(f"/v1/domains/{domain['id']}/verify", headers=big_tenant.headers)
    ).json()
    records = by_purpose(body)
    assert records[missing]["status"] == "missing" and records[missing]["observed"] is None
    assert all(r["status"] == "valid" for p, r in records.items() if p != missing)
    assert (body["status"], body["canSend"], body["canReceive"]) == (status, can_send, can_receive)


@pytest.mark.parametrize(
    ("purpose", "published"),
    [
        ("receiving", "10 mx.elsewhere.example"),
        ("sending", "v=spf1 include:_spf.elsewhere.example ~all"),
        ("dkim", "v=DKIM1; k=rsa; p=MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAwrong"),
        ("dmarc", "not a dmarc record"),
    ],
)
async def test_each_wrong_record_is_invalid_with_the_observed_value(
    http: httpx.AsyncClient, big_tenant: Tenant, dns_zone: Zone, purpose: str, published: str
) -> None:
    domain = (await create(http, big_tenant, domain=new_name())).json()
    publish(dns_zone, domain, wrong={purpose: published})
    body = (
        await http.post(f"/v1/domains/{domain['id']}/verify", headers=big_tenant.headers)
    ).json()
    record = by_purpose(body)[purpose]
    assert record["status"] == "invalid" and record["observed"] == published
    assert body["status"] == ("verified" if purpose == "dmarc" else "failed")


async def test_a_record_fixed_later_verifies_on_the_next_verify(
    http: httpx.AsyncClient, big_tenant: Tenant, dns_zone: Zone
) -> None:
    domain = (await create(http, big_tenant, domain=new_name())).json()
    publish(dns_zone, domain, wrong={"dkim": "v=DKIM1; k=rsa; p=old"})
    first = (
        await http.post(f"/v1/domains/{domain['id']}/verify", headers=big_tenant.headers)
    ).json()
    assert first["status"] == "failed" and by_purpose(first)["dkim"]["status"] == "invalid"
    publish(dns_zone, domain)
    second = (
        await http.post(f"/v1/domains/{domain['id']}/verify", headers=big_tenant.headers)
    ).json()
    assert second["status"] == "verified" and by_purpose(second)["dkim"]["status"] == "valid"


async def test_verification_attempts_are_stored(
    http: httpx.AsyncClient, big_tenant: Tenant, dns_zone: Zone, domains: DomainsProcess
) -> None:
    domain = (await create(http, big_tenant, domain=new_name())).json()
    for _ in range(2):
        await http.post(f"/v1/domains/{domain['id']}/verify", headers=big_tenant.headers)
    rows = await domains.pool.fetch(
        "SELECT verified, records FROM verification_attempts WHERE domain_id = $1", domain["id"]
    )
    assert len(rows) == 2 and not rows[0]["verified"]
    assert {r["status"] for r in json.loads(rows[0]["records"])} == {"missing"}


async def test_a_name_verified_by_another_account_is_claimed(
    http: httpx.AsyncClient,
    make_tenant,
    dns_zone: Zone,  # type: ignore[no-untyped-def]
) -> None:
    owner, latecomer = await make_tenant(plan=ENTERPRISE), await make_tenant(plan=ENTERPRISE)
    name = new_name()
    mine = (await create(http, owner, domain=name)).json()
    publish(dns_zone, mine)
    assert (await http.post(f"/v1/domains/{name}/verify", headers=owner.headers)).json()[
        "status"
    ] == "verified"
    theirs = await create(http, latecomer, domain=name)
    assert theirs.status_code == 201
    dns_zone.clear(f"mailplane._domainkey.{name}", "TXT")
    publish(dns_zone, theirs.json())  # even with their own records published
    assert_error(
        await http.post(f"/v1/domains/{name}/verify", headers=latecomer.headers),
        409,
        "domain_claimed",
    )
    still = (await http.get(f"/v1/domains/{name}", headers=latecomer.headers)).json()
    assert still["status"] == "pending"


@pytest.mark.parametrize(
    "name",
    [
        "",
        "localhost",
        "a..b.com",
        "-a.example.com",
        "a-.example.com",
        "example.com.",
        "exa mple.com",
        "x" * 64 + ".com",
        ("a" * 62 + ".") * 4 + "com",
        "1.2.3.4",
        "mailplane.test",
        "mx.mailplane.test",
        "under_score.example.com",
    ],
)
async def test_invalid_domain_names_answer_400(
    http: httpx.AsyncClient, tenant: Tenant, name: str
) -> None:
    body = assert_error(await create(http, tenant, domain=name), 400, "invalid_argument")
    assert body["details"] == {"field": "domain"}
    assert (await http.get("/v1/domains", headers=tenant.headers)).json()["domains"] == []


async def test_names_are_lower_cased_and_idna_encoded(
    http: httpx.AsyncClient, tenant: Tenant
) -> None:
    tld = "t" + uuid.uuid4().hex[:8]  # never all digits: a numeric TLD is refused
    created = (await create(http, tenant, domain=f"Bücher.{tld.upper()}")).json()
    assert created["domain"] == f"xn--bcher-kva.{tld}"
    fetched = await http.get(f"/v1/domains/BÜCHER.{tld}", headers=tenant.headers)
    assert fetched.status_code == 200 and fetched.json()["id"] == created["id"]


async def test_duplicates_unknown_fields_and_missing_names(
    http: httpx.AsyncClient, big_tenant: Tenant
) -> None:
    name = new_name()
    await create(http, big_tenant, domain=name)
    assert_error(await create(http, big_tenant, domain=name.upper()), 409, "domain_exists")
    body = assert_error(await create(http, big_tenant), 400, "invalid_argument")
    assert body["details"] == {"field": "domain"}
    body = assert_error(
        await create(http, big_tenant, domain=new_name(), dkim="x"), 400, "invalid_argument"
    )
    assert body["details"] == {"field": "dkim"}


async def test_pod_scope_by_id_client_id_and_default_pod(
    http: httpx.AsyncClient, big_tenant: Tenant
) -> None:
    h = big_tenant.headers
    pod = (await http.post("/v1/pods", json={"clientId": "meridian"}, headers=h)).json()
    scoped = (await create(http, big_tenant, domain=new_name(), podId="meridian")).json()
    assert scoped["podId"] == pod["id"]
    on_default = (
        await create(http, big_tenant, domain=new_name(), podId=big_tenant.default_pod_id)
    ).json()
    assert on_default["podId"] == big_tenant.default_pod_id
    wide = (await create(http, big_tenant, domain=new_name())).json()
    listed = (await http.get("/v1/domains", params={"podId": "meridian"}, headers=h)).json()
    assert [d["id"] for d in listed["domains"]] == [scoped["id"]]
    via_pod = (await http.get(f"/v1/pods/{pod['id']}/domains", headers=h)).json()
    assert [d["id"] for d in via_pod["domains"]] == [scoped["id"]]
    everything = (await http.get("/v1/domains", headers=h)).json()["domains"]
    assert {d["id"] for d in everything} == {scoped["id"], on_default["id"], wide["id"]}
    pending = (await http.get("/v1/domains", params={"status": "pending"}, headers=h)).json()
    assert len(pending["domains"]) == 3
    assert (await http.get("/v1/domains", params={"status": "verified"}, headers=h)).json()[
        "domains"
    ] == []
    assert_error(
        await create(http, big_tenant, domain=new_name(), podId="nope"), 404, "pod_not_found"
    )
    assert_error(await http.get("/v1/pods/nope/domains", headers=h), 404, "pod_not_found")
    assert_error(
        await http.get("/v1/domains", params={"status": "odd"}, headers=h), 400, "invalid_argument"
    )


async def test_rescope_to_a_pod_and_back(http: httpx.AsyncClient, big_tenant: Tenant) -> None:
    h = big_tenant.headers
    pod = (await http.post("/v1/pods", json={"clientId": "cedar"}, headers=h)).json()
    domain = (await create(http, big_tenant, domain=new_name())).json()
    narrowed = await http.patch(
        f"/v1/domains/{domain['domain']}", json={"podId": "cedar"}, headers=h
    )
    assert narrowed.status_code == 200 and narrowed.json()["podId"] == pod["id"]
    widened = await http.patch(f"/v1/domains/{domain['id']}", json={"podId": None}, headers=h)
    assert widened.json()["podId"] is None
    assert_error(
        await http.patch(f"/v1/domains/{domain['id']}", json={"podId": "ghost"}, headers=h),
        404,
        "pod_not_found",
    )
    assert_error(
        await http.patch(f"/v1/domains/{domain['id']}", json={}, headers=h), 400, "invalid_argument"
    )


async def test_pod_with_domains_cannot_be_deleted_until_they_leave(
    http: httpx.AsyncClient, big_tenant: Tenant
) -> None:
    h = big_tenant.headers
    pod = (await http.post("/v1/pods", json={"clientId": "owner"}, headers=h)).json()
    domain = (await create(http, big_tenant, domain=new_name(), podId="owner")).json()
    body = assert_error(await http.delete("/v1/pods/owner", headers=h), 409, "pod_has_domains")
    assert body["details"] == {"domains": 1}
    assert (await http.get("/v1/pods/owner", headers=h)).status_code == 200
    await http.patch(f"/v1/domains/{domain['id']}", json={"podId": None}, headers=h)
    deleted = await http.delete("/v1/pods/owner", headers=h)
    assert deleted.json() == {"id": pod["id"], "deleted": True}


async def test_delete_domain(http: httpx.AsyncClient, tenant: Tenant) -> None:
    domain = (await create(http, tenant, domain=new_name())).json()
    deleted = await http.delete(f"/v1/domains/{domain['domain']}", headers=tenant.headers)
    assert deleted.json() == {"id": domain["id"], "deleted": True}
    assert_error(
        await http.get(f"/v1/domains/{domain['id']}", headers=tenant.headers),
        404,
        "domain_not_found",
    )
    assert (
        await create(http, tenant, domain=new_name())
    ).status_code == 201  # the slot is free again


async def test_plan_limit_and_expired_accounts(
    http: httpx.AsyncClient,
    tenant: Tenant,
    pods_channel: grpc.aio.Channel,
    operator_metadata: tuple[tuple[str, str], ...],
) -> None:
    assert (await create(http, tenant, domain=new_name())).status_code == 201
    body = assert_error(await create(http, tenant, domain=new_name()), 403, "domain_limit_reached")
    assert body["details"] == {"limit": 1}
    await pods_pb2_grpc.AccountServiceStub(pods_channel).SetAccountState(
        pods_pb2.SetAccountStateRequest(
            account_id=tenant.account_id, state=pods_pb2.ACCOUNT_STATE_EXPIRED
        ),
        metadata=operator_metadata,
    )
    assert_error(await create(http, tenant, domain=new_name()), 403, "account_expired")
    listed = (await http.get("/v1/domains", headers=tenant.headers)).json()["domains"]
    assert len(listed) == 1  # an expired account still reads


async def test_another_accounts_domains_are_not_found(
    http: httpx.AsyncClient, tenant: Tenant, other_tenant: Tenant
) -> None:
    theirs = (await create(http, other_tenant, domain=new_name())).json()
    for ref in (theirs["id"], theirs["domain"]):
        for method, path, body in (
            ("GET", f"/v1/domains/{ref}", None),
            ("PATCH", f"/v1/domains/{ref}", {"podId": None}),
            ("DELETE", f"/v1/domains/{ref}", None),
            ("POST", f"/v1/domains/{ref}/verify", None),
        ):
            response = await http.request(method, path, json=body, headers=tenant.headers)
            assert_error(response, 404, "domain_not_found")
    assert (await http.get("/v1/domains", headers=tenant.headers)).json()["domains"] == []
    assert_error(
        await create(http, tenant, domain=new_name(), podId=other_tenant.default_pod_id),
        404,
        "pod_not_found",
    )


async def test_dkim_private_key_is_encrypted_and_never_returned_or_logged(
    http: httpx.AsyncClient,
    big_tenant: Tenant,
    domains: DomainsProcess,
    settings: Settings,
    dns_zone: Zone,
) -> None:
    with structlog.testing.capture_logs() as lines:
        created = await create(http, big_tenant, domain=new_name())
        publish(dns_zone, created.json())
        verified = await http.post(
            f"/v1/domains/{created.json()['id']}/verify", headers=big_tenant.headers
        )
        listed = await http.get("/v1/domains", headers=big_tenant.headers)
    stored = await domains.pool.fetchval(
        "SELECT dkim_private_key_encrypted FROM domains WHERE id = $1", created.json()["id"]
    )
    assert settings.dkim_encryption_key is not None
    pem = Fernet(settings.dkim_encryption_key.get_secret_value()).decrypt(bytes(stored))
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert b"PRIVATE KEY" not in bytes(stored)
    key_body = pem.decode().splitlines()[1]
    assert lines, "the log capture saw nothing"
    for text in (created.text, verified.text, listed.text, json.dumps(lines, default=str)):
        assert "PRIVATE" not in text and key_body not in text


async def test_pod_scoped_create_racing_pod_delete_never_orphans(
    http: httpx.AsyncClient, big_tenant: Tenant, domains: DomainsProcess
) -> None:
    h = big_tenant.headers
    outcomes: set[tuple[int, int]] = set()
    for _ in range(50):
        pod = (await http.post("/v1/pods", headers=h)).json()
        made, gone = await asyncio.gather(
            create(http, big_tenant, domain=new_name(), podId=pod["id"]),
            http.delete(f"/v1/pods/{pod['id']}", headers=h),
        )
        outcomes.add((made.status_code, gone.status_code))
        assert made.status_code in (201, 404, 409), made.text
        assert gone.status_code in (200, 409), gone.text
        assert not (made.status_code == 201 and gone.status_code == 200)
        rows = await domains.pool.fetchval(
            "SELECT count(*) FROM domains WHERE pod_id = $1", pod["id"]
        )
        pod_exists = (await http.get(f"/v1/pods/{pod['id']}", headers=h)).status_code == 200
        assert rows == (1 if made.status_code == 201 else 0)
        assert pod_exists or rows == 0
    assert len(outcomes) >= 1


async def test_concurrent_creates_never_overshoot_the_plan_limit(
    http: httpx.AsyncClient,
    make_tenant,  # type: ignore[no-untyped-def]
) -> None:
    starter = await make_tenant(plan=pods_pb2.PLAN_STARTER)
    responses = await asyncio.gather(*(create(http, starter, domain=new_name()) for _ in range(20)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [201] * 3 + [403] * 17
    assert {r.json()["error"] for r in responses if r.status_code == 403} == {
        "domain_limit_reached"
    }
    assert len((await http.get("/v1/domains", headers=starter.headers)).json()["domains"]) == 3
