"""The rules of inboxes (DESIGN §3, §4 Inboxes; seeds 000, 001, 003).

Placement: an inbox lives in one pod (the default pod when none is named) for its
whole life, on the shared domain or on a verified custom domain of the account
that is account-wide or scoped to the same pod. Creation follows DESIGN §3's
child side: check the pod and domain, commit the inbox ``pending``, re-check
both, then make it live or undo it.

Routes (DESIGN §7.2): an inbox's address is also a route in the messages
service's directory, unique across inboxes, mailboxes and accounts. The route
is claimed after the pending row is committed and confirmed after the inbox is
live; an address the directory holds for anyone else is treated as taken (the
next fallback, or ``address_taken`` when strict). A delete commits its intent
(``deleting``), releases the route (a tombstone its pod may reclaim), then
deletes the row. The directory being down fails a create or delete closed with
``unavailable``. The sweep finishes or undoes what a crash left, and claims the
routes of inboxes from before the directory, reporting conflicts.

Allocation (seed 003): the caller's own address in the same pod is returned as
it is (an idempotent retry); an address held otherwise falls back to
``username1`` … ``username99`` unless strict. Uniqueness across accounts is the
database's unique index; the plan's inbox limit is counted in this service's own
transaction. This module imports no transport.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from dataclasses import dataclass

from services.chassis import ids, pagination
from services.chassis.addresses import domain_key
from services.chassis.directory import AddressDirectory, AddressHeld, Claim
from services.chassis.errors import MailplaneError, invalid_argument
from services.chassis.logs import get_logger
from services.chassis.pagination import PageTokens
from services.chassis.peers import AccountStanding, DomainsClient, PodRef, PodsClient
from services.chassis.plans import PLAN_LIMITS
from services.inboxes import addresses, credentials
from services.inboxes.credentials import CredentialHasher, MailServers
from services.inboxes.models import Holder, Inbox
from services.inboxes.store import AddressTaken, InboxStore

_log = get_logger("mailplane.inboxes")
MAX_DISPLAY_NAME = 255
#: How often, in seconds, a create waits on the same account's create of the
#: same address that is still in flight.
_SETTLE_POLL = 0.02
#: How many stale or unrouted inboxes one sweep handles.
SWEEP_BATCH = 200


def inbox_not_found(inbox_id: str) -> MailplaneError:
    """Returns the ``inbox_not_found`` error."""
    return MailplaneError(
        "inbox_not_found", f"No inbox {inbox_id!r} in this account; list inboxes to find it."
    )


@dataclass(frozen=True)
class InboxSettings:
    """What the inbox rules need from settings.

    Attributes:
        shared_domain: the platform's own domain (DESIGN §1).
        servers: the IMAP and SMTP endpoints put in credentials.
        settle_seconds: how long a create waits for the same account's in-flight
            create of the same address before answering ``unavailable``.
    """

    shared_domain: str
    servers: MailServers
    settle_seconds: float = 10.0


@dataclass(frozen=True)
class Created:
    """The answer of a create: the inbox, whether it existed, and the password
    (``None`` when it existed: credentials are shown on first creation only)."""

    inbox: Inbox
    existed: bool
    password: str | None


class InboxService:
    """Inboxes of an account.

    Args:
        store: the inboxes schema.
        pods: the pods service client.
        domains: the domains service client.
        config: the shared domain and mail servers.
        hasher: hashes and verifies IMAP/SMTP passwords under the server-side key.
        directory: the messages service's route directory.
    """

    def __init__(
        self,
        store: InboxStore,
        pods: PodsClient,
        domains: DomainsClient,
        config: InboxSettings,
        hasher: CredentialHasher,
        directory: AddressDirectory,
        *,
        page_tokens: PageTokens,
    ):
        self._directory = directory
        self._store = store
        self._page_tokens = page_tokens
        self._pods = pods
        self._domains = domains
        self._config = config
        self._hasher = hasher

    @property
    def servers(self) -> MailServers:
        """The IMAP and SMTP endpoints credentials point at."""
        return self._config.servers

    async def create(
        self,
        account_id: str,
        username: str | None,
        domain: str | None,
        display_name: str | None,
        pod_ref: str | None,
        strict: bool,
    ) -> Created:
        """Creates an inbox, or returns the caller's own at the same address and pod.

        Args:
            username: requested local part; ``None`` generates one from the display
                name or the pod's name.
            domain: ``None`` for the shared domain, else a custom domain's name.
            pod_ref: a pod ID or clientId; ``None`` for the default pod.
            strict: no ``username1`` … fallback.

        Raises:
            MailplaneError: ``invalid_argument``, ``pod_not_found``, ``pod_busy``,
                ``domain_not_found``, ``domain_not_verified``,
                ``domain_pod_mismatch``, ``domain_busy``, ``account_expired``,
                ``username_taken``, ``address_taken`` (strict, and the address
                is another inbox's or mailbox's route, or a tombstone of another
                pod), ``inbox_limit_reached``, ``unavailable`` (nothing is left
                behind).
        """
        requested = addresses.check_username(username) if username is not None else None
        display_name = _check_display_name(display_name)
        if pod_ref is not None and not pod_ref.strip():
            raise invalid_argument("podId", "is empty; omit it for the default pod.")
        pod = await (self._pods.live_pod(pod_ref) if pod_ref else self._pods.default_pod())
        custom = self._custom_domain(domain)
        if custom is not None:
            domain_name = (await self._domains.usable_by(account_id, custom, pod.id)).name
        else:
            domain_name = self._config.shared_domain
        base = requested or addresses.generated_username(display_name, pod.name)
        try:
            created = await self._allocate_routed(
                account_id, pod, base, domain_name, display_name, strict
            )
        except MailplaneError as error:
            if requested is not None or error.code != "username_taken":
                raise
            base = addresses.generated_username()  # a generated name and its fallbacks are taken
            created = await self._allocate_routed(
                account_id, pod, base, domain_name, display_name, strict
            )
        if not created.existed:
            await self._confirm_or_undo(account_id, created.inbox, custom is not None)
            _log.info(
                "inbox_created",
                account_id=account_id,
                inbox_id=created.inbox.id,
                pod_id=pod.id,
                fallback=created.inbox.username != base,
            )
        return created

    def _custom_domain(self, domain: str | None) -> str | None:
        if domain is None:
            return None
        name = domain_key(domain)
        if not name:
            raise invalid_argument("domain", "is empty; omit it for the shared domain.")
        return None if name == self._config.shared_domain else name

    async def _allocate_routed(
        self,
        account_id: str,
        pod: PodRef,
        base: str,
        domain: str,
        display_name: str | None,
        strict: bool,
    ) -> Created:
        """Allocates a pending inbox whose address the directory has let it claim
        (DESIGN §7.2): a candidate held there by anyone else counts as taken."""
        held: set[str] = set()
        while True:
            created = await self._allocate(
                account_id, pod, base, domain, display_name, strict, held
            )
            if created.existed:
                return created
            inbox = created.inbox
            try:
                await self._directory.claim(_claim_of(inbox))
                return created
            except AddressHeld as error:
                await self._store.delete_pending(account_id, inbox.id)
                _log.info(
                    "inbox_address_held",
                    account_id=account_id,
                    email=inbox.email,
                    holder_kind=error.holder.get("holderKind"),
                    holder_state=error.holder.get("holderState"),
                )
                if strict:
                    raise address_taken(inbox.email) from None
                held.add(inbox.email)
            except BaseException:
                await self._undo(inbox)
                raise

    async def _undo(self, inbox: Inbox) -> None:
        """Removes a pending inbox and releases its claim. With the directory down
        the claim stays pending: the directory's sweep drops it, since no inbox
        holds it any more."""
        await self._store.delete_pending(inbox.account_id, inbox.id)
        with contextlib.suppress(MailplaneError):
            await self._directory.release(inbox.id, inbox.email)

    async def _allocate(
        self,
        account_id: str,
        pod: PodRef,
        base: str,
        domain: str,
        display_name: str | None,
        strict: bool,
        held: set[str],
    ) -> Created:
        pairs = [
            (name, f"{name}@{domain}")
            for name in addresses.candidates(base, strict)
            if f"{name}@{domain}" not in held
        ]
        names = [name for name, _ in pairs]
        emails = [email for _, email in pairs]
        standing: AccountStanding | None = None
        password: str | None = None
        password_hash = ""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self._config.settle_seconds
        while True:
            holders = await self._store.holders(emails)
            choice = _first_usable(emails, holders, account_id, pod.id)
            if isinstance(choice, Holder):  # the caller's own address in this pod
                if not choice.pending:
                    inbox = await self._store.get(account_id, choice.inbox_id)
                    if inbox is not None:
                        return Created(inbox, existed=True, password=None)
                if loop.time() > give_up:
                    raise MailplaneError(
                        "unavailable",
                        f"An earlier create of {base}@{domain} is still in flight; retry.",
                    )
                await asyncio.sleep(_SETTLE_POLL)  # its create is in flight: let it settle
                continue
            if choice is None:
                raise addresses.username_taken(f"{base}@{domain}", strict)
            if standing is None:  # asked only when an inbox is to be made, not for a retry
                standing = await self._pods.get_account()
            if standing.expired:
                raise MailplaneError(
                    "account_expired",
                    "This account has expired: it can read and delete but not create inboxes. "
                    "Ask the operator to reactivate it.",
                )
            if password is None:
                password = credentials.new_password()
                password_hash = self._hasher.hash(password)
            limit = PLAN_LIMITS[standing.plan].inboxes
            try:
                inbox = await self._store.insert_pending(
                    ids.new_id("inb"),
                    account_id,
                    pod.id,
                    names[emails.index(choice)],
                    domain,
                    display_name,
                    password_hash,
                    limit,
                )
            except AddressTaken:
                continue  # taken since we looked: look again
            if inbox is None:
                raise MailplaneError(
                    "inbox_limit_reached",
                    f"Inbox limit reached ({limit}) for the {standing.plan} plan; delete an inbox "
                    "or upgrade the plan.",
                    {"limit": limit or 0},
                )
            return Created(inbox, existed=False, password=password)

    async def _confirm_or_undo(self, account_id: str, inbox: Inbox, custom: bool) -> None:
        # DESIGN §3 child side: the pod and the domain are re-read after the pending
        # row is committed, so either this sees a delete or re-scope intent, or the
        # parent's count sees the pending inbox.
        try:
            checks: list[Awaitable[object]] = [self._pods.live_pod(inbox.pod_id)]
            if custom:
                checks.append(self._domains.usable_by(account_id, inbox.domain, inbox.pod_id))
            await asyncio.gather(*checks)
            if await self._store.mark_live(account_id, inbox.id) is None:
                raise MailplaneError(
                    "unavailable", "The inbox's creation took too long and was undone; retry."
                )
        except BaseException:
            await self._undo(inbox)
            raise
        try:
            await self._directory.confirm(_claim_of(inbox))
        except (MailplaneError, AddressHeld) as error:
            # The inbox is live: its claim stays pending (mail answers 451) until the
            # directory's sweep sees the live inbox and confirms it.
            _log.warning("inbox_route_unconfirmed", inbox_id=inbox.id, error=repr(error))

    async def get(self, account_id: str, inbox_id: str) -> Inbox:
        """Returns an inbox of the account. Raises ``inbox_not_found``."""
        inbox = await self._store.get(account_id, inbox_id) if inbox_id else None
        if inbox is None:
            raise inbox_not_found(inbox_id)
        return inbox

    async def list_inboxes(
        self, account_id: str, pod_ref: str | None, domain: str | None, size: int, token: str
    ) -> tuple[list[Inbox], str]:
        """Returns a page of inboxes (optionally of one pod and/or domain), oldest
        first, and the next page's token.

        Raises:
            MailplaneError: ``invalid_argument`` (page), ``pod_not_found``.
        """
        pod_id = (await self._pods.get_pod(pod_ref)).id if pod_ref else None
        domain_name = domain_key(domain) if domain else None
        listing = f"inboxes:{pod_id or ''}:{domain_name or ''}"
        page = await self._store.list_inboxes(
            account_id,
            pod_id,
            domain_name,
            self._page_tokens.decode(account_id, listing, token),
            pagination.page_size(size),
        )
        next_token = (
            self._page_tokens.encode(account_id, listing, page.next_key) if page.next_key else ""
        )
        return page.items, next_token

    async def update_display_name(
        self, account_id: str, inbox_id: str, display_name: str | None
    ) -> Inbox:
        """Sets (or clears, with ``None``) an inbox's display name.

        Raises:
            MailplaneError: ``invalid_argument``, ``inbox_not_found``.
        """
        display_name = _check_display_name(display_name)
        inbox = await self._store.update_display_name(account_id, inbox_id, display_name)
        if inbox is None:
            raise inbox_not_found(inbox_id)
        return inbox

    async def delete(self, account_id: str, inbox_id: str) -> str:
        """Deletes an inbox and its credentials and tombstones its route (its pod
        may claim the address again within the reclaim window); returns its ID.

        Raises:
            MailplaneError: ``inbox_not_found``; ``unavailable`` when the
                directory is down (the inbox stays).
        """
        inbox = await self._store.begin_delete(account_id, inbox_id) if inbox_id else None
        if inbox is None:
            raise inbox_not_found(inbox_id)
        try:
            await self._directory.release(inbox.id)
        except BaseException:
            await self._store.rollback_delete(account_id, inbox.id)
            raise
        await self._store.finish_delete(account_id, inbox.id)
        _log.info("inbox_deleted", account_id=account_id, inbox_id=inbox_id)
        return inbox_id

    async def rotate_credentials(self, account_id: str, inbox_id: str) -> tuple[Inbox, str]:
        """Replaces an inbox's password; the old one stops working at once.

        Returns:
            ``(inbox, new_password)``; the password is not stored, only its keyed
            hash (which replaces a legacy argon2id hash too).

        Raises:
            MailplaneError: ``inbox_not_found``.
        """
        inbox = await self.get(account_id, inbox_id)
        password = credentials.new_password()
        if not await self._store.set_password_hash(
            account_id, inbox.id, self._hasher.hash(password)
        ):
            raise inbox_not_found(inbox_id)
        _log.info("inbox_credentials_rotated", account_id=account_id, inbox_id=inbox_id)
        return inbox, password

    async def verify_login(self, email: str, password: str) -> tuple[str, str, str]:
        """Checks an IMAP/SMTP login.

        Returns:
            ``(inbox_id, account_id, pod_id)``.

        Raises:
            MailplaneError: ``unauthenticated`` for an unknown address or a wrong
                password (the same answer, in about the same time; only an inbox
                still holding a legacy argon2id hash answers ~20 ms slower, until
                its credentials rotate).
        """
        login = await self._store.login(email.strip()) if email else None
        if not await self._hasher.matches(login[3] if login else None, password):
            raise MailplaneError("unauthenticated", "The address or password is wrong.")
        assert login is not None
        return login[0], login[1], login[2]

    async def count(
        self, account_id: str, pod_id: str | None, domain: str | None, outside_pod_id: str | None
    ) -> int:
        """Counts inboxes (pending ones included) for DESIGN §3's parent side."""
        name = domain_key(domain) if domain else None
        return await self._store.count(account_id, pod_id, name, outside_pod_id)

    async def held_addresses(self, inbox_ids: list[str]) -> list[tuple[str, str, bool]]:
        """``(inbox_id, email, live)`` of the given inboxes that are pending or
        live, for the directory's sweep of stale claims."""
        return await self._store.held_addresses(inbox_ids)

    async def sweep(self, older_than_seconds: float) -> int:
        """Finishes what a crash left (DESIGN §3): a stale pending create is undone
        and its claim released; a stale delete releases its route and finishes.
        Then claims and confirms the routes of live inboxes that have none (those
        from before the directory); an address another owner holds is a
        conflict, logged as ``route_conflict`` with both owners and kept.

        Returns:
            How many conflicts this sweep found.

        Raises:
            MailplaneError: ``unavailable`` when the directory is down (the next
                sweep tries again).
        """
        swept: list[str] = []
        for inbox in await self._store.stale(older_than_seconds, SWEEP_BATCH):
            await self._directory.release(
                inbox.id, inbox.email if inbox.state == "pending" else None
            )
            if inbox.state == "pending":
                await self._store.delete_pending(inbox.account_id, inbox.id)
            else:
                await self._store.finish_delete(inbox.account_id, inbox.id)
            swept.append(inbox.id)
        if swept:
            _log.info("stale_inboxes_swept", inbox_ids=swept)
        conflicts = 0
        for inbox_id, account_id, pod_id, email in await self._store.unrouted(SWEEP_BATCH):
            claim = Claim(email, "inbox", inbox_id, account_id, pod_id)
            try:
                await self._directory.claim(claim)
                await self._directory.confirm(claim)
            except AddressHeld as error:
                conflicts += 1
                _log.warning(
                    "route_conflict",
                    address=email,
                    owner_id=inbox_id,
                    account_id=account_id,
                    holder_owner_id=error.holder.get("holderOwnerId"),
                    holder_account_id=error.holder.get("holderAccountId"),
                    holder_kind=error.holder.get("holderKind"),
                    holder_state=error.holder.get("holderState"),
                )
                await self._store.set_route_state(account_id, inbox_id, "conflict")
                continue
            await self._store.set_route_state(account_id, inbox_id, "routed")
            _log.info("inbox_route_backfilled", inbox_id=inbox_id, address=email)
        return conflicts


