"""Inboxes through the real gateway and the real pods, domains and inboxes services:
allocation (seed 003), placement, limits, credentials, lifecycle, isolation,
cross-service wiring and races (DESIGN §3, §4 Inboxes)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import re
import uuid
from collections import Counter
from typing import Any

import grpc
import httpx
import pytest
from argon2 import PasswordHasher
from mailplane.inboxes.v1 import inboxes_pb2, inboxes_pb2_grpc
from mailplane.pods.v1 import pods_pb2, pods_pb2_grpc

from services.chassis.config import Settings
from services.inboxes.credentials import KEYED_PREFIX, CredentialHasher, new_password
from services.inboxes.server import InboxesProcess
from tests.conftest import Tenant, Zone
from tests.domains.test_domains import new_name, publish
from tests.gateway.test_rest import assert_error

INBOX_FIELDS = {
    "id",
    "podId",
    "email",
    "username",
    "domain",
    "displayName",
    "createdAt",
    "updatedAt",
}


def unique(prefix: str = "agent") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def create(
    http: httpx.AsyncClient, tenant: Tenant, strict: bool = False, **body: Any
) -> httpx.Response:
    return await http.post(
        "/v1/inboxes",
        params={"strict": "true"} if strict else None,
        json=body,
        headers=tenant.headers,
    )


async def new_pod(http: httpx.AsyncClient, tenant: Tenant, **body: Any) -> dict[str, Any]:
    response = await http.post("/v1/pods", json=body, headers=tenant.headers)
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


async def verified_domain(
    http: httpx.AsyncClient, tenant: Tenant, zone: Zone, pod: str | None = None
) -> dict[str, Any]:
    """Adds a domain (account-wide, or scoped to ``pod``), publishes its records in
    the test DNS and verifies it."""
    body: dict[str, Any] = {"domain": new_name()}
    if pod is not None:
        body["podId"] = pod
    response = await http.post("/v1/domains", json=body, headers=tenant.headers)
    assert response.status_code == 201, response.text
    publish(zone, response.json())
    verified = await http.post(
        f"/v1/domains/{response.json()['id']}/verify", headers=tenant.headers
    )
    assert verified.json()["status"] == "verified", verified.text
    return verified.json()  # type: ignore[no-any-return]


@pytest.fixture
async def big_tenant(make_tenant) -> Tenant:  # type: ignore[no-untyped-def]
    return await make_tenant("Enterprise", pods_pb2.PLAN_ENTERPRISE)  # type: ignore[no-any-return]


@pytest.fixture
async def big_other(make_tenant) -> Tenant:  # type: ignore[no-untyped-def]
    return await make_tenant("Other enterprise", pods_pb2.PLAN_ENTERPRISE)  # type: ignore[no-any-return]


@pytest.fixture
def login(inboxes: InboxesProcess, settings: Settings, operator_metadata: Any):  # type: ignore[no-untyped-def]
    """``await login(email, password)``: the VerifyInboxCredentials answer, or the
    gRPC status code when refused."""

    async def verify(email: str, password: str) -> Any:
        async with grpc.aio.insecure_channel(settings.inboxes_addr) as channel:
            stub = inboxes_pb2_grpc.InboxServiceStub(channel)
            try:
                return await stub.VerifyInboxCredentials(
                    inboxes_pb2.VerifyInboxCredentialsRequest(username=email, password=password),
                    metadata=operator_metadata,
                )
            except grpc.aio.AioRpcError as error:
                return error.code()

    return verify


# Allocation (seed 003) -----------------------------------------------------------


async def test_create_on_the_shared_domain_in_the_default_pod(
    http: httpx.AsyncClient, tenant: Tenant, settings: Settings
) -> None:
    name = unique()
    response = await create(http, tenant, username=name.upper(), displayName="Scout")
    assert response.status_code == 201, response.text
    inbox = response.json()
    assert set(inbox) == INBOX_FIELDS | {"existed", "credentials"}
    assert inbox["username"] == name and inbox["domain"] == settings.shared_domain
    assert inbox["email"] == f"{name}@{settings.shared_domain}"
    assert inbox["podId"] == tenant.default_pod_id and inbox["existed"] is False
    assert inbox["displayName"] == "Scout"
    imap, smtp = inbox["credentials"]["imap"], inbox["credentials"]["smtp"]
    assert imap == {
        "host": settings.imap_host,
        "port": settings.imap_port,
        "tls": True,
        "username": inbox["email"],
        "password": imap["password"],
    }
    assert smtp["host"] == settings.smtp_host and smtp["port"] == settings.smtp_port
    assert smtp["starttls"] is True and smtp["password"] == imap["password"]
    assert len(imap["password"]) >= 32
    fetched = await http.get(f"/v1/inboxes/{inbox['id']}", headers=tenant.headers)
    assert fetched.status_code == 200 and set(fetched.json()) == INBOX_FIELDS


async def test_retrying_the_same_address_in_the_same_pod_is_idempotent(
    http: httpx.AsyncClient, tenant: Tenant
) -> None:
    name = unique()
    first = (await create(http, tenant, username=name)).json()
    for retry in (name, name.upper(), f"  {name} "):
        again = await create(http, tenant, username=retry, podId=tenant.default_pod_id)
        assert again.status_code == 200, again.text
        body = again.json()
        assert body["existed"] is True and body["credentials"] is None
        assert body["id"] == first["id"] and body["username"] == name
    strict = await create(http, tenant, strict=True, username=name)
    assert strict.status_code == 200 and strict.json()["id"] == first["id"]
    listed = (await http.get("/v1/inboxes", headers=tenant.headers)).json()["inboxes"]
    assert [i["id"] for i in listed] == [first["id"]]


async def test_a_taken_username_falls_back_in_order_or_is_refused_when_strict(
    http: httpx.AsyncClient, big_tenant: Tenant, big_other: Tenant
) -> None:
    name = unique()
    for held in (name, f"{name}1", f"{name}3"):
        assert (await create(http, big_other, username=held)).status_code == 201
    second = await create(http, big_tenant, username=name)
    assert second.status_code == 201 and second.json()["username"] == f"{name}2"
    third = await create(
        http, big_tenant, username=name, podId=(await new_pod(http, big_tenant))["id"]
    )
    assert third.status_code == 201 and third.json()["username"] == f"{name}4"
    refused = await create(http, big_tenant, strict=True, username=f"{name}1")
    assert_error(refused, 409, "username_taken")
    assert refused.json()["details"] == {"email": f"{name}1@mailplane.test"}


async def test_the_same_username_in_another_pod_of_the_account_falls_back(
    http: httpx.AsyncClient, tenant: Tenant
) -> None:
    name = unique()
    first = await create(http, tenant, username=name)
    pod = await new_pod(http, tenant, clientId="other")
    second = await create(http, tenant, username=name, podId="other")
    assert second.status_code == 201 and second.json()["existed"] is False
    assert second.json()["username"] == f"{name}1" and second.json()["podId"] == pod["id"]
    assert second.json()["id"] != first.json()["id"]
    # Retrying in that pod finds the fallback address it was given.
    retry = await create(http, tenant, username=name, podId="other")
    assert retry.status_code == 200 and retry.json()["id"] == second.json()["id"]


async def test_when_every_fallback_is_taken_the_answer_is_username_taken(
    http: httpx.AsyncClient, tenant: Tenant, inboxes: InboxesProcess, settings: Settings
) -> None:
    name = unique("full")
    rows = [
        (f"inb_fill{uuid.uuid4().hex}", "acct_someone_else", "pod_x", n, settings.shared_domain)
        for n in [name] + [f"{name}{i}" for i in range(1, 100)]
    ]
    await inboxes.pool.executemany(
        "INSERT INTO inboxes (id, account_id, pod_id, username, domain, state) "
        "VALUES ($1, $2, $3, $4, $5, 'live')",
        rows,
    )
    taken = await create(http, tenant, username=name)
    assert_error(taken, 409, "username_taken")
    assert "all taken" in taken.json()["message"]
    await inboxes.pool.execute("DELETE FROM inboxes WHERE username = $1", f"{name}57")
    freed = await create(http, tenant, username=name)
    assert freed.status_code == 201 and freed.json()["username"] == f"{name}57"


@pytest.mark.parametrize(
    "username", ["postmaster", "abuse", "hostmaster", "webmaster", "noreply", "Mailer-Daemon"]
)
async def test_reserved_role_names_are_refused(
    http: httpx.AsyncClient, tenant: Tenant, username: str
) -> None:
    response = await create(http, tenant, username=username)
    assert_error(response, 400, "invalid_argument")
    assert "username" in response.json()["message"] and "reserved" in response.json()["message"]


@pytest.mark.parametrize(
    "username", ["", ".agent", "agent.", "-a", "a_", "a..b", "a b", "ag@nt", "agént", "a" * 65]
)
async def test_invalid_usernames_answer_400_naming_the_field(
    http: httpx.AsyncClient, tenant: Tenant, username: str
) -> None:
    response = await create(http, tenant, username=username)
    assert_error(response, 400, "invalid_argument")
    assert "username" in response.json()["message"]
    listed = (await http.get("/v1/inboxes", headers=tenant.headers)).json()["inboxes"]
    assert listed == []


async def test_usernames_are_generated_from_display_name_pod_name_or_randomly(
    http: httpx.AsyncClient, big_tenant: Tenant, big_other: Tenant
) -> None:
    tag = uuid.uuid4().hex[:6]
    from_display = (await create(http, big_tenant, displayName=f"Support Bot {tag}")).json()
    assert from_display["username"] == f"support.bot.{tag}"
    pod = await new_pod(http, big_tenant, name=f"Acme Corp {tag}")
    from_pod = (await create(http, big_tenant, podId=pod["id"])).json()
    assert from_pod["username"] == f"acme.corp.{tag}" and from_pod["podId"] == pod["id"]
    unnamed = await new_pod(http, big_tenant)
    random_one = (await create(http, big_tenant, podId=unnamed["id"])).json()
    assert random_one["username"].startswith("inbox-") and len(random_one["username"]) == 14
    # Another account asking for the same display name gets the first fallback.
    other = (await create(http, big_other, displayName=f"Support Bot {tag}")).json()
    assert other["username"] == f"support.bot.{tag}1"


# Placement ---------------------------------------------------------------------------


async def test_pod_by_client_id_and_unknown_pods(http: httpx.AsyncClient, tenant: Tenant) -> None:
    pod = await new_pod(http, tenant, clientId="customer-42")
    made = await create(http, tenant, username=unique(), podId="customer-42")
    assert made.status_code == 201 and made.json()["podId"] == pod["id"]
    assert_error(await create(http, tenant, podId="nope"), 404, "pod_not_found")
    assert_error(await create(http, tenant, podId=""), 400, "invalid_argument")


async def test_custom_domain_rules(
    http: httpx.AsyncClient,
    big_tenant: Tenant,
    other_tenant: Tenant,
    dns_zone: Zone,
    settings: Settings,
) -> None:
    pod_a = await new_pod(http, big_tenant)
    pod_b = await new_pod(http, big_tenant)
    account_wide = await verified_domain(http, big_tenant, dns_zone)
    scoped = await verified_domain(http, big_tenant, dns_zone, pod=pod_a["id"])
    unverified = (
        await http.post("/v1/domains", json={"domain": new_name()}, headers=big_tenant.headers)
    ).json()

    for pod in (big_tenant.default_pod_id, pod_a["id"], pod_b["id"]):
        made = await create(
            http, big_tenant, username=unique(), domain=account_wide["domain"].upper(), podId=pod
        )
        assert made.status_code == 201, made.text
        assert made.json()["domain"] == account_wide["domain"]
    in_scope = await create(
        http, big_tenant, username="x", domain=scoped["domain"], podId=pod_a["id"]
    )
    assert in_scope.status_code == 201 and in_scope.json()["email"] == f"x@{scoped['domain']}"
    mismatch = await create(
        http, big_tenant, username="x", domain=scoped["domain"], podId=pod_b["id"]
    )
    assert_error(mismatch, 409, "domain_pod_mismatch")
    assert_error(
        await create(http, big_tenant, domain=unverified["domain"]), 409, "domain_not_verified"
    )
    assert_error(await create(http, big_tenant, domain=new_name()), 404, "domain_not_found")
    # Another account's verified domain is not found, whatever pod.
    assert_error(
        await create(http, other_tenant, domain=account_wide["domain"]), 404, "domain_not_found"
    )
    shared = await create(http, big_tenant, username=unique(), domain=settings.shared_domain)
    assert shared.status_code == 201 and shared.json()["domain"] == settings.shared_domain
    listed = await http.get(
        "/v1/inboxes", params={"domain": account_wide["domain"]}, headers=big_tenant.headers
    )
    assert len(listed.json()["inboxes"]) == 3
    by_pod = await http.get(
        "/v1/inboxes", params={"podId": pod_a["id"]}, headers=big_tenant.headers
    )
    assert {i["domain"] for i in by_pod.json()["inboxes"]} == {
        account_wide["domain"],
        scoped["domain"],
    }


# Limits ------------------------------------------------------------------------------


async def test_plan_limit_and_expired_account(
    http: httpx.AsyncClient, tenant: Tenant, pods_channel: grpc.aio.Channel, operator_metadata: Any
) -> None:
    made = [await create(http, tenant, username=unique()) for _ in range(3)]
    assert [r.status_code for r in made] == [201, 201, 201]
    over = await create(http, tenant, username=unique())
    assert_error(over, 403, "inbox_limit_reached")
    assert over.json()["details"] == {"limit": 3}
    # An idempotent retry is not a new inbox.
    retry = await create(http, tenant, username=made[0].json()["username"])
    assert retry.status_code == 200
    await pods_pb2_grpc.AccountServiceStub(pods_channel).SetAccountState(
        pods_pb2.SetAccountStateRequest(
            account_id=tenant.account_id, state=pods_pb2.ACCOUNT_STATE_EXPIRED
        ),
        metadata=operator_metadata,
    )
    await http.delete(f"/v1/inboxes/{made[0].json()['id']}", headers=tenant.headers)
    assert_error(await create(http, tenant, username=unique()), 403, "account_expired")


async def test_concurrent_creates_at_the_plan_limit_never_overshoot(
    http: httpx.AsyncClient, make_tenant: Any
) -> None:
    starter = await make_tenant("Starter", pods_pb2.PLAN_STARTER)
    answers = await asyncio.gather(*(create(http, starter, username=unique()) for _ in range(25)))
    codes = Counter(r.status_code for r in answers)
    assert codes == {201: 10, 403: 15}, codes
    listed = await http.get("/v1/inboxes", headers=starter.headers)
    assert len(listed.json()["inboxes"]) == 10


# Credentials -------------------------------------------------------------------------


def keyed_hash(settings: Settings, password: str) -> str:
    """The stored form of a password: ``$hmac-sha256$`` + unpadded base64 of its
    HMAC-SHA-256 under ``MAILPLANE_CREDENTIAL_HASH_KEY``."""
    key = settings.credential_hash_key.get_secret_value().encode()
    digest = hmac.digest(key, password.encode(), hashlib.sha256)
    return "$hmac-sha256$" + base64.b64encode(digest).decode().rstrip("=")


async def stored_hash(inboxes: InboxesProcess, inbox_id: str) -> str:
    value: str = await inboxes.pool.fetchval(
        "SELECT password_hash FROM inbox_credentials WHERE inbox_id = $1", inbox_id
    )
    return value


async def test_credentials_work_are_hashed_never_shown_again_and_rotate(
    http: httpx.AsyncClient,
    tenant: Tenant,
    inboxes: InboxesProcess,
    login: Any,
    settings: Settings,
) -> None:
    created = (await create(http, tenant, username=unique())).json()
    email, password = created["email"], created["credentials"]["imap"]["password"]
    ok = await login(email.upper(), password)
    assert (ok.inbox_id, ok.account_id, ok.pod_id) == (
        created["id"],
        tenant.account_id,
        tenant.default_pod_id,
    )
    assert await login(email, password + "x") == grpc.StatusCode.UNAUTHENTICATED
    assert await login("nobody@mailplane.test", password) == grpc.StatusCode.UNAUTHENTICATED

    for response in (
        await http.get(f"/v1/inboxes/{created['id']}", headers=tenant.headers),
        await http.get("/v1/inboxes", headers=tenant.headers),
        await http.get(f"/v1/pods/{tenant.default_pod_id}/inboxes", headers=tenant.headers),
    ):
        assert password not in response.text and "credentials" not in response.text
    stored = await inboxes.pool.fetchval(
        "SELECT password_hash FROM inbox_credentials WHERE inbox_id = $1", created["id"]
    )
    assert re.fullmatch(r"\$hmac-sha256\$[A-Za-z0-9+/]{43}", stored), stored
    assert stored == keyed_hash(settings, password)  # HMAC-SHA-256 under the server key
    dump = await inboxes.pool.fetch(
        "SELECT * FROM inboxes i JOIN inbox_credentials c ON c.inbox_id = i.id"
    )
    assert password not in str([dict(r) for r in dump])

    rotated = await http.post(
        f"/v1/inboxes/{created['id']}/rotate-credentials", headers=tenant.headers
    )
    assert rotated.status_code == 200
    new_password = rotated.json()["credentials"]["smtp"]["password"]
    assert new_password != password and rotated.json()["id"] == created["id"]
    assert await login(email, password) == grpc.StatusCode.UNAUTHENTICATED
    assert (await login(email, new_password)).inbox_id == created["id"]
    assert await stored_hash(inboxes, created["id"]) == keyed_hash(settings, new_password)


async def test_legacy_argon2id_hashes_verify_until_rotation_writes_a_keyed_hash(
    http: httpx.AsyncClient,
    tenant: Tenant,
    inboxes: InboxesProcess,
    login: Any,
    settings: Settings,
) -> None:
    created = (await create(http, tenant, username=unique())).json()
    email, inbox_id = created["email"], created["id"]
    # An inbox whose password was stored before keyed hashes: an argon2id PHC string.
    legacy_password = "legacy-" + uuid.uuid4().hex
    legacy = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1).hash(legacy_password)
    await inboxes.pool.execute(
        "UPDATE inbox_credentials SET password_hash = $2 WHERE inbox_id = $1", inbox_id, legacy
    )
    assert (await login(email, legacy_password)).inbox_id == inbox_id
    assert await login(email, legacy_password + "x") == grpc.StatusCode.UNAUTHENTICATED
    assert await login(email, created["credentials"]["imap"]["password"]) == (
        grpc.StatusCode.UNAUTHENTICATED
    )
    assert await stored_hash(inboxes, inbox_id) == legacy  # verifying does not rewrite it

    rotated = await http.post(f"/v1/inboxes/{inbox_id}/rotate-credentials", headers=tenant.headers)
    assert rotated.status_code == 200, rotated.text
    new_password = rotated.json()["credentials"]["imap"]["password"]
    assert await stored_hash(inboxes, inbox_id) == keyed_hash(settings, new_password)
    assert await login(email, legacy_password) == grpc.StatusCode.UNAUTHENTICATED
    assert (await login(email, new_password)).inbox_id == inbox_id


async def test_keyed_hashes_depend_on_the_key_and_unknown_logins_are_refused() -> None:
    mine, other = CredentialHasher(b"k" * 32), CredentialHasher(b"o" * 32)
    password = new_password()
    stored = mine.hash(password)
    assert stored.startswith(KEYED_PREFIX) and password not in stored
    assert await mine.matches(stored, password)
    assert not await mine.matches(stored, password[:-1] + ("A" if password[-1] != "A" else "B"))
    assert not await other.matches(stored, password)  # a copied table alone confirms nothing
    assert not await mine.matches(None, password)  # unknown login: the dummy is checked
    assert not await mine.matches("not a hash", password)


async def test_verifying_credentials_needs_the_service_credential(
    http: httpx.AsyncClient, tenant: Tenant, settings: Settings
) -> None:
    created = (await create(http, tenant, username=unique())).json()
    async with grpc.aio.insecure_channel(settings.inboxes_addr) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await inboxes_pb2_grpc.InboxServiceStub(channel).VerifyInboxCredentials(
                inboxes_pb2.VerifyInboxCredentialsRequest(
                    username=created["email"], password=created["credentials"]["imap"]["password"]
                ),
                metadata=tenant.metadata,
            )
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


# Lifecycle ---------------------------------------------------------------------------


async def test_update_display_name_and_the_pod_never_moves(
    http: httpx.AsyncClient, tenant: Tenant
) -> None:
    inbox = (await create(http, tenant, username=unique(), displayName="Old")).json()
    path = f"/v1/inboxes/{inbox['id']}"
    renamed = await http.patch(path, json={"displayName": "New"}, headers=tenant.headers)
    assert renamed.status_code == 200 and renamed.json()["displayName"] == "New"
    assert renamed.json()["updatedAt"] > inbox["updatedAt"]
    unchanged = await http.patch(path, json={}, headers=tenant.headers)
    assert unchanged.json()["displayName"] == "New"
    cleared = await http.patch(path, json={"displayName": None}, headers=tenant.headers)
    assert cleared.json()["displayName"] is None
    pod = await new_pod(http, tenant)
    moved = await http.patch(path, json={"podId": pod["id"]}, headers=tenant.headers)
    assert_error(moved, 400, "invalid_argument")
    for bad in ({"displayName": 5}, {"displayName": "x" * 256}, {"displayName": "a\r\nBcc: x"}):
        assert_error(
            await http.patch(path, json=bad, headers=tenant.headers), 400, "invalid_argument"
        )
    assert (await http.get(path, headers=tenant.headers)).json()["podId"] == tenant.default_pod_id


async def test_delete_removes_the_inbox_and_its_credentials(
    http: httpx.AsyncClient, tenant: Tenant, inboxes: InboxesProcess, login: Any
) -> None:
    inbox = (await create(http, tenant, username=unique())).json()
    deleted = await http.delete(f"/v1/inboxes/{inbox['id']}", headers=tenant.headers)
    assert deleted.status_code == 200 and deleted.json() == {"id": inbox["id"], "deleted": True}
    assert_error(
        await http.get(f"/v1/inboxes/{inbox['id']}", headers=tenant.headers), 404, "inbox_not_found"
    )
    assert_error(
        await http.delete(f"/v1/inboxes/{inbox['id']}", headers=tenant.headers),
        404,
        "inbox_not_found",
    )
    assert (
        await inboxes.pool.fetchval(
            "SELECT count(*) FROM inbox_credentials WHERE inbox_id = $1", inbox["id"]
        )
        == 0
    )
    password = inbox["credentials"]["imap"]["password"]
    assert await login(inbox["email"], password) == grpc.StatusCode.UNAUTHENTICATED
    # The address is free again.
    again = await create(http, tenant, username=inbox["username"])
    assert again.status_code == 201 and again.json()["username"] == inbox["username"]


async def test_lists_filter_and_page(http: httpx.AsyncClient, big_tenant: Tenant) -> None:
    pod = await new_pod(http, big_tenant, clientId="paged")
    made = [
        (await create(http, big_tenant, username=unique(), podId="paged")).json() for _ in range(5)
    ]
    await create(http, big_tenant, username=unique())
    seen: list[str] = []
    token = None
    while True:
        params: dict[str, Any] = {"limit": 2}
        if token:
            params["pageToken"] = token
        page = (
            await http.get(
                f"/v1/pods/{pod['clientId']}/inboxes", params=params, headers=big_tenant.headers
            )
        ).json()
        seen += [i["id"] for i in page["inboxes"]]
        token = page["nextPageToken"]
        if token is None:
            break
    assert seen == [i["id"] for i in made]
    everything = (await http.get("/v1/inboxes", headers=big_tenant.headers)).json()["inboxes"]
    assert len(everything) == 6
    assert_error(
        await http.get("/v1/inboxes", params={"podId": "missing"}, headers=big_tenant.headers),
        404,
        "pod_not_found",
    )
    assert_error(
        await http.get("/v1/inboxes", params={"pageToken": "junk"}, headers=big_tenant.headers),
        400,
        "invalid_argument",
    )


async def test_another_accounts_inboxes_are_not_found(
    http: httpx.AsyncClient, tenant: Tenant, other_tenant: Tenant
) -> None:
    theirs = (await create(http, other_tenant, username=unique())).json()
    path = f"/v1/inboxes/{theirs['id']}"
    for response in (
        await http.get(path, headers=tenant.headers),
        await http.patch(path, json={"displayName": "x"}, headers=tenant.headers),
        await http.delete(path, headers=tenant.headers),
        await http.post(f"{path}/rotate-credentials", headers=tenant.headers),
    ):
        assert_error(response, 404, "inbox_not_found")
    assert_error(
        await create(http, tenant, podId=other_tenant.default_pod_id), 404, "pod_not_found"
    )
    assert_error(
        await http.get(f"/v1/pods/{other_tenant.default_pod_id}/inboxes", headers=tenant.headers),
        404,
        "pod_not_found",
    )
    assert (await http.get("/v1/inboxes", headers=tenant.headers)).json()["inboxes"] == []
    # Their address is a collision for us, never an idempotent return of their inbox.
    mine = await create(http, tenant, username=theirs["username"])
    assert mine.status_code == 201 and mine.json()["username"] == theirs["username"] + "1"
    assert (await http.get(path, headers=other_tenant.headers)).json()["displayName"] is None


# Wiring both ways ------------------------------------------------------------------------


async def test_a_pod_with_inboxes_cannot_be_deleted(
    http: httpx.AsyncClient, tenant: Tenant
) -> None:
    pod = await new_pod(http, tenant)
    inbox = (await create(http, tenant, username=unique(), podId=pod["id"])).json()
    blocked = await http.delete(f"/v1/pods/{pod['id']}", headers=tenant.headers)
    assert_error(blocked, 409, "pod_not_empty")
    assert blocked.json()["details"]["inboxes"] == 1
    await http.delete(f"/v1/inboxes/{inbox['id']}", headers=tenant.headers)
    assert (await http.delete(f"/v1/pods/{pod['id']}", headers=tenant.headers)).status_code == 200


async def test_a_domain_used_by_inboxes_cannot_be_deleted_or_narrowed_elsewhere(
    http: httpx.AsyncClient, big_tenant: Tenant, dns_zone: Zone
) -> None:
    pod_a, pod_b = await new_pod(http, big_tenant), await new_pod(http, big_tenant)
    domain = await verified_domain(http, big_tenant, dns_zone)
    inbox = (
        await create(http, big_tenant, username="ops", domain=domain["domain"], podId=pod_a["id"])
    ).json()
    path = f"/v1/domains/{domain['domain']}"
    blocked = await http.delete(path, headers=big_tenant.headers)
    assert_error(blocked, 409, "domain_in_use")
    assert blocked.json()["details"]["inboxes"] == 1
    narrowed = await http.patch(path, json={"podId": pod_b["id"]}, headers=big_tenant.headers)
    assert_error(narrowed, 409, "domain_in_use")
    to_its_pod = await http.patch(path, json={"podId": pod_a["id"]}, headers=big_tenant.headers)
    assert to_its_pod.status_code == 200 and to_its_pod.json()["podId"] == pod_a["id"]
    await http.delete(f"/v1/inboxes/{inbox['id']}", headers=big_tenant.headers)
    assert (await http.delete(path, headers=big_tenant.headers)).status_code == 200


async def test_with_the_domains_service_down_a_custom_domain_create_is_unavailable(
    http: httpx.AsyncClient, big_tenant: Tenant, dns_zone: Zone, settings: Settings
) -> None:
    from services.inboxes import server as inboxes_server
    from tests.conftest import free_port

    domain = await verified_domain(http, big_tenant, dns_zone)
    port = free_port()
    crippled = settings.model_copy(
        update={"domains_addr": f"127.0.0.1:{free_port()}", "peer_deadline_seconds": 1.0}
    )
    process = await inboxes_server.build(crippled)
    await process.grpc.start("127.0.0.1", port)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await inboxes_pb2_grpc.InboxServiceStub(channel).CreateInbox(
                    inboxes_pb2.CreateInboxRequest(
                        inbox=inboxes_pb2.Inbox(username="down", domain=domain["domain"])
                    ),
                    metadata=big_tenant.metadata,
                )
    finally:
        await process.grpc.stop(0.2)
        await process.close()
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    listed = await http.get("/v1/inboxes", headers=big_tenant.headers)
    assert listed.json()["inboxes"] == []


async def test_with_the_inboxes_service_down_a_pod_delete_is_unavailable(
    http: httpx.AsyncClient, tenant: Tenant, settings: Settings
) -> None:
    from services.pods import server as pods_server
    from tests.conftest import free_port

    pod = await new_pod(http, tenant)
    port = free_port()
    crippled = settings.model_copy(
        update={"inboxes_addr": f"127.0.0.1:{free_port()}", "peer_deadline_seconds": 1.0}
    )
    process = await pods_server.build(crippled)
    await process.grpc.start("127.0.0.1", port)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await pods_pb2_grpc.PodServiceStub(channel).DeletePod(
                    pods_pb2.DeletePodRequest(pod_id=pod["id"]), metadata=tenant.metadata
                )
    finally:
        await process.grpc.stop(0.2)
        await process.close()
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert (await http.get(f"/v1/pods/{pod['id']}", headers=tenant.headers)).status_code == 200


# Races ---------------------------------------------------------------------------------


async def test_create_inbox_racing_pod_delete_never_orphans(
    http: httpx.AsyncClient, big_tenant: Tenant, inboxes: InboxesProcess
) -> None:
    outcomes: Counter[str] = Counter()
    for _ in range(50):
        pod = await new_pod(http, big_tenant)
        made, deleted = await asyncio.gather(
            create(http, big_tenant, username=unique(), podId=pod["id"]),
            http.delete(f"/v1/pods/{pod['id']}", headers=big_tenant.headers),
        )
        assert made.status_code in (201, 404, 409), made.text
        assert deleted.status_code in (200, 409), deleted.text
        assert not (made.status_code == 201 and deleted.status_code == 200)
        left = await inboxes.pool.fetchval(
            "SELECT count(*) FROM inboxes WHERE pod_id = $1", pod["id"]
        )
        if deleted.status_code == 200:
            assert left == 0
        if made.status_code == 201:
            assert left == 1
            got = await http.get(f"/v1/inboxes/{made.json()['id']}", headers=big_tenant.headers)
            assert got.status_code == 200
            assert (
                await http.get(f"/v1/pods/{pod['id']}", headers=big_tenant.headers)
            ).status_code == 200
        outcomes[f"{made.status_code}/{deleted.status_code}"] += 1
    assert sum(outcomes.values()) == 50


async def test_create_on_a_domain_racing_its_rescope_never_mismatches(
    http: httpx.AsyncClient, big_tenant: Tenant, dns_zone: Zone, inboxes: InboxesProcess
) -> None:
    pod_p, pod_q = await new_pod(http, big_tenant), await new_pod(http, big_tenant)
    domain = await verified_domain(http, big_tenant, dns_zone)
    path = f"/v1/domains/{domain['id']}"
    for _ in range(50):
        made, moved = await asyncio.gather(
            create(http, big_tenant, username=unique(), domain=domain["domain"], podId=pod_p["id"]),
            http.patch(path, json={"podId": pod_q["id"]}, headers=big_tenant.headers),
        )
        assert made.status_code in (201, 409), made.text
        assert moved.status_code in (200, 409), moved.text
        scope = (await http.get(path, headers=big_tenant.headers)).json()["podId"]
        outside = (
            await inboxes.pool.fetchval(
                "SELECT count(*) FROM inboxes WHERE domain = $1 AND pod_id <> $2",
                domain["domain"],
                scope or "",
            )
            if scope
            else 0
        )
        assert outside == 0, (made.text, moved.text)
        assert not (made.status_code == 201 and moved.status_code == 200)
        if made.status_code == 201:
            await http.delete(f"/v1/inboxes/{made.json()['id']}", headers=big_tenant.headers)
        reset = await http.patch(path, json={"podId": None}, headers=big_tenant.headers)
        assert reset.status_code == 200 and reset.json()["podId"] is None


async def test_the_same_username_from_two_accounts_at_once_gives_two_addresses(
    http: httpx.AsyncClient, big_tenant: Tenant, big_other: Tenant
) -> None:
    name = unique("race")
    calls = [create(http, t, username=name) for _ in range(15) for t in (big_tenant, big_other)]
    answers = await asyncio.gather(*calls)
    assert all(r.status_code in (200, 201) for r in answers), [r.text for r in answers]
    for tenant in (big_tenant, big_other):
        mine = [
            r
            for r in answers
            if r.request.headers["authorization"] == tenant.headers["Authorization"]
        ]
        assert Counter(r.status_code for r in mine) == {201: 1, 200: 14}
        assert len({r.json()["id"] for r in mine}) == 1
        assert all(r.json()["existed"] for r in mine if r.status_code == 200)
    emails = {r.json()["email"] for r in answers}
    assert len(emails) == 2
    assert {e.split("@")[0] for e in emails} == {name, f"{name}1"}
