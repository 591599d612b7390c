"""The rules of accounts, pods and API keys (seeds 000-002; DESIGN §3, §4).

Pod rules: every account has exactly one default pod, created with it, listed
first and never deletable; ``clientId`` is unique per account, at most 255
characters, never shaped like a pod ID, and names the pod wherever its ID can;
``name`` is at most 255 characters. Deleting a pod follows DESIGN §3's parent side:
commit the ``deleting`` intent, ask every child service for its counts of the
pod's children (pending ones included), then delete, or roll the intent back and
answer with the blocking error. This module imports no transport.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime

from services.chassis import auth, ids, pagination
from services.chassis.errors import MailplaneError, invalid_argument
from services.chassis.logs import get_logger
from services.chassis.pagination import Page, PageTokens
from services.chassis.plans import PLANS
from services.pods.models import (
    ACCOUNT_STATES,
    Account,
    ApiKey,
    Pod,
)
from services.pods.store import PodStore

_log = get_logger("mailplane.pods")
MAX_FIELD_LENGTH = 255

#: Asks one child service how many children a pod has, e.g. ``{"inboxes": 2}``.
#: Arguments: the account ID and the pod ID. Raises ``unavailable`` when the
#: service cannot be asked. The inboxes, domains and mailboxes issues add theirs.
ChildCounter = Callable[[str, str], Awaitable[dict[str, int]]]

#: Counts that block a delete with ``pod_not_empty``; the rest (pod-scoped
#: ``domains``) block it with ``pod_has_domains``.
_CONTENT_COUNTS = ("inboxes", "mailboxes")
#: Live keys one pod, inbox or mailbox may have (issue 6).
MAX_KEYS_PER_SCOPE = 20
#: Confirms that inboxes or mailboxes exist in the caller's account, for a key's
#: scope: ``(scope_type, ids)``. Raises ``inbox_not_found`` /
#: ``mailbox_not_found`` / ``unavailable``.
ScopeCheck = Callable[[str, Sequence[str]], Awaitable[None]]


def _check_length(field: str, value: str | None) -> None:
    if value is not None and len(value) > MAX_FIELD_LENGTH:
        raise invalid_argument(field, f"is {len(value)} characters long; the most is 255.")


def _check_client_id(client_id: str | None) -> None:
    if client_id is None:
        return
    if client_id == "":
        raise invalid_argument("clientId", "must not be empty; send null for no clientId.")
    _check_length("clientId", client_id)
    if ids.looks_like_id("pod", client_id):
        raise invalid_argument(
            "clientId",
            "has the shape of a pod ID (pod_ + 26 characters); choose an identifier "
            "from your own system that does not look like a Mailplane ID.",
        )


def pod_not_found(ref: str) -> MailplaneError:
    """Returns the ``pod_not_found`` error for a pod ID or clientId."""
    return MailplaneError(
        "pod_not_found",
        f"No pod with ID or clientId {ref!r} in this account; list pods to find it.",
    )


def _pod_busy(pod: Pod) -> MailplaneError:
    return MailplaneError(
        "pod_busy", f"Pod {pod.id} is being deleted; retry in a moment.", {"podId": pod.id}
    )


class PodService:
    """Accounts, pods and API keys.

    Args:
        store: the pods schema.
        child_counters: one per child service, asked before a pod is deleted.
        scope_check: confirms the inboxes or mailboxes a new key is scoped to.
    """

    def __init__(
        self,
        store: PodStore,
        child_counters: Sequence[ChildCounter] = (),
        scope_check: ScopeCheck | None = None,
        *,
        page_tokens: PageTokens,
    ):
        self._store = store
        self._page_tokens = page_tokens
        self._child_counters = tuple(child_counters)
        self._scope_check_fn = scope_check
        self._used_keys: set[str] = set()

    async def _scope_check(self, scope_type: str, resource_ids: Sequence[str]) -> None:
        if self._scope_check_fn is None:
            raise MailplaneError(
                "unavailable", f"The {scope_type} service is not wired to confirm the scope."
            )
        await self._scope_check_fn(scope_type, resource_ids)

    # Accounts ---------------------------------------------------------------

    async def create_account(self, name: str, plan: str = "trial") -> tuple[Account, Pod, str]:
        """Creates an account with its default pod and a first API key.

        Returns:
            ``(account, default_pod, api_key_secret)``; the secret is never stored.

        Raises:
            MailplaneError: ``invalid_argument`` for an empty or long name or an
                unknown plan.
        """
        if not name.strip():
            raise invalid_argument("name", "is required: give the account a name.")
        _check_length("name", name)
        if plan not in PLANS:
            raise invalid_argument("plan", f"must be one of {', '.join(PLANS)}.")
        secret = auth.new_secret()
        account, pod, _ = await self._store.create_account(
            ids.new_id("acct"),
            name,
            plan,
            ids.new_id("pod"),
            ids.new_id("key"),
            auth.secret_hash(secret),
            secret[:8],
            secret[-4:],
        )
        _log.info("account_created", account_id=account.id, plan=plan)
        return account, pod, secret

    async def get_account(self, account_id: str) -> Account:
        """Returns the account. Raises ``account_not_found``."""
        account = await self._store.get_account(account_id)
        if account is None:
            raise _account_not_found(account_id)
        return account

    async def set_plan(self, account_id: str, plan: str) -> Account:
        """Sets the plan. Raises ``invalid_argument`` or ``account_not_found``."""
        if plan not in PLANS:
            raise invalid_argument("plan", f"must be one of {', '.join(PLANS)}.")
        account = await self._store.set_plan(account_id, plan)
        if account is None:
            raise _account_not_found(account_id)
        return account

    async def set_state(self, account_id: str, state: str) -> Account:
        """Sets the state. Raises ``invalid_argument`` or ``account_not_found``."""
        if state not in ACCOUNT_STATES:
            raise invalid_argument("state", f"must be one of {', '.join(ACCOUNT_STATES)}.")
        account = await self._store.set_state(account_id, state)
        if account is None:
            raise _account_not_found(account_id)
        return account

    # Pods -------------------------------------------------------------------

    async def create_pod(self, account_id: str, client_id: str | None, name: str | None) -> Pod:
        """Creates a pod.

        Raises:
            MailplaneError: ``invalid_argument`` (length, empty or ID-shaped
                clientId), ``client_id_taken``.
        """
        _check_client_id(client_id)
        _check_length("name", name)
        return await self._store.create_pod(ids.new_id("pod"), account_id, client_id, name)

    async def get_pod(self, account_id: str, ref: str) -> Pod:
        """Returns the pod with ID or clientId ``ref``. Raises ``pod_not_found``."""
        pod = await self._store.get_pod(account_id, ref) if ref else None
        if pod is None:
            raise pod_not_found(ref)
        return pod

    async def list_pods(self, account_id: str, size: int, token: str) -> tuple[list[Pod], str]:
        """Returns a page of pods (default first, then oldest first) and the next
        page's token (empty on the last page).

        Raises:
            MailplaneError: ``invalid_argument`` for a bad size or token.
        """
        tokens = self._page_tokens
        page: Page[Pod] = await self._store.list_pods(
            account_id, tokens.decode(account_id, "pods", token), pagination.page_size(size)
        )
        next_token = tokens.encode(account_id, "pods", page.next_key) if page.next_key else ""
        return page.items, next_token

    async def update_pod(
        self,
        account_id: str,
        ref: str,
        client_id: tuple[str | None] | None,
        name: tuple[str | None] | None,
    ) -> Pod:
        """Changes a pod's clientId and/or name.

        Args:
            client_id: ``None`` leaves it; ``(value,)`` sets it, ``(None,)`` clears it.
            name: likewise.

        Raises:
            MailplaneError: ``invalid_argument``, ``pod_not_found``,
                ``client_id_taken``, ``pod_busy`` while it is being deleted.
        """
        if client_id is not None:
            _check_client_id(client_id[0])
        if name is not None:
            _check_length("name", name[0])
        pod = await self._store.update_pod(account_id, ref, client_id, name)
        if pod is None:
            existing = await self.get_pod(account_id, ref)
            raise _pod_busy(existing)
        return pod

    async def delete_pod(self, account_id: str, ref: str) -> str:
        """Deletes a pod after its child services report it empty (DESIGN §3).

        Returns:
            The deleted pod's ID.

        Raises:
            MailplaneError: ``pod_not_found``; ``default_pod``; ``pod_busy`` when a
                delete is already in flight; ``pod_not_empty`` with ``inboxes`` and
                ``mailboxes`` counts; ``pod_has_domains`` with a ``domains`` count;
                ``unavailable`` when a child service cannot be asked (the intent
                is rolled back, nothing changes).
        """
        pod = await self._store.mark_pod_deleting(account_id, ref) if ref else None
        if pod is None:
            existing = await self.get_pod(account_id, ref)
            if existing.is_default:
                raise MailplaneError(
                    "default_pod",
                    f"Pod {existing.id} is the account's default pod, which cannot be deleted.",
                )
            raise _pod_busy(existing)
        try:
            counts = await self._count_children(account_id, pod.id)
        except BaseException:
            await self._store.mark_pod_active(account_id, pod.id)
            raise
        blocking = {k: v for k, v in counts.items() if v > 0}
        if blocking:
            await self._store.mark_pod_active(account_id, pod.id)
            raise _not_empty(pod, counts, blocking)
        if not await self._store.delete_deleting_pod(account_id, pod.id):
            raise _pod_busy(pod)
        _log.info("pod_deleted", account_id=account_id, pod_id=pod.id)
        return pod.id

    async def _count_children(self, account_id: str, pod_id: str) -> dict[str, int]:
        results = await asyncio.gather(
            *(count(account_id, pod_id) for count in self._child_counters)
        )
        counts: dict[str, int] = {}
        for result in results:
            counts.update(result)
        return counts

    async def sweep(self, older_than_seconds: float) -> list[str]:
        """Rolls back ``deleting`` intents left by a crash; returns those pods' IDs.

        Rolling back is always safe: the pod and its children stay consistent,
        and the caller whose delete was cut off may simply retry.
        """
        reverted = await self._store.revert_stale_deleting_pods(older_than_seconds)
        if reverted:
            _log.info("stale_pod_intents_reverted", pod_ids=reverted)
        return reverted

    # API keys ---------------------------------------------------------------

    async def create_api_key(
        self,
        account_id: str,
        name: str,
        *,
        pod_ref: str | None = None,
        inbox_id: str | None = None,
        mailbox_ids: Sequence[str] = (),
        permissions: Sequence[str] = (),
        expires_at: datetime | None = None,
    ) -> tuple[ApiKey, str]:
        """Creates a key: account-wide, or scoped to one pod (ID or clientId), one
        inbox or some mailboxes (issue 6; seeds 001, 004).

        Args:
            permissions: ``read``/``write``/``admin``; empty means read and write.
            expires_at: when it stops working (must be in the future), or ``None``.

        Returns:
            ``(key, secret)``; the secret is shown once and only its SHA-256 is kept.

        Raises:
            MailplaneError: ``invalid_argument``; ``pod_not_found``,
                ``inbox_not_found``, ``mailbox_not_found``;
                ``api_key_limit_reached`` past 20 live keys per pod, inbox or
                mailbox; ``unavailable`` when the inboxes or mailboxes service
                cannot confirm the scope.
        """
        if not name.strip():
            raise invalid_argument("name", "is required: name the key after who will use it.")
        _check_length("name", name)
        scope_type, scope_ids = await self._key_scope(account_id, pod_ref, inbox_id, mailbox_ids)
        granted = tuple(dict.fromkeys(permissions)) or ("read", "write")
        if any(p not in auth.PERMISSIONS for p in granted):
            raise invalid_argument("permissions", "may hold only read, write and admin.")
        if expires_at is not None and expires_at <= datetime.now(UTC):
            raise invalid_argument("expiresAt", "must be in the future.")
        secret = auth.new_secret()
        key = await self._store.create_api_key(
            ApiKey(
                id=ids.new_id("key"),
                account_id=account_id,
                name=name,
                prefix=secret[:8],
                last4=secret[-4:],
                created_at=datetime.now(UTC),
                scope_type=scope_type,
                scope_ids=scope_ids,
                permissions=granted,
                expires_at=expires_at,
            ),
            auth.secret_hash(secret),
            per_scope_limit=MAX_KEYS_PER_SCOPE,
        )
        if key is None:
            raise MailplaneError(
                "api_key_limit_reached",
                f"A {scope_type} may have at most {MAX_KEYS_PER_SCOPE} live keys; "
                "delete one first.",
                {"limit": MAX_KEYS_PER_SCOPE},
            )
        return key, secret

    async def _key_scope(
        self,
        account_id: str,
        pod_ref: str | None,
        inbox_id: str | None,
        mailbox_ids: Sequence[str],
    ) -> tuple[str, tuple[str, ...]]:
        given = [x for x in (pod_ref, inbox_id, list(mailbox_ids) or None) if x is not None]
        if len(given) > 1:
            raise invalid_argument("podId", "a key is scoped to a pod, an inbox or mailboxes: one.")
        if pod_ref is not None:
            return "pod", ((await self.get_pod(account_id, pod_ref)).id,)
        if inbox_id is not None:
            await self._scope_check("inbox", (inbox_id,))
            return "inbox", (inbox_id,)
        if mailbox_ids:
            unique = tuple(dict.fromkeys(mailbox_ids))
            await self._scope_check("mailbox", unique)
            return "mailbox", unique
        return "account", ()

    async def list_api_keys(
        self, account_id: str, size: int, token: str
    ) -> tuple[list[ApiKey], str]:
        """Returns a page of the account's keys, oldest first, and the next token."""
        tokens = self._page_tokens
        page = await self._store.list_api_keys(
            account_id, tokens.decode(account_id, "api_keys", token), pagination.page_size(size)
        )
        next_token = tokens.encode(account_id, "api_keys", page.next_key) if page.next_key else ""
        return page.items, next_token

    async def delete_api_key(self, account_id: str, key_id: str) -> str:
        """Deletes a key of the account. Raises ``api_key_not_found``."""
        if not key_id or not await self._store.delete_api_key(account_id, key_id):
            raise MailplaneError(
                "api_key_not_found",
                f"No API key {key_id!r} in this account; list keys to find it.",
            )
        return key_id

    async def authenticate(self, secret: str) -> auth.Principal:
        """Resolves a secret to its principal (scope and permissions included) and
        notes the key's use for the next ``flush_key_use``.

        Raises:
            MailplaneError: ``unauthenticated`` for a malformed, unknown, deleted
                or expired key.
        """
        if not auth.well_formed(secret):
            raise auth.bad_key()
        digest = auth.secret_hash(secret)
        found = await self._store.find_api_key(digest)
        if found is None or not hmac.compare_digest(found[1], digest):
            raise auth.bad_key()
        key = found[0]
        self._used_keys.add(key.id)
        return auth.Principal(
            account_id=key.account_id,
            api_key_id=key.id,
            scope_type=key.scope_type,
            scope_ids=key.scope_ids,
            permissions=frozenset(key.permissions),
        )

    async def flush_key_use(self) -> None:
        """Writes ``last_used_at`` for the keys used since the last flush, in one
        statement (no write per request)."""
        used, self._used_keys = self._used_keys, set()
        if used:
            await self._store.touch_api_keys(sorted(used), datetime.now(UTC))

    async def unscope_api_keys(self, account_id: str, scope_type: str, resource_id: str) -> int:
        """Forgets a deleted inbox or mailbox in the account's key scopes; keys left
        with nothing in scope are deleted. Returns how many were deleted."""
        if scope_type not in ("inbox", "mailbox") or not resource_id:
            raise invalid_argument("scopeType", "must be inbox or mailbox, with an ID.")
        revoked = await self._store.unscope_api_keys(account_id, scope_type, resource_id)
        if revoked:
            _log.info("api_keys_revoked", account_id=account_id, count=revoked)
        return revoked


def _account_not_found(account_id: str) -> MailplaneError:
    return MailplaneError("account_not_found", f"No account {account_id!r}.")


def _not_empty(pod: Pod, counts: dict[str, int], blocking: dict[str, int]) -> MailplaneError:
    content = {k: counts.get(k, 0) for k in _CONTENT_COUNTS}
    if any(blocking.get(k) for k in _CONTENT_COUNTS):
        parts = ", ".join(f"{v} {k}" for k, v in content.items() if v)
        return MailplaneError(
            "pod_not_empty",
            f"Pod {pod.id} still has {parts}; delete them first.",
            {**content, **{k: v for k, v in counts.items() if k not in content}},
        )
    domains = counts.get("domains", 0)
    return MailplaneError(
        "pod_has_domains",
        f"Pod {pod.id} still owns {domains} pod-scoped domains; make them account-wide, "
        "move them to another pod or delete them first.",
        {"domains": domains},
    )