def _claim_of(inbox: Inbox) -> Claim:
    return Claim(inbox.email.lower(), "inbox", inbox.id, inbox.account_id, inbox.pod_id)


def address_taken(email: str) -> MailplaneError:
    """Returns the ``address_taken`` error of an address the directory holds for
    another owner (a mailbox, another account's inbox, a tombstone)."""
    return MailplaneError(
        "address_taken",
        f"{email} is taken by another inbox or mailbox, or reserved after a delete; choose "
        "another username or retry without strict=true.",
        {"email": email},
    )


def _first_usable(
    emails: list[str], holders: dict[str, Holder], account_id: str, pod_id: str
) -> Holder | str | None:
    """The first candidate that is the caller's own in this pod (its holder) or
    free (its email); ``None`` when every candidate is held by someone else."""
    for email in emails:
        holder = holders.get(email)
        if holder is None:
            return email
        if holder.account_id == account_id and holder.pod_id == pod_id:
            return holder
    return None


def _check_display_name(display_name: str | None) -> str | None:
    if display_name is None:
        return None
    if len(display_name) > MAX_DISPLAY_NAME:
        raise invalid_argument("displayName", f"is longer than {MAX_DISPLAY_NAME} characters.")
    if any(c in display_name for c in "\r\n\0"):
        raise invalid_argument("displayName", "may not contain line breaks or NUL.")
    return display_name.strip() or None
