"""Pod, account and API-key rules through the service layer, on real PostgreSQL."""

from __future__ import annotations

import asyncio

import pytest

from services.chassis import auth
from services.chassis.errors import MailplaneError
from services.chassis.pagination import PageTokens
from services.pods.server import PodsProcess
from services.pods.service import PodService
from services.pods.store import PodStore


@pytest.fixture
def service(pods: PodsProcess) -> PodService:
    """The pods rules on the real store, with no child services: tests give the
    child counters they need (the live ones are exercised through REST)."""
    return PodService(PodStore(pods.pool), (), page_tokens=PageTokens(b"test-page-token-key"))


async def new_account(service: PodService, plan: str = "trial") -> str:
    account, _, _ = await service.create_account("Acme", plan)
    return account.id


async def test_account_is_created_with_its_default_pod_listed_first(service: PodService) -> None:
    account, default, secret = await service.create_account("Acme", "starter")
    assert account.plan == "starter" and account.state == "active"
    assert default.is_default and default.account_id == account.id
    await service.create_pod(account.id, "b", None)
    pods, token = await service.list_pods(account.id, 0, "")
    assert pods[0].id == default.id
    assert sum(p.is_default for p in pods) == 1 and token == ""
    assert (await service.authenticate(secret)).account_id == account.id


async def test_create_account_rejects_bad_name_and_plan(service: PodService) -> None:
    with pytest.raises(MailplaneError) as err:
        await service.create_account("  ", "trial")
    assert err.value.code == "invalid_argument" and err.value.details == {"field": "name"}
    with pytest.raises(MailplaneError) as err:
        await service.create_account("Acme", "platinum")
    assert err.value.details == {"field": "plan"}


async def test_client_id_is_unique_per_account_only(service: PodService) -> None:
    first, second = await new_account(service), await new_account(service)
    await service.create_pod(first, "tenant-1", "One")
    with pytest.raises(MailplaneError) as err:
        await service.create_pod(first, "tenant-1", "Again")
    assert err.value.code == "client_id_taken"
    other = await service.create_pod(second, "tenant-1", "Other account")
    assert other.client_id == "tenant-1"


@pytest.mark.parametrize(
    ("client_id", "name", "field"),
    [
        ("pod_01JD5B6Q8Z3Y7X2W1V0T9S8R7Q", None, "clientId"),
        ("POD_01jd5b6q8z3y7x2w1v0t9s8r7q", None, "clientId"),
        ("", None, "clientId"),
        ("x" * 256, None, "clientId"),
        ("ok", "n" * 256, "name"),
    ],
)
async def test_create_pod_rejects_bad_fields(
    service: PodService, client_id: str, name: str | None, field: str
) -> None:
    account = await new_account(service)
    with pytest.raises(MailplaneError) as err:
        await service.create_pod(account, client_id, name)
    assert err.value.code == "invalid_argument" and err.value.details == {"field": field}
    pods, _ = await service.list_pods(account, 0, "")
    assert len(pods) == 1


async def test_fields_of_255_characters_and_pod_like_client_ids_that_are_not_ids_are_fine(
    service: PodService,
) -> None:
    account = await new_account(service)
    pod = await service.create_pod(account, "c" * 255, "n" * 255)
    assert len(pod.client_id or "") == 255
    assert (await service.create_pod(account, "pod_customer_7", None)).client_id == "pod_customer_7"


async def test_get_pod_by_id_or_client_id_and_never_another_accounts(service: PodService) -> None:
    account, other = await new_account(service), await new_account(service)
    pod = await service.create_pod(account, "acme", None)
    assert (await service.get_pod(account, pod.id)).id == pod.id
    assert (await service.get_pod(account, "acme")).id == pod.id
    for ref in (pod.id, "acme", "", "missing"):
        with pytest.raises(MailplaneError) as err:
            await service.get_pod(other, ref)
        assert err.value.code == "pod_not_found"


async def test_update_sets_clears_and_keeps_fields(service: PodService) -> None:
    account = await new_account(service)
    pod = await service.create_pod(account, "acme", "Acme")
    renamed = await service.update_pod(account, "acme", None, ("Acme Inc",))
    assert renamed.client_id == "acme" and renamed.name == "Acme Inc"
    cleared = await service.update_pod(account, pod.id, (None,), None)
    assert cleared.client_id is None and cleared.name == "Acme Inc"
    assert cleared.updated_at >= pod.updated_at
    await service.create_pod(account, "taken", None)
    with pytest.raises(MailplaneError) as err:
        await service.update_pod(account, pod.id, ("taken",), None)
    assert err.value.code == "client_id_taken"
    with pytest.raises(MailplaneError) as err:
        await service.update_pod(account, pod.id, ("pod_01JD5B6Q8Z3Y7X2W1V0T9S8R7Q",), None)
    assert err.value.code == "invalid_argument"


