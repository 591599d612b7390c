"""One address, one recipient (DESIGN §3, §7.2): the route directory of the
messages service against the real inboxes, mailboxes, domains and pods services,
through the gateway where a caller would go and through the directory's own
gRPC surface where only services go."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import asyncpg
import grpc
import httpx
import pytest
from mailplane.inboxes.v1 import inboxes_pb2, inboxes_pb2_grpc
from mailplane.mailboxes.v1 import mailboxes_pb2, mailboxes_pb2_grpc
from mailplane.messages.v1 import addresses_pb2, addresses_pb2_grpc
from mailplane.pods.v1 import pods_pb2

from services.chassis.config import Settings
from services.inboxes import server as inboxes_server
from services.inboxes import service as inbox_rules
from services.mailboxes import server as mailboxes_server
from services.mailboxes import service as mailbox_rules
from tests.conftest import Services, Tenant, Zone, free_port
from tests.domains.test_domains import publish
from tests.gateway.test_rest import assert_error
from tests.inboxes.test_inboxes import create as create_inbox
from tests.inboxes.test_inboxes import new_pod, verified_domain
from tests.mailboxes.test_mailboxes import create as create_mailbox
from tests.mailboxes.test_mailboxes import patch as patch_mailbox
from tests.mailboxes.test_mailboxes import pending_domain

SHARED = "mailplane.test"


def local(prefix: str = "route") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def big_tenant(make_tenant) -> Tenant:  # type: ignore[no-untyped-def]
    return await make_tenant("Enterprise", pods_pb2.PLAN_ENTERPRISE)  # type: ignore[no-any-return]


@pytest.fixture
async def db(admin_dsn: str, services: Services) -> Any:
    """An administrative connection, to read the directory and to plant rows
    the services would not write (data from before the directory, crashes)."""
    conn = await asyncpg.connect(admin_dsn)
    yield conn
    await conn.close()


async def route(db: asyncpg.Connection, address: str) -> asyncpg.Record | None:
    return await db.fetchrow(
        "SELECT owner_id, kind, state, pod_id, account_id FROM messages.routes WHERE address = $1",
        address,
    )


@pytest.fixture
async def directory(settings: Settings, services: Services) -> Any:
    async with grpc.aio.insecure_channel(settings.messages_addr) as channel:
        yield addresses_pb2_grpc.AddressServiceStub(channel)


# The contract through the gateway -----------------------------------------------------


async def test_an_inbox_at_a_mailboxs_address_answers_address_taken(
    http: httpx.AsyncClient, big_tenant: Tenant, other_tenant: Tenant, db: asyncpg.Connection
) -> None:
    name = local()
    mailbox = await create_mailbox(http, big_tenant, address=f"{name}@{SHARED}")
    assert mailbox.status_code == 201, mailbox.text
    assert_error(
        await create_inbox(http, big_tenant, strict=True, username=name), 409, "address_taken"
    )
    assert_error(
        await create_inbox(http, other_tenant, strict=True, username=name), 409, "address_taken"
    )
    fallback = await create_inbox(http, big_tenant, username=name)  # not strict: username1
    assert fallback.status_code == 201 and fallback.json()["username"] == f"{name}1"
    held = await route(db, f"{name}@{SHARED}")
    assert held is not None and (held["owner_id"], held["state"]) == (
        mailbox.json()["id"],
        "live",
    )
    listed = await http.get("/v1/inboxes", headers=big_tenant.headers)
    assert [i["username"] for i in listed.json()["inboxes"]] == [f"{name}1"]


async def test_a_mailbox_at_an_inboxs_address_answers_address_taken(
    http: httpx.AsyncClient, big_tenant: Tenant, db: asyncpg.Connection
) -> None:
    name = local()
    inbox = await create_inbox(http, big_tenant, username=name)
    assert inbox.status_code == 201, inbox.text
    assert_error(
        await create_mailbox(http, big_tenant, address=f"{name}@{SHARED}"), 409, "address_taken"
    )
    held = await route(db, f"{name}@{SHARED}")
    assert held is not None and (held["owner_id"], held["kind"], held["state"]) == (
        inbox.json()["id"],
        "inbox",
        "live",
    )


async def test_racing_an_inbox_and_a_mailbox_on_one_address_leaves_exactly_one(
    http: httpx.AsyncClient, big_tenant: Tenant, db: asyncpg.Connection
) -> None:
    winners = {"inbox": 0, "mailbox": 0}
    overlapping = 0
    for _ in range(50):
        name = local("race")

        async def timed(call: Any) -> tuple[httpx.Response, float, float]:
            start = time.perf_counter()
            response = await call
            return response, start, time.perf_counter()

        (inbox, i0, i1), (mailbox, m0, m1) = await asyncio.gather(
            timed(create_inbox(http, big_tenant, strict=True, username=name)),
            timed(create_mailbox(http, big_tenant, address=f"{name}@{SHARED}")),
        )
        overlapping += max(i0, m0) < min(i1, m1)
        codes = sorted([inbox.status_code, mailbox.status_code])
        assert codes == [201, 409], (inbox.text, mailbox.text)
        loser = inbox if inbox.status_code == 409 else mailbox
        assert loser.json()["error"] == "address_taken"
        winner, kind = (inbox, "inbox") if inbox.status_code == 201 else (mailbox, "mailbox")
        winners[kind] += 1
        held = await route(db, f"{name}@{SHARED}")
        assert held is not None
        assert (held["owner_id"], held["kind"], held["state"]) == (
            winner.json()["id"],
            kind,
            "live",
        )
        # The loser left nothing behind in its own service.
        table = (
            "mailboxes.mailboxes WHERE address"
            if kind == "inbox"
            else "inboxes.inboxes WHERE email"
        )
        assert await db.fetchval(f"SELECT count(*) FROM {table} = $1", f"{name}@{SHARED}") == 0
    # The two creates were in flight together (the race happened) in every round.
    assert overlapping == 50, overlapping


async def test_one_catch_all_per_domain_across_accounts(
    http: httpx.AsyncClient, tenant: Tenant, other_tenant: Tenant, db: asyncpg.Connection
) -> None:
    first = await pending_domain(http, tenant)
    name = first["domain"]
    second = await http.post("/v1/domains", json={"domain": name}, headers=other_tenant.headers)
    assert second.status_code == 201, second.text
    ours = await create_mailbox(http, tenant, address=f"a@{name}")
    theirs = await create_mailbox(http, other_tenant, address=f"b@{name}")
    assert ours.status_code == theirs.status_code == 201, (ours.text, theirs.text)
    on = await patch_mailbox(http, tenant, ours.json(), catchAll=True)
    assert on.status_code == 200 and on.json()["catchAll"] is True, on.text
    assert_error(
        await patch_mailbox(http, other_tenant, theirs.json(), catchAll=True),
        409,
        "catch_all_taken",
    )
    held = await route(db, f"*@{name}")
    assert held is not None and (held["owner_id"], held["kind"], held["state"]) == (
        ours.json()["id"],
        "catch_all",
        "live",
    )
    off = await patch_mailbox(http, tenant, ours.json(), catchAll=False)
    assert off.status_code == 200 and off.json()["catchAll"] is False
    assert await route(db, f"*@{name}") is None
    moved = await patch_mailbox(http, other_tenant, theirs.json(), catchAll=True)
    assert moved.status_code == 200, moved.text
    held = await route(db, f"*@{name}")
    assert held is not None and held["owner_id"] == theirs.json()["id"]


async def test_a_mailbox_address_change_claims_the_new_route_and_releases_the_old(
    http: httpx.AsyncClient, big_tenant: Tenant, dns_zone: Zone, db: asyncpg.Connection
) -> None:
    domain = (await verified_domain(http, big_tenant, dns_zone))["domain"]
    mailbox = (await create_mailbox(http, big_tenant, address=f"old@{domain}")).json()
    taken = await create_inbox(http, big_tenant, username="taken", domain=domain)
    assert taken.status_code == 201, taken.text
    assert_error(
        await patch_mailbox(http, big_tenant, mailbox, address=f"taken@{domain}"),
        409,
        "address_taken",
    )
    assert (await route(db, f"old@{domain}"))["owner_id"] == mailbox["id"]  # type: ignore[index]
    moved = await patch_mailbox(http, big_tenant, mailbox, address=f"new@{domain}")
    assert moved.status_code == 200, moved.text
    assert await route(db, f"old@{domain}") is None
    held = await route(db, f"new@{domain}")
    assert held is not None and (held["owner_id"], held["state"]) == (mailbox["id"], "live")
    await create_mailbox(http, big_tenant)  # an account keeps one mailbox
    deleted = await http.delete(f"/v1/agent/mailboxes/{mailbox['id']}", headers=big_tenant.headers)
    assert deleted.status_code == 200, deleted.text
    assert await route(db, f"new@{domain}") is None  # a mailbox's address is freed at once


async def test_a_deleted_inboxs_address_is_reserved_for_its_pod(
    http: httpx.AsyncClient,
    big_tenant: Tenant,
    other_tenant: Tenant,
    db: asyncpg.Connection,
    services: Services,
) -> None:
    name = local("tomb")
    address = f"{name}@{SHARED}"
    inbox = (await create_inbox(http, big_tenant, username=name)).json()
    deleted = await http.delete(f"/v1/inboxes/{inbox['id']}", headers=big_tenant.headers)
    assert deleted.status_code == 200, deleted.text
    held = await route(db, address)
    assert held is not None and (held["state"], held["pod_id"]) == ("tombstone", inbox["podId"])
    other_pod = await new_pod(http, big_tenant)
    assert_error(
        await create_inbox(http, big_tenant, strict=True, username=name, podId=other_pod["id"]),
        409,
        "address_taken",
    )
    assert_error(
        await create_inbox(http, other_tenant, strict=True, username=name), 409, "address_taken"
    )
    assert_error(await create_mailbox(http, other_tenant, address=address), 409, "address_taken")
    again = await create_inbox(http, big_tenant, strict=True, username=name)
    assert again.status_code == 201, again.text
    held = await route(db, address)
    assert held is not None and (held["owner_id"], held["state"]) == (again.json()["id"], "live")

    # After the window the tombstone is swept away and anyone may claim the address.
    await http.delete(f"/v1/inboxes/{again.json()['id']}", headers=big_tenant.headers)
    await db.execute(
        "UPDATE messages.routes SET tombstone_until = now() - interval '1 second'"
        " WHERE address = $1",
        address,
    )
    assert services.messages.directory is not None
    await services.messages.directory.sweep(3600)
    assert await route(db, address) is None
    theirs = await create_inbox(http, other_tenant, strict=True, username=name)
    assert theirs.status_code == 201, theirs.text


# Failing closed ---------------------------------------------------------------------


async def test_with_the_messages_service_down_creates_and_deletes_answer_unavailable(
    settings: Settings,
    services: Services,
    http: httpx.AsyncClient,
    big_tenant: Tenant,
    db: asyncpg.Connection,
) -> None:
    """An inboxes and a mailboxes service whose messages service is a dead port."""
    cut_off = settings.model_copy(
        update={
            "messages_addr": f"127.0.0.1:{free_port()}",
            "peer_deadline_seconds": 1.0,
        }
    )
    inboxes = await inboxes_server.build(cut_off)
    mailboxes = await mailboxes_server.build(cut_off)
    inbox_port = await inboxes.grpc.start("127.0.0.1", 0)
    mailbox_port = await mailboxes.grpc.start("127.0.0.1", 0)
    try:
        async with (
            grpc.aio.insecure_channel(f"127.0.0.1:{inbox_port}") as inbox_channel,
            grpc.aio.insecure_channel(f"127.0.0.1:{mailbox_port}") as mailbox_channel,
        ):
            inbox_stub = inboxes_pb2_grpc.InboxServiceStub(inbox_channel)
            mailbox_stub = mailboxes_pb2_grpc.MailboxServiceStub(mailbox_channel)
            name = local("down")
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await inbox_stub.CreateInbox(
                    inboxes_pb2.CreateInboxRequest(
                        inbox=inboxes_pb2.Inbox(username=name), strict=True
                    ),
                    metadata=big_tenant.metadata,
                )
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await mailbox_stub.CreateMailbox(
                    mailboxes_pb2.CreateMailboxRequest(
                        mailbox=mailboxes_pb2.Mailbox(address=f"{name}@{SHARED}")
                    ),
                    metadata=big_tenant.metadata,
                )
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            for sql in (
                "SELECT count(*) FROM inboxes.inboxes WHERE username = $1",
                "SELECT count(*) FROM mailboxes.mailboxes WHERE address = $1 || '@mailplane.test'",
            ):
                assert await db.fetchval(sql, name) == 0

            # A delete answers unavailable too, and the inbox stays, routed.
            kept = (await create_inbox(http, big_tenant, username=name)).json()
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await inbox_stub.DeleteInbox(
                    inboxes_pb2.DeleteInboxRequest(inbox_id=kept["id"]),
                    metadata=big_tenant.metadata,
                )
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            assert await services.inboxes.service.get(big_tenant.account_id, kept["id"])
            await services.inboxes.service.sweep(3600)
            held = await route(db, f"{name}@{SHARED}")
            assert held is not None and (held["owner_id"], held["state"]) == (
                kept["id"],
                "live",
            )
    finally:
        for process in (inboxes, mailboxes):
            await process.grpc.stop(0)
            await process.close()


# The directory's own surface and sweeps ---------------------------------------------


async def test_the_directory_refuses_api_keys(directory: Any, tenant: Tenant) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await directory.ReleaseAddress(
            addresses_pb2.ReleaseAddressRequest(owner_id="inb_x"), metadata=tenant.metadata
        )
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_a_claim_by_its_owner_is_idempotent_and_names_the_holder_to_services(
    directory: Any, operator_metadata: Any
) -> None:
    address = f"{local()}@{SHARED}"
    request = addresses_pb2.ClaimAddressRequest(
        address=address,
        kind=addresses_pb2.ROUTE_KIND_INBOX,
        owner_id="inb_claimer",
        account_id="acct_a",
        pod_id="pod_a",
    )
    first = await directory.ClaimAddress(request, metadata=operator_metadata)
    again = await directory.ClaimAddress(request, metadata=operator_metadata)
    assert first.state == again.state == addresses_pb2.ROUTE_STATE_PENDING
    request.owner_id, request.kind = "mbx_other", addresses_pb2.ROUTE_KIND_MAILBOX
    with pytest.raises(grpc.aio.AioRpcError) as taken:
        await directory.ClaimAddress(request, metadata=operator_metadata)
    assert taken.value.code() == grpc.StatusCode.ALREADY_EXISTS
    released = await directory.ReleaseAddress(
        addresses_pb2.ReleaseAddressRequest(owner_id="inb_claimer"), metadata=operator_metadata
    )
    assert released.released == 1
    claimed = await directory.ClaimAddress(request, metadata=operator_metadata)
    assert claimed.owner_id == "mbx_other"


async def test_the_directory_sweep_confirms_live_owners_and_drops_the_rest(
    http: httpx.AsyncClient,
    big_tenant: Tenant,
    services: Services,
    db: asyncpg.Connection,
    directory: Any,
    operator_metadata: Any,
) -> None:
    live_inbox = (await create_inbox(http, big_tenant, username=local())).json()
    live_mailbox = (await create_mailbox(http, big_tenant, address=f"{local()}@{SHARED}")).json()
    orphan = f"{local('orphan')}@{SHARED}"
    await directory.ClaimAddress(
        addresses_pb2.ClaimAddressRequest(
            address=orphan,
            kind=addresses_pb2.ROUTE_KIND_INBOX,
            owner_id="inb_gone",
            account_id=big_tenant.account_id,
            pod_id=big_tenant.default_pod_id,
        ),
        metadata=operator_metadata,
    )
    # A create still in flight in the inboxes service: its claim is left alone.
    in_flight = local("flight")
    await db.execute(
        "INSERT INTO inboxes.inboxes (id, account_id, pod_id, username, domain, state)"
        " VALUES ('inb_flight' || $1, $2, $3, $1, 'mailplane.test', 'pending')",
        in_flight,
        big_tenant.account_id,
        big_tenant.default_pod_id,
    )
    await directory.ClaimAddress(
        addresses_pb2.ClaimAddressRequest(
            address=f"{in_flight}@{SHARED}",
            kind=addresses_pb2.ROUTE_KIND_INBOX,
            owner_id=f"inb_flight{in_flight}",
            account_id=big_tenant.account_id,
            pod_id=big_tenant.default_pod_id,
        ),
        metadata=operator_metadata,
    )
    addresses = [live_inbox["email"], live_mailbox["address"], orphan, f"{in_flight}@{SHARED}"]
    # As a crash between "mark live" and "confirm" would leave them: pending, and old.
    await db.execute(
        "UPDATE messages.routes SET state = 'pending',"
        " state_changed_at = now() - interval '1 hour' WHERE address = ANY($1::text[])",
        addresses,
    )
    assert services.messages.directory is not None
    await services.messages.directory.sweep(60)
    states = {a: (await route(db, a)) for a in addresses}
    assert states[live_inbox["email"]]["state"] == "live"  # type: ignore[index]
    assert states[live_mailbox["address"]]["state"] == "live"  # type: ignore[index]
    assert states[orphan] is None
    assert states[f"{in_flight}@{SHARED}"]["state"] == "pending"  # type: ignore[index]

    # The inboxes sweep undoes the stale pending inbox and releases its claim.
    await db.execute(
        "UPDATE inboxes.inboxes SET state_changed_at = now() - interval '1 hour'"
        " WHERE id = 'inb_flight' || $1",
        in_flight,
    )
    await services.inboxes.service.sweep(60)
    assert await route(db, f"{in_flight}@{SHARED}") is None


# Migration of existing data ---------------------------------------------------------


async def test_the_backfill_routes_existing_owners_and_reports_a_conflicting_pair(
    big_tenant: Tenant,
    services: Services,
    db: asyncpg.Connection,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reports: list[dict[str, Any]] = []
    for module in (inbox_rules, mailbox_rules):
        monkeypatch.setattr(module, "_log", LogSpy(module._log, reports))
    dup, solo = local("dup"), local("solo")
    # As they stood before the directory: live, and not routed.
    for name, inbox_id in ((dup, f"inb_{dup}"), (solo, f"inb_{solo}")):
        await db.execute(
            "INSERT INTO inboxes.inboxes (id, account_id, pod_id, username, domain, state,"
            " route_state) VALUES ($1, $2, $3, $4, 'mailplane.test', 'live', 'unrouted')",
            inbox_id,
            big_tenant.account_id,
            big_tenant.default_pod_id,
            name,
        )
    await db.execute(
        "INSERT INTO mailboxes.mailboxes (id, account_id, pod_id, address, domain, shared_domain,"
        " status, can_receive, state, route_state)"
        " VALUES ($1, $2, $3, $4, 'mailplane.test', true, 'active', true, 'live', 'unrouted')",
        f"mbx_{dup}",
        big_tenant.account_id,
        big_tenant.default_pod_id,
        f"{dup}@{SHARED}",
    )
    await services.inboxes.service.sweep(3600)
    await services.mailboxes.service.sweep(3600)

    solo_route = await route(db, f"{solo}@{SHARED}")
    assert solo_route is not None and (solo_route["owner_id"], solo_route["state"]) == (
        f"inb_{solo}",
        "live",
    )
    inbox_state = await db.fetchval(
        "SELECT route_state FROM inboxes.inboxes WHERE id = $1", f"inb_{dup}"
    )
    mailbox_state = await db.fetchval(
        "SELECT route_state FROM mailboxes.mailboxes WHERE id = $1", f"mbx_{dup}"
    )
    assert sorted([inbox_state, mailbox_state]) == ["conflict", "routed"]
    winner = f"inb_{dup}" if inbox_state == "routed" else f"mbx_{dup}"
    loser = f"mbx_{dup}" if winner.startswith("inb_") else f"inb_{dup}"
    held = await route(db, f"{dup}@{SHARED}")
    assert held is not None and (held["owner_id"], held["state"]) == (winner, "live")
    # Reported with both owners: a log line an operator can search for.
    assert [
        (r["owner_id"], r["holder_owner_id"], r["address"])
        for r in reports
        if r["event"] == "route_conflict" and r["address"] == f"{dup}@{SHARED}"
    ] == [(loser, winner, f"{dup}@{SHARED}")]


class LogSpy:
    """Records a module logger's warnings (whichever task logs them: the test's
    sweep or the service's own periodic one) and passes everything on."""

    def __init__(self, inner: Any, reports: list[dict[str, Any]]):
        self._inner = inner
        self._reports = reports

    def warning(self, event: str, **fields: Any) -> Any:
        self._reports.append({"event": event, **fields})
        return self._inner.warning(event, **fields)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


async def test_an_unverified_domain_cannot_squat_its_verified_owners_addresses(
    http: httpx.AsyncClient,
    tenant: Tenant,
    other_tenant: Tenant,
    dns_zone: Zone,
    db: asyncpg.Connection,
) -> None:
    squatted = await pending_domain(http, other_tenant)
    name = squatted["domain"]
    squatter = await create_mailbox(http, other_tenant, address=f"ceo@{name}")
    assert squatter.status_code == 201, squatter.text
    owned = await http.post("/v1/domains", json={"domain": name}, headers=tenant.headers)
    publish(dns_zone, owned.json())
    verified = await http.post(f"/v1/domains/{owned.json()['id']}/verify", headers=tenant.headers)
    assert verified.json()["status"] == "verified", verified.text
    ours = await http.post(
        "/v1/inboxes?strict=true", json={"username": "ceo", "domain": name}, headers=tenant.headers
    )
    assert ours.status_code == 201, ours.text
    held = await route(db, f"ceo@{name}")
    assert held is not None and held["owner_id"] == ours.json()["id"]
