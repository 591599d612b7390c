"""The rules of custom domains (DESIGN §3, §4 Domains; seeds 000, 001).

Scope: a domain is account-wide (any pod may use it) or scoped to exactly one
pod. Creating a pod-scoped domain follows DESIGN §3's child side: check the pod,
commit the domain ``pending``, re-check the pod, then make it live or undo it.
Re-scoping to a pod and deleting follow the parent side: commit the intent, ask
the services that use domains (inboxes, mailboxes) for their counts, then finish
or roll back with ``domain_in_use``. The plan's domain limit is enforced in this
service's own transaction. Only one account may hold a name verified, enforced by
a unique index. DKIM signatures (DESIGN §7.5) are made here, where the keys
live: the shared domain always signs; a custom domain only for its account and
while it can send (SPF and DKIM valid). This module imports no transport.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from cryptography.fernet import Fernet
from cryptography.hazmat.primitives.asymmetric import rsa

from services.chassis import ids, pagination
from services.chassis.errors import MailplaneError, invalid_argument
from services.chassis.logs import get_logger
from services.chassis.pagination import PageTokens
from services.chassis.peers import PodRef, PodsClient
from services.chassis.plans import PLAN_LIMITS
from services.domains import records
from services.domains.models import DOMAIN_STATUSES, Domain
from services.domains.resolver import DnsLookup
from services.domains.signing import DIGEST_BYTES, DkimKeyring, sign_digest
from services.domains.store import DomainStore

_log = get_logger("mailplane.domains")

#: Asks one service that uses domains how many of its resources use a domain,
#: e.g. ``{"inboxes": 2}``. Arguments: the account ID, the domain name, and a pod
#: ID whose resources are not counted (``None`` counts all). Raises
#: ``unavailable``. The inboxes and mailboxes issues add theirs.
DomainUserCounter = Callable[[str, str, str | None], Awaitable[dict[str, int]]]
#: Told after each verification whether a domain can receive: arguments the
#: account ID, the domain name and ``can_receive``. Raises ``unavailable``.
ReceptionListener = Callable[[str, str, bool], Awaitable[None]]


class DomainRoutes(Protocol):
    """The route directory's view of custom domains (DESIGN §7.2): a custom-domain
    address delivers only while its account holds the domain verified and able to
    receive. Each method raises ``unavailable`` when the directory is down."""

    async def set_domain_status(
        self, name: str, account_id: str, routes_deliver: bool, can_send: bool
    ) -> None:
        """Records whether the account's routes on ``name`` deliver, and whether
        the domain can send for the account."""

    async def forget_domain(self, name: str, account_id: str) -> None:
        """Forgets a domain the account deleted."""


def domain_not_found(ref: str) -> MailplaneError:
    """Returns the ``domain_not_found`` error for a domain ID or name."""
    return MailplaneError(
        "domain_not_found", f"No domain {ref!r} in this account; list domains to find it."
    )


def _not_sendable(name: str, shared_domain: str, *, known: bool) -> MailplaneError:
    if known:
        fix = "publish its SPF and DKIM records and verify it until canSend is true"
    else:
        fix = "add it to this account, publish its records and verify it"
    return MailplaneError(
        "domain_not_sendable",
        f"{name} cannot send for this account: {fix}, or send from {shared_domain}.",
        {"domain": name},
    )


def _busy(domain: Domain) -> MailplaneError:
    return MailplaneError(
        "domain_busy",
        f"Domain {domain.name} is being re-scoped or deleted; retry in a moment.",
        {"domainId": domain.id},
    )


@dataclass(frozen=True)
class DkimSignature:
    """A DKIM signature made here.

    Attributes:
        signature: RSASSA-PKCS1-v1_5 over the digest (256 bytes for RSA-2048).
        selector: the DKIM ``s=`` of the key that made it.
    """

    signature: bytes
    selector: str


@dataclass(frozen=True)
class DomainSettings:
    """What the domains rules need from settings."""

    shared_domain: str
    targets: records.MailTargets


class DomainService:
    """Custom domains of an account.

    Args:
        store: the domains schema.
        pods: the pods service client.
        dns: the DNS lookup used by verification.
        cipher: encrypts DKIM private keys at rest.
        config: the shared domain and the record targets.
        user_counters: one per service that uses domains.
        reception_listeners: told after each verification whether the domain
            can receive (the mailboxes service moves mailbox status).
        routes: the route directory, told after each verification whether the
            account's addresses on the domain deliver, and of each delete.
        keyring: the DKIM private keys (the shared domain's and the loaded
            custom domains').
    """

    def __init__(
        self,
        store: DomainStore,
        pods: PodsClient,
        dns: DnsLookup,
        cipher: Fernet,
        config: DomainSettings,
        user_counters: Sequence[DomainUserCounter] = (),
        reception_listeners: Sequence[ReceptionListener] = (),
        routes: DomainRoutes | None = None,
        *,
        page_tokens: PageTokens,
        keyring: DkimKeyring,
    ):
        self._keyring = keyring
        self._routes = routes
        self._store = store
        self._page_tokens = page_tokens
        self._pods = pods
        self._dns = dns
        self._cipher = cipher
        self._config = config
        self._user_counters = tuple(user_counters)
        self._reception_listeners = tuple(reception_listeners)

    async def create(self, account_id: str, raw_name: str, pod_ref: str | None) -> Domain:
        """Creates a domain, pod-scoped when ``pod_ref`` (ID or clientId) is given.

        Raises:
            MailplaneError: ``invalid_argument`` (name), ``pod_not_found``,
                ``pod_busy``, ``account_expired``, ``domain_limit_reached``,
                ``domain_exists``, ``unavailable`` (nothing is left behind).
        """
        name = records.normalize_name(raw_name, self._config.shared_domain)
        pod = await self._live_pod(pod_ref) if pod_ref is not None else None
        standing = await self._pods.get_account()
        if standing.expired:
            raise MailplaneError(
                "account_expired",
                "This account has expired: it can read and delete but not add domains. "
                "Ask the operator to reactivate it.",
            )
        limit = PLAN_LIMITS[standing.plan].domains
        dkim = await asyncio.to_thread(records.new_dkim_key, self._cipher)
        expected = records.expected_records(name, dkim.public_txt, self._config.targets)
        domain = await self._store.insert(
            ids.new_id("dom"),
            account_id,
            name,
            pod.id if pod else None,
            expected,
            dkim.private_encrypted,
            limit,
        )
        if domain is None:
            raise MailplaneError(
                "domain_limit_reached",
                f"Domain limit reached ({limit}) for the {standing.plan} plan; delete a "
                "domain or upgrade the plan.",
                {"limit": limit or 0},
            )
        if pod is not None:
            await self._confirm_pod_or_undo(account_id, domain, pod.id)
        _log.info(
            "domain_created", account_id=account_id, domain_id=domain.id, pod_id=domain.pod_id
        )
        return await self.get(account_id, domain.id)

    async def _confirm_pod_or_undo(self, account_id: str, domain: Domain, pod_id: str) -> None:
        # DESIGN §3 child side: the pod is re-read after the pending row is committed,
        # so either this sees the pod's delete intent or the pod's count sees the row.
        try:
            await self._live_pod(pod_id)
        except BaseException:
            await self._store.delete_pending(account_id, domain.id)
            raise
        await self._store.mark_live(account_id, domain.id)

    async def _live_pod(self, ref: str) -> PodRef:
        if not ref:
            raise invalid_argument(
                "podId", "must be a pod ID or clientId; omit it for account-wide."
            )
        return await self._pods.live_pod(ref)

    async def get(self, account_id: str, ref: str) -> Domain:
        """Returns the domain with ID or name ``ref``. Raises ``domain_not_found``."""
        domain = await self._store.get(account_id, self._lookup_key(ref))
        if domain is None:
            raise domain_not_found(ref)
        return domain

    def _lookup_key(self, ref: str) -> str:
        if ids.looks_like_id("dom", ref):
            return ref
        try:
            return records.normalize_name(ref, self._config.shared_domain)
        except MailplaneError:
            return ref

    async def list_domains(
        self,
        account_id: str,
        pod_ref: str | None,
        status: str | None,
        size: int,
        token: str,
        usable_by_pod: str | None = None,
    ) -> tuple[list[Domain], str]:
        """Returns a page of domains (optionally only those scoped to a pod, or with a
        status) and the next page's token.

        Raises:
            MailplaneError: ``invalid_argument``, ``pod_not_found``.
        """
        if status is not None and status not in DOMAIN_STATUSES:
            raise invalid_argument("status", f"must be one of {', '.join(DOMAIN_STATUSES)}.")
        pod_id = (await self._pods.get_pod(pod_ref)).id if pod_ref else None
        listing = f"domains:{pod_id or ''}:{status or ''}:{usable_by_pod or ''}"
        page = await self._store.list_domains(
            account_id,
            pod_id,
            status,
            self._page_tokens.decode(account_id, listing, token),
            pagination.page_size(size),
            usable_by_pod,
        )
        next_token = (
            self._page_tokens.encode(account_id, listing, page.next_key) if page.next_key else ""
        )
        return page.items, next_token

    async def rescope(self, account_id: str, ref: str, pod_ref: str | None) -> Domain:
        """Moves a domain to account-wide (``pod_ref`` ``None``) or to one pod.

        Raises:
            MailplaneError: ``domain_not_found``, ``pod_not_found``, ``pod_busy``,
                ``domain_busy``, ``domain_in_use`` (with counts of the inboxes and
                mailboxes outside the target pod), ``unavailable``.
        """
        domain = await self.get(account_id, ref)
        target = await self._live_pod(pod_ref) if pod_ref is not None else None
        target_id = target.id if target else None
        if target_id == domain.pod_id:
            return domain
        intent = await self._store.begin_intent(account_id, domain.id, "rescoping", target_id)
        if intent is None:
            raise _busy(domain)
        try:
            if target_id is not None:
                await self._live_pod(target_id)  # re-check after the intent (DESIGN §3)
                await self._raise_if_used(account_id, domain, outside_pod=target_id)
        except BaseException:
            await self._store.rollback_intent(account_id, domain.id)
            raise
        moved = await self._store.finish_rescope(account_id, domain.id)
        if moved is None:
            raise _busy(domain)
        _log.info("domain_rescoped", account_id=account_id, domain_id=domain.id, pod_id=target_id)
        return moved

    async def delete(self, account_id: str, ref: str) -> str:
        """Deletes a domain no inbox or mailbox uses; returns its ID.

        Raises:
            MailplaneError: ``domain_not_found``, ``domain_busy``, ``domain_in_use``,
                ``unavailable``.
        """
        domain = await self.get(account_id, ref)
        if await self._store.begin_intent(account_id, domain.id, "deleting") is None:
            raise _busy(domain)
        try:
            await self._raise_if_used(account_id, domain, outside_pod=None)
        except BaseException:
            await self._store.rollback_intent(account_id, domain.id)
            raise
        if not await self._store.delete_deleting(account_id, domain.id):
            raise _busy(domain)
        _log.info("domain_deleted", account_id=account_id, domain_id=domain.id)
        if self._routes is not None:
            # No address is left on the domain (domain_in_use), so a directory that
            # missed this only keeps treating the name as ours (550, not relay).
            try:
                await self._routes.forget_domain(domain.name, account_id)
            except MailplaneError as error:
                _log.warning("route_domain_not_forgotten", domain_id=domain.id, code=error.code)
        return domain.id

    async def _raise_if_used(
        self, account_id: str, domain: Domain, outside_pod: str | None
    ) -> None:
        results = await asyncio.gather(
            *(count(account_id, domain.name, outside_pod) for count in self._user_counters)
        )
        counts = {k: v for result in results for k, v in result.items()}
        if any(counts.values()):
            where = f" outside pod {outside_pod}" if outside_pod else ""
            used = ", ".join(f"{v} {k}" for k, v in counts.items() if v)
            raise MailplaneError(
                "domain_in_use",
                f"{domain.name} is used by {used}{where}; delete or move them first.",
                counts,
            )

    async def verify(self, account_id: str, ref: str) -> Domain:
        """Looks the domain's records up in DNS now and stores the attempt.

        Returns:
            The domain with each record's status and observed value; ``verified``
            when MX, SPF and DKIM are valid, else ``failed``.

        Raises:
            MailplaneError: ``domain_not_found``; ``domain_claimed`` when another
                account holds the name verified.
        """
        domain = await self.get(account_id, ref)
        answers = await asyncio.gather(*(self._dns.lookup(r.name, r.type) for r in domain.records))
        judged = records.judge(domain.records, answers, self._config.targets)
        verified, can_send, can_receive = records.capabilities(judged)
        status = "verified" if verified else "failed"
        updated = await self._store.record_verification(
            account_id, domain.id, judged, status, can_send, can_receive
        )
        if updated is None:
            raise domain_not_found(ref)
        _log.info("domain_verified", account_id=account_id, domain_id=domain.id, status=status)
        await self._tell_reception(account_id, updated)
        return updated

    async def _tell_reception(self, account_id: str, domain: Domain) -> None:
        # A listener that is down does not fail the verification: the domain's
        # state is stored, and the next verification tells it again.
        if self._routes is not None:
            deliver = domain.status == "verified" and domain.can_receive
            try:
                await self._routes.set_domain_status(
                    domain.name, account_id, deliver, domain.can_send
                )
            except MailplaneError as error:
                _log.warning("route_domain_not_told", domain_id=domain.id, code=error.code)
        for listener in self._reception_listeners:
            try:
                await listener(account_id, domain.name, domain.can_receive)
            except MailplaneError as error:
                _log.warning(
                    "reception_not_told", domain_id=domain.id, code=error.code, message=str(error)
                )

    async def sign_dkim(self, account_id: str, name: str, digest: bytes) -> DkimSignature:
        """Signs the digest of a DKIM header block with the domain's key (DESIGN
        §7.5; RFC 6376 §3.7 and §5.3: the signer computes the digest, the key
        holder the RSA step).

        The shared domain always signs, with ``MAILPLANE_SHARED_DKIM_PRIVATE_KEY``;
        a custom domain signs for the account that has it able to send (SPF and
        DKIM valid, ``canSend``), with its own key.

        Args:
            account_id: the sending account.
            name: the signing domain (the DKIM ``d=``), any case.
            digest: the SHA-256 digest of the canonicalized header block, 32 bytes.

        Raises:
            MailplaneError: ``invalid_argument`` (``digest`` not 32 bytes, ``domain``
                not a domain name); ``domain_not_sendable`` when the account has no
                such custom domain able to send.
        """
        if len(digest) != DIGEST_BYTES:
            raise invalid_argument(
                "digest",
                f"must be the 32-byte SHA-256 digest of the header block; got {len(digest)} bytes.",
            )
        shared = self._config.shared_domain
        if name.strip().lower() == shared:
            key = self._keyring.shared_key
        else:
            domain = records.normalize_name(name, shared)
            found = await self._store.sending_domain(account_id, domain)
            if found is None or not found[1]:
                raise _not_sendable(domain, shared, known=found is not None)
            domain_id = found[0]
            key = self._keyring.cached(domain_id) or await self._load_key(
                account_id, domain_id, domain, shared
            )
        return DkimSignature(sign_digest(key, digest), records.DKIM_SELECTOR)

    async def _load_key(
        self, account_id: str, domain_id: str, name: str, shared: str
    ) -> rsa.RSAPrivateKey:
        encrypted = await self._store.dkim_key(account_id, domain_id)
        if encrypted is None:  # deleted since it was read
            raise _not_sendable(name, shared, known=False)
        return await self._keyring.load(domain_id, encrypted)

    async def count_domains(self, account_id: str, pod_id: str | None) -> int:
        """Counts the account's domains (``pod_id`` ``None``) or those scoped or
        being re-scoped to a pod; pending ones included."""
        return await self._store.count_domains(account_id, pod_id)

    async def sweep(self, older_than_seconds: float) -> None:
        """Undoes stale pending creates and rolls back stale intents (DESIGN §3)."""
        pending, intents = await self._store.sweep(older_than_seconds)
        if pending or intents:
            _log.info("stale_domain_rows_swept", pending=pending, intents=intents)