async def test_default_pod_cannot_be_deleted(service: PodService) -> None:
    account, default, _ = await service.create_account("Acme", "trial")
    with pytest.raises(MailplaneError) as err:
        await service.delete_pod(account.id, default.id)
    assert err.value.code == "default_pod"
    assert (await service.get_pod(account.id, default.id)).state == "active"


async def test_delete_empty_pod_by_client_id(service: PodService) -> None:
    account = await new_account(service)
    pod = await service.create_pod(account, "gone", None)
    assert await service.delete_pod(account, "gone") == pod.id
    with pytest.raises(MailplaneError) as err:
        await service.get_pod(account, pod.id)
    assert err.value.code == "pod_not_found"
    with pytest.raises(MailplaneError) as err:
        await service.delete_pod(account, pod.id)
    assert err.value.code == "pod_not_found"


def counting(service: PodService, *counters) -> PodService:  # type: ignore[no-untyped-def]
    """A PodService on the same store with these child counters."""
    return PodService(service._store, counters, page_tokens=PageTokens(b"test-page-token-key"))


async def test_delete_pod_with_children_answers_pod_not_empty_and_keeps_it(
    service: PodService,
) -> None:
    async def inboxes(account_id: str, pod_id: str) -> dict[str, int]:
        return {"inboxes": 3}

    async def mailboxes(account_id: str, pod_id: str) -> dict[str, int]:
        return {"mailboxes": 0}

    checked = counting(service, inboxes, mailboxes)
    account = await new_account(service)
    pod = await service.create_pod(account, None, None)
    with pytest.raises(MailplaneError) as err:
        await checked.delete_pod(account, pod.id)
    assert err.value.code == "pod_not_empty"
    assert err.value.details == {"inboxes": 3, "mailboxes": 0}
    assert "3 inboxes" in err.value.message
    assert (await service.get_pod(account, pod.id)).state == "active"


async def test_delete_pod_with_domains_answers_pod_has_domains(service: PodService) -> None:
    async def domains(account_id: str, pod_id: str) -> dict[str, int]:
        return {"domains": 2}

    account = await new_account(service)
    pod = await service.create_pod(account, None, None)
    with pytest.raises(MailplaneError) as err:
        await counting(service, domains).delete_pod(account, pod.id)
    assert err.value.code == "pod_has_domains" and err.value.details == {"domains": 2}
    assert (await service.get_pod(account, pod.id)).state == "active"


async def test_delete_pod_when_a_child_service_is_down_changes_nothing(service: PodService) -> None:
    async def down(account_id: str, pod_id: str) -> dict[str, int]:
        raise MailplaneError("unavailable", "inboxes is down")

    account = await new_account(service)
    pod = await service.create_pod(account, None, None)
    with pytest.raises(MailplaneError) as err:
        await counting(service, down).delete_pod(account, pod.id)
    assert err.value.code == "unavailable"
    assert (await service.get_pod(account, pod.id)).state == "active"


async def test_pod_being_deleted_is_busy_for_updates_and_other_deletes(service: PodService) -> None:
    release = asyncio.Event()
    asked = asyncio.Event()

    async def slow(account_id: str, pod_id: str) -> dict[str, int]:
        asked.set()
        await release.wait()
        return {"inboxes": 0}

    account = await new_account(service)
    pod = await service.create_pod(account, "slow", None)
    deleting = asyncio.create_task(counting(service, slow).delete_pod(account, pod.id))
    await asked.wait()
    assert (await service.get_pod(account, pod.id)).state == "deleting"
    for attempt in (
        service.update_pod(account, pod.id, None, ("x",)),
        service.delete_pod(account, pod.id),
    ):
        with pytest.raises(MailplaneError) as err:
            await attempt
        assert err.value.code == "pod_busy"
    release.set()
    assert await deleting == pod.id


async def test_sweep_rolls_back_stale_deleting_intents(service: PodService) -> None:
    account = await new_account(service)
    pod = await service.create_pod(account, None, None)
    store: PodStore = service._store
    assert await store.mark_pod_deleting(account, pod.id) is not None
    assert pod.id not in await service.sweep(older_than_seconds=3600)
    assert pod.id in await service.sweep(older_than_seconds=0)
    assert (await service.get_pod(account, pod.id)).state == "active"


