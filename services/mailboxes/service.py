"""The rules of agentic mailboxes (seed 004; DESIGN §1, §3, §4 Mailboxes).

A mailbox lives in one pod (seed 004's ``tenantId`` names a pod; the account is
the seed's "tenant" with a plan and "must keep one mailbox"). Its address is on
the shared domain or on a custom domain the pod may use; it is ``active`` when
that domain can receive and ``provisioning`` until it can, and the domains
service tells this service when a domain's reception changes. Creation, clone
and address change follow DESIGN §3's child side. The plan's mailbox limit, the
one catch-all per domain and the last-mailbox guard are enforced in this
service's own transactions.

Routes (DESIGN §7.2): a mailbox's address, and ``*@domain`` while it is its
domain's catch-all, are routes in the messages service's directory, unique
across inboxes, mailboxes and accounts (so one catch-all per domain across
accounts). A create or clone claims its address after the pending row and
confirms it once live; an address or catch-all change claims the new routes,
switches, then releases the old; a delete releases its routes. The directory
being down fails these closed with ``unavailable``. The sweep finishes or undoes
what a crash left and claims the routes of mailboxes from before the directory,
reporting conflicts.

Policy (DESIGN §7.3): the messages service applies a mailbox's status, config
and enabled rules at ingest, from the copy this service publishes after every
committed change (a version the database bumps on each change, so copies
arriving out of order are ignored). A messages service that is down does not
fail the change: the sweep publishes every mailbox whose latest version it has
not acknowledged. This module imports no transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Awaitable
from dataclasses import dataclass, replace
from typing import Any

from services.chassis import ids, pagination
from services.chassis.addresses import check_local_part, domain_key
from services.chassis.directory import (
    AddressDirectory,
    AddressHeld,
    Claim,
    catch_all_address,
)
from services.chassis.errors import MailplaneError, invalid_argument
from services.chassis.logs import get_logger
from services.chassis.pagination import PageTokens
from services.chassis.peers import DomainsClient, PodRef, PodsClient
from services.chassis.plans import PLAN_LIMITS
from services.mailboxes.models import (
    AUTONOMY_LEVELS,
    CONFIG_KEYS,
    MATCH_KEYS,
    RULE_ACTIONS,
    Folder,
    Mailbox,
    Rule,
    empty_config,
)
from services.mailboxes.store import MailboxStore, address_taken, catch_all_taken

_log = get_logger("mailplane.mailboxes")
MAX_TEXT = 255
MAX_FOLDER_NAME = 100
MAX_LONG_TEXT = 5000
MAX_RATE_LIMIT = 1_000_000
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
#: How many stale, unreleased or unrouted mailboxes one sweep handles.
SWEEP_BATCH = 200


def mailbox_not_found(mailbox_id: str) -> MailplaneError:
    """Returns the ``mailbox_not_found`` error."""
    return MailplaneError(
        "mailbox_not_found",
        f"No mailbox {mailbox_id!r} in this account; list mailboxes to find it.",
    )


@dataclass(frozen=True)
class Placement:
    """Where an address lands: its parts and whether its domain can receive."""

    address: str
    domain: str
    shared_domain: bool
    can_receive: bool


class MailboxService:
    """Agentic mailboxes of an account.

    Args:
        store: the mailboxes schema.
        pods: the pods service client.
        domains: the domains service client.
        shared_domain: the platform's own domain (DESIGN §1).
        directory: the messages service's route directory.
    """

    def __init__(
        self,
        store: MailboxStore,
        pods: PodsClient,
        domains: DomainsClient,
        shared_domain: str,
        directory: AddressDirectory,
        *,
        page_tokens: PageTokens,
    ):
        self._directory = directory
        self._store = store
        self._page_tokens = page_tokens
        self._pods = pods
        self._domains = domains
        self._shared_domain = shared_domain

    # Mailboxes ----------------------------------------------------------------------

    async def create(
        self,
        account_id: str,
        pod_ref: str | None,
        address: str,
        display_name: str | None,
        config: dict[str, Any],
        autonomy_level: str | None,
    ) -> Mailbox:
        """Creates a mailbox in a pod (``None``: the default pod).

        Args:
            config: config keys (snake case) to set; the others start null.
            autonomy_level: ``L1`` (default), ``L2`` or ``L3``.

        Raises:
            MailplaneError: ``invalid_argument``, ``pod_not_found``, ``pod_busy``,
                ``domain_not_found``, ``domain_pod_mismatch``, ``domain_busy``,
                ``account_expired``, ``mailbox_limit_reached``, ``address_taken``,
                ``unavailable`` (nothing is left behind).
        """
        display_name = _check_text("displayName", display_name)
        full_config = empty_config() | _check_config(config)
        level = autonomy_level or "L1"
        if level not in AUTONOMY_LEVELS:
            raise invalid_argument("autonomyLevel", "must be L1, L2 or L3.")
        pod = await (self._pods.live_pod(pod_ref) if pod_ref else self._pods.default_pod())
        place = await self._place(account_id, address, pod.id, verified=False)
        return await self._insert(account_id, pod, place, display_name, full_config, level, None)

    async def _insert(
        self,
        account_id: str,
        pod: PodRef,
        place: Placement,
        display_name: str | None,
        config: dict[str, Any],
        level: str,
        clone_of: tuple[str, list[str], list[str]] | None,
    ) -> Mailbox:
        standing = await self._pods.get_account()
        if standing.expired:
            raise MailplaneError(
                "account_expired",
                "This account has expired: it can read and delete but not create mailboxes. "
                "Ask the operator to reactivate it.",
            )
        limit = PLAN_LIMITS[standing.plan].mailboxes
        mailbox = await self._store.insert_pending(
            {
                "id": ids.new_id("mbx"),
                "account_id": account_id,
                "pod_id": pod.id,
                "address": place.address,
                "domain": place.domain,
                "shared_domain": place.shared_domain,
                "display_name": display_name,
                "can_receive": place.can_receive,
                "config": config,
                "autonomy_level": level,
            },
            limit,
            clone_of,
        )
        if mailbox is None:
            raise MailplaneError(
                "mailbox_limit_reached",
                f"Mailbox limit reached ({limit}). Upgrade your plan to create more mailboxes.",
                {"limit": limit or 0},
            )
        try:
            await self._directory.claim(routes_of(mailbox)[0])
        except AddressHeld:
            await self._store.delete_pending(account_id, mailbox.id)
            raise address_taken(mailbox.address) from None
        except BaseException:
            await self._undo(mailbox)
            raise
        live = await self._confirm_or_undo(account_id, mailbox)
        # Before the route delivers, so that its first message finds the policy.
        await self.publish_policy(live.id)
        try:
            await self._directory.confirm(routes_of(live)[0])
        except (MailplaneError, AddressHeld) as error:
            # The mailbox is live: its claim stays pending (mail answers 451) until the
            # directory's sweep sees the live mailbox and confirms it.
            _log.warning("mailbox_route_unconfirmed", mailbox_id=live.id, error=repr(error))
        _log.info(
            "mailbox_created",
            account_id=account_id,
            mailbox_id=live.id,
            pod_id=pod.id,
            clone_of=clone_of[0] if clone_of else None,
        )
        return live

    async def _confirm_or_undo(self, account_id: str, mailbox: Mailbox) -> Mailbox:
        # DESIGN §3 child side: re-read the pod and the domain after the pending row
        # is committed, so a racing pod delete or domain re-scope is seen by one side.
        try:
            checks: list[Awaitable[Any]] = [self._pods.live_pod(mailbox.pod_id)]
            if not mailbox.shared_domain:
                checks.append(
                    self._domains.usable_by(
                        account_id, mailbox.domain, mailbox.pod_id, verified=False
                    )
                )
            results = await asyncio.gather(*checks)
            can_receive = mailbox.shared_domain or results[1].can_receive
            live = await self._store.mark_live(account_id, mailbox.id, can_receive)
            if live is None:
                raise MailplaneError(
                    "unavailable", "The mailbox's creation took too long and was undone; retry."
                )
            return live
        except BaseException:
            await self._undo(mailbox)
            raise

    async def _undo(self, mailbox: Mailbox) -> None:
        """Removes a pending mailbox and releases its claim. With the directory
        down the claim stays pending: the directory's sweep drops it, since no
        mailbox holds it any more."""
        await self._store.delete_pending(mailbox.account_id, mailbox.id)
        with contextlib.suppress(MailplaneError):
            await self._directory.release(mailbox.id, mailbox.address)

    async def _place(self, account_id: str, raw: str, pod_id: str, *, verified: bool) -> Placement:
        """Parses an address and checks the pod may use its domain."""
        local, at, domain = raw.strip().rpartition("@")
        if not at or not domain:
            raise invalid_argument("address", "must be an email address, local@domain.")
        local = check_local_part(local, "address")
        domain = domain_key(domain)
        if domain == self._shared_domain:
            return Placement(f"{local}@{domain}", domain, True, True)
        found = await self._domains.usable_by(account_id, domain, pod_id, verified=verified)
        return Placement(f"{local}@{found.name}", found.name, False, found.can_receive)

    async def find(self, account_id: str, mailbox_id: str) -> Mailbox | None:
        """Returns a mailbox, or ``None`` (deleted or unknown)."""
        return await self._store.get(account_id, mailbox_id) if mailbox_id else None

    async def get(self, account_id: str, mailbox_id: str) -> Mailbox:
        """Returns a mailbox (never a deleted one). Raises ``mailbox_not_found``."""
        mailbox = await self._store.get(account_id, mailbox_id) if mailbox_id else None
        if mailbox is None:
            raise mailbox_not_found(mailbox_id)
        return mailbox

    async def list_mailboxes(
        self, account_id: str, pod_ref: str | None, size: int, token: str
    ) -> tuple[list[Mailbox], str]:
        """Returns a page of mailboxes (optionally one pod's), oldest first, and the
        next page's token. Raises ``invalid_argument``, ``pod_not_found``."""
        pod_id = (await self._pods.get_pod(pod_ref)).id if pod_ref else None
        listing = f"mailboxes:{pod_id or ''}"
        page = await self._store.list_mailboxes(
            account_id,
            pod_id,
            self._page_tokens.decode(account_id, listing, token),
            pagination.page_size(size),
        )
        next_token = (
            self._page_tokens.encode(account_id, listing, page.next_key) if page.next_key else ""
        )
        return page.items, next_token

    async def update(self, account_id: str, mailbox_id: str, changes: dict[str, Any]) -> Mailbox:
        """Updates a mailbox.

        Args:
            changes: any of ``display_name`` (``None`` clears), ``status``
                (``active``/``paused``), ``config`` (a patch of snake-case keys;
                ``None`` values clear), ``catch_all``, ``address``.

        Raises:
            MailplaneError: ``invalid_argument``, ``mailbox_not_found``,
                ``catch_all_taken``, ``shared_domain_address``,
                ``domain_not_found``, ``domain_not_verified``,
                ``domain_pod_mismatch``, ``domain_busy``, ``address_taken``,
                ``unavailable``.
        """
        mailbox = await self.get(account_id, mailbox_id)
        sql_changes: dict[str, Any] = {}
        if "display_name" in changes:
            sql_changes["display_name"] = _check_text("displayName", changes["display_name"])
        if "status" in changes:
            if changes["status"] not in ("active", "paused"):
                raise invalid_argument("status", "must be active or paused.")
            sql_changes["status"] = changes["status"]
        if "config" in changes:
            sql_changes["config"] = _check_config(changes["config"])
        if "catch_all" in changes:
            if not isinstance(changes["catch_all"], bool):
                raise invalid_argument("catchAll", "must be true or false.")
            sql_changes["catch_all"] = changes["catch_all"]
        place = None
        if "address" in changes:
            place = await self._new_address(mailbox, changes["address"])
            wanted = sql_changes.pop("status", None) or (
                "paused" if mailbox.status == "paused" else "active"
            )
            sql_changes |= {
                "address": place.address,
                "domain": place.domain,
                "can_receive": place.can_receive,
                "exact_status": _status_for(wanted, place.can_receive),
            }
        if sql_changes.get("catch_all") and mailbox.shared_domain:
            raise invalid_argument(
                "catchAll", f"cannot be set on the shared domain {self._shared_domain}."
            )
        if not sql_changes:
            return mailbox
        before = routes_of(mailbox)
        after = routes_of(
            replace(
                mailbox,
                address=place.address if place else mailbox.address,
                domain=place.domain if place else mailbox.domain,
                catch_all=sql_changes.get("catch_all", mailbox.catch_all),
            )
        )
        added = [c for c in after if c.address not in {b.address for b in before}]
        removed = [c for c in before if c.address not in {a.address for a in after}]
        await self._claim_all(added)  # DESIGN §7.2: claim new → switch → release old
        try:
            updated = await self._store.update(account_id, mailbox, sql_changes)
            if updated is None:
                raise mailbox_not_found(mailbox_id)
            if place is not None:
                await self._confirm_address_or_revert(account_id, mailbox, updated)
        except BaseException:
            await self._release_quietly(mailbox.id, added)
            raise
        if removed:
            await self._release_or_revert(mailbox, updated, removed, added)
        for claim in added:
            try:
                await self._directory.confirm(claim)
            except (MailplaneError, AddressHeld) as error:
                _log.warning("mailbox_route_unconfirmed", mailbox_id=mailbox.id, error=repr(error))
        await self.publish_policy(updated.id)
        return updated

    async def _claim_all(self, claims: list[Claim]) -> None:
        """Claims routes, all or none.

        Raises:
            MailplaneError: ``address_taken``, ``catch_all_taken``, ``unavailable``.
        """
        done: list[Claim] = []
        try:
            for claim in claims:
                await self._directory.claim(claim)
                done.append(claim)
        except AddressHeld:
            await self._release_quietly(claims[0].owner_id, done)
            failed = claims[len(done)]
            if failed.kind == "catch_all":
                raise catch_all_taken(failed.address.removeprefix("*@")) from None
            raise address_taken(failed.address) from None
        except BaseException:
            await self._release_quietly(claims[0].owner_id, done)
            raise

    async def _release_quietly(self, owner_id: str, claims: list[Claim]) -> None:
        """Releases claims while undoing; with the directory down they stay
        pending and the directory's sweep drops those no mailbox holds."""
        for claim in claims:
            with contextlib.suppress(MailplaneError):
                await self._directory.release(owner_id, claim.address)

    async def _release_or_revert(
        self, before: Mailbox, after: Mailbox, removed: list[Claim], added: list[Claim]
    ) -> None:
        """Releases the routes a change dropped; if the directory is down, the
        change is reverted (fail closed) and its routes claimed again by the sweep."""
        try:
            for claim in removed:
                await self._directory.release(before.id, claim.address)
        except BaseException:
            await self._store.update(
                before.account_id,
                after,
                {
                    "address": before.address,
                    "domain": before.domain,
                    "can_receive": before.can_receive,
                    "exact_status": before.status,
                    "catch_all": before.catch_all,
                },
            )
            await self._store.set_route_state(before.account_id, before.id, "unrouted")
            await self._release_quietly(before.id, added)
            raise

    async def _new_address(self, mailbox: Mailbox, raw: Any) -> Placement:
        if not isinstance(raw, str):
            raise invalid_argument("address", "must be an email address, local@domain.")
        if mailbox.shared_domain:
            raise MailplaneError(
                "shared_domain_address",
                f"{mailbox.address} is on the shared domain; its address cannot change. "
                "Create a mailbox on a custom domain instead.",
            )
        place = await self._place(mailbox.account_id, raw, mailbox.pod_id, verified=True)
        if place.shared_domain:
            raise MailplaneError(
                "shared_domain_address",
                "A mailbox cannot move onto the shared domain; choose a verified custom domain.",
            )
        return place

    async def _confirm_address_or_revert(
        self, account_id: str, before: Mailbox, after: Mailbox
    ) -> None:
        # DESIGN §3 child side for an address change: the new domain is re-read
        # after the change is committed; if it is no longer usable, undo it.
        try:
            await self._domains.usable_by(account_id, after.domain, after.pod_id, verified=True)
        except BaseException:
            await self._store.update(
                account_id,
                after,
                {
                    "address": before.address,
                    "domain": before.domain,
                    "can_receive": before.can_receive,
                    "exact_status": before.status,
                },
            )
            raise

    async def delete(self, account_id: str, mailbox_id: str) -> str:
        """Soft-deletes a mailbox: never read again; its folders and rules stay
        stored but unreachable (seed 004).

        Raises:
            MailplaneError: ``mailbox_not_found``; ``last_mailbox`` for the
                account's last live mailbox; ``unavailable`` when the directory
                is down (the mailbox stays).
        """
        done = await self._store.soft_delete(account_id, mailbox_id)
        if done is None:
            raise MailplaneError(
                "last_mailbox",
                "This is the account's last mailbox; every account keeps one. Create another "
                "mailbox first.",
            )
        if not done:
            raise mailbox_not_found(mailbox_id)
        try:
            await self._directory.release(mailbox_id)
        except BaseException:
            # Fail closed: the mailbox comes back, its routes to be claimed again by
            # the sweep. If its address went to another mailbox meanwhile it stays
            # deleted, and the sweep releases its routes.
            await self._store.undelete(account_id, mailbox_id)
            raise
        await self._store.set_route_state(account_id, mailbox_id, "released")
        _log.info("mailbox_deleted", account_id=account_id, mailbox_id=mailbox_id)
        return mailbox_id

    async def clone(
        self, account_id: str, mailbox_id: str, address: str, display_name: str | None
    ) -> Mailbox:
        """Creates a mailbox in the source's pod with its autonomy level, config,
        folders (empty) and rules (remapped to the new folders), in one
        transaction; not its catch-all, address or display name (seed 004).

        Raises:
            MailplaneError: as ``create``, and ``mailbox_not_found``.
        """
        source = await self.get(account_id, mailbox_id)
        display_name = _check_text("displayName", display_name)
        pod = await self._pods.live_pod(source.pod_id)
        place = await self._place(account_id, address, pod.id, verified=False)
        folder_ids, rule_ids = await self._store.folder_and_rule_ids(account_id, source.id)
        return await self._insert(
            account_id,
            pod,
            place,
            display_name,
            source.config,
            source.autonomy_level,
            (source.id, folder_ids, rule_ids),
        )

    async def count(
        self, account_id: str, pod_id: str | None, domain: str | None, outside_pod_id: str | None
    ) -> int:
        """Counts mailboxes not deleted (pending included) for DESIGN §3's parent side."""
        name = domain_key(domain) if domain else None
        return await self._store.count(account_id, pod_id, name, outside_pod_id)

    async def set_reception(self, account_id: str, domain: str, can_receive: bool) -> int:
        """Moves the status of the mailboxes on a custom domain after its
        verification: provisioning/error → active when it can receive, active →
        error when it cannot. Returns how many changed."""
        changed = await self._store.set_reception(account_id, domain_key(domain), can_receive)
        if changed:
            _log.info("mailbox_reception_changed", domain=domain, can_receive=can_receive)
        return changed

    async def publish_policy(self, mailbox_id: str) -> bool:
        """Sends a live mailbox's current policy to the messages service, which
        applies it at ingest (DESIGN §7.3) and writes ``mailbox.paused`` /
        ``mailbox.resumed``. A messages service that is down is not an error
        here: the change is committed, and the sweep publishes it later.

        Returns:
            Whether the messages service now holds the current version.
        """
        policy = await self._store.policy(mailbox_id)
        if policy is None:
            return False
        try:
            await self._directory.set_mailbox_policy(
                mailbox_id=policy.mailbox_id,
                account_id=policy.account_id,
                pod_id=policy.pod_id,
                version=policy.version,
                status=policy.status,
                address=policy.address,
                display_name=policy.display_name,
                inbound_rate_limit=policy.config.get("inbound_rate_limit"),
                paused_auto_reply=policy.config.get("paused_auto_reply"),
                reply_to=policy.config.get("reply_to"),
                rules=policy.rules,
            )
        except MailplaneError as error:
            _log.warning("mailbox_policy_unpublished", mailbox_id=mailbox_id, code=error.code)
            return False
        await self._store.mark_published(mailbox_id, policy.version)
        return True

    async def held_addresses(self, mailbox_ids: list[str]) -> list[tuple[str, str, bool]]:
        """``(mailbox_id, address, live)`` of the routes the given mailboxes hold
        (their address, and ``*@domain`` for a catch-all), for the directory's
        sweep of stale claims."""
        held: list[tuple[str, str, bool]] = []
        for mailbox_id, address, domain, catch_all, live in await self._store.held_addresses(
            mailbox_ids
        ):
            held.append((mailbox_id, address, live))
            if catch_all:
                held.append((mailbox_id, catch_all_address(domain), live))
        return held

    async def sweep(self, older_than_seconds: float) -> int:
        """Finishes what a crash left (DESIGN §3): a stale pending create is undone
        and its claim released; a deleted mailbox's routes are released. Then
        claims and confirms the routes of live mailboxes that have none (those
        from before the directory); an address another owner holds is a
        conflict, logged as ``route_conflict`` with both owners and kept.

        Returns:
            How many conflicts this sweep found.

        Raises:
            MailplaneError: ``unavailable`` when the directory is down (the next
                sweep tries again).
        """
        swept = []
        for mailbox_id, account_id in await self._store.stale_pending(
            older_than_seconds, SWEEP_BATCH
        ):
            await self._directory.release(mailbox_id)
            await self._store.delete_pending(account_id, mailbox_id)
            swept.append(mailbox_id)
        for mailbox_id, account_id in await self._store.unreleased(older_than_seconds, SWEEP_BATCH):
            await self._directory.release(mailbox_id)
            await self._store.set_route_state(account_id, mailbox_id, "released")
            swept.append(mailbox_id)
        if swept:
            _log.info("stale_mailboxes_swept", mailbox_ids=swept)
        for mailbox_id in await self._store.unpublished(SWEEP_BATCH):
            await self.publish_policy(mailbox_id)
        conflicts = 0
        for mailbox in await self._store.unrouted(SWEEP_BATCH):
            state = "routed"
            for claim in routes_of(mailbox):
                try:
                    await self._directory.claim(claim)
                    await self._directory.confirm(claim)
                except AddressHeld as error:
                    conflicts += 1
                    state = "conflict"
                    _log.warning(
                        "route_conflict",
                        address=claim.address,
                        owner_id=mailbox.id,
                        account_id=mailbox.account_id,
                        holder_owner_id=error.holder.get("holderOwnerId"),
                        holder_account_id=error.holder.get("holderAccountId"),
                        holder_kind=error.holder.get("holderKind"),
                        holder_state=error.holder.get("holderState"),
                    )
            await self._store.set_route_state(mailbox.account_id, mailbox.id, state)
            if state == "routed":
                _log.info("mailbox_routes_backfilled", mailbox_id=mailbox.id)
        return conflicts

    # Folders and rules --------------------------------------------------------------

    async def create_folder(self, account_id: str, mailbox_id: str, name: str) -> Folder:
        """Creates a folder. Raises ``invalid_argument``, ``mailbox_not_found``,
        ``folder_exists``."""
        clean = _check_text("name", name, MAX_FOLDER_NAME)
        if not clean:
            raise invalid_argument("name", "is required.")
        folder = await self._store.create_folder(account_id, mailbox_id, ids.new_id("fld"), clean)
        if folder is None:
            raise mailbox_not_found(mailbox_id)
        return folder

    async def list_folders(self, account_id: str, mailbox_id: str) -> list[Folder]:
        """A mailbox's folders, oldest first. Raises ``mailbox_not_found``."""
        await self.get(account_id, mailbox_id)
        return await self._store.list_folders(account_id, mailbox_id)

    async def delete_folder(self, account_id: str, mailbox_id: str, folder_id: str) -> str:
        """Deletes a folder. Raises ``mailbox_not_found``, ``folder_not_found``,
        ``folder_in_use``."""
        await self.get(account_id, mailbox_id)
        if not await self._store.delete_folder(account_id, mailbox_id, folder_id):
            raise _folder_not_found(folder_id)
        return folder_id

    async def create_rule(self, account_id: str, mailbox_id: str, rule: Rule) -> Rule:
        """Creates a rule (validated; ``move_to_folder`` needs a folder of this
        mailbox). Raises ``invalid_argument``, ``mailbox_not_found``."""
        checked = _check_rule(replace(rule, id=ids.new_id("rule"), mailbox_id=mailbox_id))
        created = await self._store.create_rule(account_id, checked)
        if created is None:
            raise mailbox_not_found(mailbox_id)
        await self.publish_policy(mailbox_id)
        return created

    async def list_rules(self, account_id: str, mailbox_id: str) -> list[Rule]:
        """A mailbox's rules by priority. Raises ``mailbox_not_found``."""
        await self.get(account_id, mailbox_id)
        return await self._store.list_rules(account_id, mailbox_id)

    async def update_rule(
        self, account_id: str, mailbox_id: str, rule_id: str, changes: dict[str, Any]
    ) -> Rule:
        """Changes a rule's ``name``, ``enabled``, ``priority``, ``match`` or
        ``action`` (``(type, folder_id)``). Raises ``invalid_argument``,
        ``mailbox_not_found``, ``rule_not_found``."""
        await self.get(account_id, mailbox_id)
        current = await self._store.get_rule(account_id, mailbox_id, rule_id)
        if current is None:
            raise _rule_not_found(rule_id)
        if "action" in changes:
            action_type, folder_id = changes.pop("action")
            changes |= {"action_type": action_type, "folder_id": folder_id}
        updated = await self._store.update_rule(
            account_id, _check_rule(replace(current, **changes))
        )
        if updated is None:
            raise _rule_not_found(rule_id)
        await self.publish_policy(mailbox_id)
        return updated

    async def delete_rule(self, account_id: str, mailbox_id: str, rule_id: str) -> str:
        """Deletes a rule. Raises ``mailbox_not_found``, ``rule_not_found``."""
        await self.get(account_id, mailbox_id)
        if not await self._store.delete_rule(account_id, mailbox_id, rule_id):
            raise _rule_not_found(rule_id)
        await self.publish_policy(mailbox_id)
        return rule_id


def routes_of(mailbox: Mailbox) -> list[Claim]:
    """The routes a mailbox holds: its address, then ``*@domain`` while it is
    its domain's catch-all."""
    claims = [Claim(mailbox.address, "mailbox", mailbox.id, mailbox.account_id, mailbox.pod_id)]
    if mailbox.catch_all:
        claims.append(
            Claim(
                catch_all_address(mailbox.domain),
                "catch_all",
                mailbox.id,
                mailbox.account_id,
                mailbox.pod_id,
            )
        )
    return claims


def _status_for(wanted: str, can_receive: bool) -> str:
    """The status a mailbox takes when its owner wants ``active`` or ``paused``."""
    if wanted == "paused":
        return "paused"
    return "active" if can_receive else "provisioning"


def _folder_not_found(folder_id: str) -> MailplaneError:
    return MailplaneError(
        "folder_not_found", f"No folder {folder_id!r} in this mailbox; list its folders."
    )


def _rule_not_found(rule_id: str) -> MailplaneError:
    return MailplaneError("rule_not_found", f"No rule {rule_id!r} in this mailbox; list its rules.")


def _check_text(field: str, value: Any, limit: int = MAX_TEXT) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise invalid_argument(field, "must be a string or null.")
    if len(value) > limit:
        raise invalid_argument(field, f"is longer than {limit} characters.")
    if field != "config.signature" and any(c in value for c in "\r\n\0"):
        raise invalid_argument(field, "may not contain line breaks or NUL.")
    return value.strip() or None


def _check_config(patch: dict[str, Any]) -> dict[str, Any]:
    """Validates a config patch (snake-case keys; ``None`` clears a key).

    Raises:
        MailplaneError: ``invalid_argument`` naming ``config.<key>`` (seed 004).
    """
    checked: dict[str, Any] = {}
    for key, value in patch.items():
        name = f"config.{CONFIG_KEYS.get(key, key)}"
        if key not in CONFIG_KEYS:
            raise invalid_argument(
                name, f"is not a config key; use {', '.join(CONFIG_KEYS.values())}."
            )
        if value is None:
            checked[key] = None
        elif key == "inbound_rate_limit":
            if (
                isinstance(value, bool)
                or not isinstance(value, int)
                or not 0 < value <= MAX_RATE_LIMIT
            ):
                raise invalid_argument(name, "must be a positive integer or null.")
            checked[key] = value
        elif key == "reply_to":
            text = _check_text(name, value)
            if text is None or not _EMAIL.fullmatch(text):
                raise invalid_argument(name, "must be an email address or null.")
            checked[key] = text.lower()
        else:
            limit = MAX_LONG_TEXT if key in ("signature", "paused_auto_reply") else MAX_TEXT
            checked[key] = _check_text(name, value, limit)
    return checked


def _check_rule(rule: Rule) -> Rule:
    name = _check_text("name", rule.name)
    if not name:
        raise invalid_argument("name", "is required.")
    if not -1_000_000 <= rule.priority <= 1_000_000:
        raise invalid_argument("priority", "must be between -1000000 and 1000000.")
    match: dict[str, str] = {}
    for key, value in rule.match.items():
        if key not in MATCH_KEYS:
            raise invalid_argument(
                f"match.{key}", "is not a match key; use from, to, subjectContains."
            )
        text = _check_text(f"match.{MATCH_KEYS[key]}", value)
        if text is not None:
            match[key] = text
    if rule.action_type not in RULE_ACTIONS:
        raise invalid_argument("action.type", f"must be one of {', '.join(RULE_ACTIONS)}.")
    if rule.action_type == "move_to_folder" and not rule.folder_id:
        raise invalid_argument("action.folderId", "is required for move_to_folder.")
    if rule.action_type != "move_to_folder" and rule.folder_id:
        raise invalid_argument("action.folderId", "is only for move_to_folder.")
    return replace(rule, name=name, match=match)
