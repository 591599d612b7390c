"""The rules of the route directory (DESIGN §3, §7.2; research mailflow §5.2).

Every deliverable address is one route: an inbox's or a mailbox's address, or a
domain's catch-all (``*@domain``, held by a mailbox). An address is unique across
inboxes, mailboxes and accounts, pending claims and tombstones included, so an
inbox and a mailbox can never both receive at one address, and two domains'
catch-alls can never collide, whichever accounts added them.

The owner services follow DESIGN §3's child side: commit their row pending,
claim the address (pending), re-check their parents, make their row live, then
confirm the claim. A deleted inbox's address becomes a tombstone: it bounces and
only the same pod may claim it again, until ``reclaim_days`` have passed. The
sweep resolves what a crash leaves: a claim pending for longer than a few seconds
is confirmed if its owner is live and holds the address, removed if the owner
does not, and left alone while the owner's own create is still pending (the
owner's sweep undoes it and releases the claim). Tombstones past their window
are deleted. This module imports no transport.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence

from services.chassis.addresses import domain_key
from services.chassis.errors import MailplaneError, invalid_argument
from services.chassis.logs import get_logger
from services.messages.directory_store import DirectoryStore, Route, StaleClaim
from services.messages.models import MailboxPolicy

_log = get_logger("mailplane.messages.directory")
KINDS = ("inbox", "mailbox", "catch_all")
MAILBOX_STATUSES = ("provisioning", "active", "paused", "error")
RULE_ACTIONS = ("move_to_folder", "archive", "mark_spam")
_OWNER_PREFIX = {"inbox": "inb_", "mailbox": "mbx_", "catch_all": "mbx_"}
#: How many stale claims one sweep resolves.
SWEEP_BATCH = 500

#: Asks an owner service which addresses some of its owners hold: owner IDs in,
#: ``{(owner_id, address): live}`` out (an owner being created holds its address
#: not live; a deleted or unknown owner holds nothing). Raises ``unavailable``.
OwnerLookup = Callable[[Sequence[str]], Awaitable[Mapping[tuple[str, str], bool]]]


def _held(address: str, kind: str, holder: Route) -> MailplaneError:
    """The error of a claim on a held address; the details name the holder for
    the calling service (the directory is internal: no caller sees them)."""
    details = {
        "address": address,
        "holderOwnerId": holder.owner_id,
        "holderAccountId": holder.account_id,
        "holderKind": holder.kind,
        "holderState": holder.state,
    }
    if kind == "catch_all":
        return MailplaneError(
            "catch_all_taken", f"{address} is already a catch-all route.", details
        )
    return MailplaneError("address_taken", f"{address} is already routed to an owner.", details)


def check_route(address: str, kind: str, owner_id: str, account_id: str, pod_id: str) -> Route:
    """Validates a claim and returns its route (pending).

    Raises:
        MailplaneError: ``invalid_argument`` naming the field.
    """
    if kind not in KINDS:
        raise invalid_argument("kind", "must be inbox, mailbox or catch_all.")
    local, at, domain = address.strip().lower().rpartition("@")
    domain = domain_key(domain)
    if not at or not local or not domain or "@" in local:
        raise invalid_argument("address", "must be local@domain, or *@domain for a catch-all.")
    if (local == "*") != (kind == "catch_all"):
        raise invalid_argument("address", "is *@domain exactly when the kind is catch_all.")
    if not owner_id.startswith(_OWNER_PREFIX[kind]):
        raise invalid_argument("owner_id", f"must be an {_OWNER_PREFIX[kind]}… ID for {kind}.")
    if not account_id:
        raise invalid_argument("account_id", "is required.")
    if not pod_id:
        raise invalid_argument("pod_id", "is required.")
    return Route(f"{local}@{domain}", domain, kind, owner_id, account_id, pod_id, "pending")


class AddressDirectory:
    """The route directory.

    Args:
        store: the ``routes`` and ``domains`` tables.
        reclaim_days: how long a deleted inbox's address stays its pod's
            (``MAILPLANE_ADDRESS_RECLAIM_DAYS``).
        owners: per route kind, the owner service to ask about stale claims.
    """

    def __init__(
        self,
        store: DirectoryStore,
        reclaim_days: int,
        owners: Mapping[str, OwnerLookup] | None = None,
    ):
        self._store = store
        self._reclaim_days = reclaim_days
        self._owners = dict(owners or {})

    async def claim(self, route: Route) -> Route:
        """Claims ``route.address`` for its owner, pending; the owner's existing
        route (pending or live) is returned as it is.

        Raises:
            MailplaneError: ``address_taken`` (``catch_all_taken``) when another
                owner holds it, with the holder in the details.
        """
        for _ in range(3):  # a route removed between the two reads is claimed again
            claimed = await self._store.claim(route)
            if claimed is not None:
                return claimed
            holder = await self._store.get(route.address)
            if holder is None:
                continue
            if holder.owner_id == route.owner_id and holder.state != "tombstone":
                return holder
            # A custom-domain address held by an account that never verified the
            # domain gives way to the account that did: an unverified domain may
            # not squat a verified owner's addresses (DESIGN §7.2).
            if holder.account_id != route.account_id and await self._store.evict_squatter(
                route.address, holder.owner_id, route.account_id
            ):
                _log.warning(
                    "route_evicted",
                    address=route.address,
                    holder_id=holder.owner_id,
                    holder_account_id=holder.account_id,
                    owner_account_id=route.account_id,
                )
                continue
            raise _held(route.address, route.kind, holder)
        raise MailplaneError("unavailable", f"{route.address} is changing hands; retry.")

    async def confirm(self, route: Route) -> Route:
        """Makes the owner's route live (idempotent).

        Raises:
            MailplaneError: ``address_taken`` (``catch_all_taken``) when another
                owner holds it.
        """
        confirmed = await self._store.confirm(route)
        if confirmed is not None:
            return confirmed
        holder = await self._store.get(route.address)
        if holder is not None and holder.owner_id == route.owner_id and holder.state == "live":
            return holder
        if holder is None:  # removed between the two statements: insert it live
            return await self.confirm(route)
        raise _held(route.address, route.kind, holder)

    async def release(self, owner_id: str, address: str | None) -> int:
        """Releases the owner's routes (``address`` ``None``: all of them).

        Returns:
            How many routes were removed or tombstoned (0 when none was held).
        """
        released = await self._store.release(
            owner_id, address.strip().lower() if address else None, self._reclaim_days
        )
        if released:
            _log.info("routes_released", owner_id=owner_id, address=address, released=released)
        return released

    async def set_domain_status(
        self, name: str, account_id: str, routes_deliver: bool, can_send: bool
    ) -> None:
        """Records whether ``account_id`` holds ``name`` verified and receiving, and
        whether the domain can send for it (kept for the recorded owner only).

        Raises:
            MailplaneError: ``invalid_argument``.
        """
        domain = _check_domain(name, account_id)
        await self._store.set_domain_status(domain, account_id, routes_deliver, can_send)
        _log.info(
            "route_domain_status",
            domain=domain,
            account_id=account_id,
            deliver=routes_deliver,
            can_send=can_send,
        )

    async def set_mailbox_policy(self, policy: MailboxPolicy) -> bool:
        """Records a mailbox's receiving policy unless a newer one is recorded
        (writing ``mailbox.paused``/``mailbox.resumed`` when its status enters
        or leaves ``paused``). Returns whether it was recorded.

        Raises:
            MailplaneError: ``invalid_argument`` naming the field.
        """
        if not policy.mailbox_id.startswith("mbx_"):
            raise invalid_argument("mailbox_id", "must be an mbx_… ID.")
        if not policy.account_id or not policy.pod_id:
            raise invalid_argument("account_id", "and pod_id are required.")
        if policy.version <= 0:
            raise invalid_argument("version", "must be positive.")
        if policy.status not in MAILBOX_STATUSES:
            raise invalid_argument("status", f"must be one of {', '.join(MAILBOX_STATUSES)}.")
        if policy.inbound_rate_limit is not None and policy.inbound_rate_limit <= 0:
            raise invalid_argument("inbound_rate_limit", "must be positive, or 0 for none.")
        if "@" not in policy.address:
            raise invalid_argument("address", "must be the mailbox's address.")
        for rule in policy.rules:
            if rule["action"] not in RULE_ACTIONS:
                raise invalid_argument("rules.action", f"must be one of {', '.join(RULE_ACTIONS)}.")
            if rule["action"] == "move_to_folder" and not rule["folderId"]:
                raise invalid_argument("rules.folder_id", "is required for move_to_folder.")
        recorded = await self._store.set_mailbox_policy(policy)
        _log.info(
            "mailbox_policy_recorded",
            mailbox_id=policy.mailbox_id,
            version=policy.version,
            status=policy.status,
            recorded=recorded,
        )
        return recorded

    async def forget_domain(self, name: str, account_id: str) -> None:
        """Forgets a custom domain its account deleted. Raises ``invalid_argument``."""
        await self._store.forget_domain(_check_domain(name, account_id), account_id)

    async def sweep(self, older_than_seconds: float) -> None:
        """Deletes expired tombstones and resolves stale pending claims by asking
        their owner services (an owner service that is down is asked again on the
        next sweep)."""
        expired = await self._store.delete_expired_tombstones()
        if expired:
            _log.info("route_tombstones_expired", addresses=expired)
        stale = await self._store.stale_claims(older_than_seconds, SWEEP_BATCH)
        by_lookup: dict[str, list[StaleClaim]] = {}
        for claim in stale:
            by_lookup.setdefault("inbox" if claim.kind == "inbox" else "mailbox", []).append(claim)
        for group, claims in by_lookup.items():
            lookup = self._owners.get(group)
            if lookup is None:
                continue
            try:
                held = await lookup(sorted({c.owner_id for c in claims}))
            except MailplaneError as error:
                _log.warning("route_sweep_owner_unavailable", owners=group, code=error.code)
                continue
            live = [c for c in claims if held.get((c.owner_id, c.address)) is True]
            gone = [c for c in claims if (c.owner_id, c.address) not in held]
            await self._store.confirm_stale(live)
            await self._store.drop_stale(gone, older_than_seconds)
            if live or gone:
                _log.info(
                    "stale_route_claims_swept",
                    confirmed=[c.address for c in live],
                    dropped=[c.address for c in gone],
                )


def _check_domain(name: str, account_id: str) -> str:
    domain = domain_key(name)
    if not domain:
        raise invalid_argument("name", "is required.")
    if not account_id:
        raise invalid_argument("account_id", "is required.")
    return domain