async def test_listing_is_keyset_paged_and_stable_under_inserts(service: PodService) -> None:
    account = await new_account(service)
    created = [await service.create_pod(account, f"p{i}", None) for i in range(5)]
    seen: list[str] = []
    pods, token = await service.list_pods(account, 2, "")
    seen += [p.id for p in pods]
    await service.create_pod(account, "late", None)  # lands after every page served so far
    while token:
        pods, token = await service.list_pods(account, 2, token)
        seen += [p.id for p in pods]
    assert len(seen) == len(set(seen)) == 7
    assert seen[1:6] == [p.id for p in created]


@pytest.mark.parametrize(
    ("size", "token"), [(101, ""), (-1, ""), (10, "garbage"), (10, "WyJhcGlfa2V5cyJd")]
)
async def test_listing_rejects_bad_page_size_and_tokens(
    service: PodService, size: int, token: str
) -> None:
    account = await new_account(service)
    with pytest.raises(MailplaneError) as err:
        await service.list_pods(account, size, token)
    assert err.value.code == "invalid_argument"


async def test_plan_and_state_changes(service: PodService) -> None:
    account = await new_account(service)
    assert (await service.set_plan(account, "enterprise")).plan == "enterprise"
    assert (await service.set_state(account, "expired")).state == "expired"
    for call in (
        service.set_plan("acct_missing", "trial"),
        service.set_state("acct_missing", "active"),
    ):
        with pytest.raises(MailplaneError) as err:
            await call
        assert err.value.code == "account_not_found"
    with pytest.raises(MailplaneError) as err:
        await service.set_state(account, "frozen")
    assert err.value.code == "invalid_argument"


async def test_api_keys_are_hashed_listed_without_secret_and_deletable(
    service: PodService, pods: PodsProcess
) -> None:
    account = await new_account(service)
    key, secret = await service.create_api_key(account, "ci")
    assert auth.well_formed(secret) and secret.startswith("mp_") and len(secret) == 42
    assert key.prefix == secret[:8] and key.last4 == secret[-4:]
    stored = await pods.pool.fetch("SELECT * FROM api_keys WHERE id = $1", key.id)
    assert secret not in repr([dict(r) for r in stored])
    assert bytes(stored[0]["secret_sha256"]) == auth.secret_hash(secret)
    keys, _ = await service.list_api_keys(account, 0, "")
    assert [k.name for k in keys] == ["Default key", "ci"]
    assert (await service.authenticate(secret)).api_key_id == key.id
    await service.delete_api_key(account, key.id)
    with pytest.raises(MailplaneError) as err:
        await service.authenticate(secret)
    assert err.value.code == "unauthenticated"
    with pytest.raises(MailplaneError) as err:
        await service.delete_api_key(account, key.id)
    assert err.value.code == "api_key_not_found"


async def test_another_accounts_key_cannot_be_deleted(service: PodService) -> None:
    account, other = await new_account(service), await new_account(service)
    key, secret = await service.create_api_key(account, "mine")
    with pytest.raises(MailplaneError) as err:
        await service.delete_api_key(other, key.id)
    assert err.value.code == "api_key_not_found"
    assert (await service.authenticate(secret)).account_id == account


async def test_malformed_keys_are_refused_without_a_lookup() -> None:
    looked_up: list[str] = []

    async def resolve(secret: str) -> auth.Principal:
        looked_up.append(secret)
        return auth.Principal(account_id="acct_x")

    cache = auth.KeyCache(resolve, ttl_seconds=60)
    good = auth.new_secret()
    corrupted = good[:-7] + ("A" if good[-7] != "A" else "B") + good[-6:]
    for bad in ("", "mp_short", "sk_" + good[3:], corrupted, good + "x"):
        with pytest.raises(MailplaneError) as err:
            await cache.authenticate(bad)
        assert err.value.code == "unauthenticated"
    assert looked_up == []
    await cache.authenticate(good)
    await cache.authenticate(good)
    assert looked_up == [good]  # the second answer came from the cache


async def test_delete_pod_with_the_domains_service_down_is_unavailable(
    service: PodService,
) -> None:
    from services.chassis.rpc import open_channel
    from services.pods.clients import DomainsCounter
    from tests.conftest import free_port

    async with open_channel(f"127.0.0.1:{free_port()}") as dead:
        checked = counting(service, DomainsCounter(dead, deadline=1.0, internal_token="t"))
        account = await new_account(service)
        pod = await service.create_pod(account, None, None)
        with pytest.raises(MailplaneError) as err:
            await checked.delete_pod(account, pod.id)
    assert err.value.code == "unavailable"
    assert (await service.get_pod(account, pod.id)).state == "active"
