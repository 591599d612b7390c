"""Who is calling: API-key secrets, principals and the short authentication cache.

A secret is ``mp_`` + 33 base62 characters (192 random bits) + a 6-character
base62 CRC-32 checksum of them, so a mistyped or made-up key is refused without
a database read. Only its SHA-256 is stored. The chassis interceptor resolves
``authorization: Bearer <secret>`` metadata to a ``Principal`` through the pods
service (cached for at most ``auth_cache_seconds``, 5 s by default, so a deleted
key stops working everywhere within 5 s) and exposes it to servicers through
``current_principal()``. The service credential travels in its own metadata key,
``x-mailplane-internal-token``, which the gateway never sets from client input.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import secrets
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from services.chassis.errors import MailplaneError, invalid_argument

SECRET_PREFIX = "mp_"
_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_BODY_LEN = 33  # 62**33 > 2**192
_CHECK_LEN = 6  # 62**6 > 2**32
INTERNAL_TOKEN_METADATA = "x-mailplane-internal-token"


PERMISSIONS = ("read", "write", "admin")
SCOPE_TYPES = ("account", "pod", "inbox", "mailbox")


@dataclass(frozen=True)
class Principal:
    """The caller of one RPC (issue 6: scoped keys).

    Attributes:
        account_id: the account a key belongs to; ``None`` for the operator.
        api_key_id: the key's ID; ``None`` for the operator.
        operator: whether the caller presented the service credential.
        scope_type: ``account``, ``pod``, ``inbox`` or ``mailbox``.
        scope_ids: the pod, inbox or mailbox IDs in scope (empty for account).
        permissions: a subset of ``read``, ``write``, ``admin``.
    """

    account_id: str | None
    api_key_id: str | None = None
    operator: bool = False
    scope_type: str = "account"
    scope_ids: tuple[str, ...] = ()
    permissions: frozenset[str] = frozenset(PERMISSIONS)

    @property
    def pod_id(self) -> str | None:
        """The one pod a pod-scoped key may reach; ``None`` for other scopes."""
        return self.scope_ids[0] if self.scope_type == "pod" else None

    def reaches_pod(self, pod_id: str) -> bool:
        """Whether an account or pod key reaches resources in ``pod_id`` (inbox and
        mailbox keys reach no pod as such)."""
        return self.scope_type == "account" or self.pod_id == pod_id


OPERATOR = Principal(account_id=None, operator=True)

_principal: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "mailplane_principal", default=None
)


def current_principal() -> Principal | None:
    """Returns the principal of the RPC being served, or ``None`` if it sent no key."""
    return _principal.get()


def set_principal(principal: Principal | None) -> contextvars.Token[Principal | None]:
    """Makes ``principal`` the current one; returns the token to reset it."""
    return _principal.set(principal)


def reset_principal(token: contextvars.Token[Principal | None]) -> None:
    """Restores the principal that ``token`` replaced."""
    _principal.reset(token)


@dataclass(frozen=True)
class Access:
    """Who may call one RPC: a row of a service's authorization table.

    Every RPC of every service has one row; the chassis interceptor enforces it
    (``authorize``) before the servicer runs, and refuses an RPC without a row.
    Which resource a key reaches (its pod, inbox or mailboxes) is the servicer's
    check; this row decides whether the caller may call the method at all.

    Attributes:
        permission: what an API key needs (``read``, ``write`` or ``admin``);
            ``None`` when no API key may call it.
        scopes: the key scopes that may call it (``account``, ``pod``, ``inbox``,
            ``mailbox``).
        operator: whether the service credential may call it (DESIGN §2: work no
            caller started, calls between services, operator commands).
        pod_filter: the request field that filters by pod, if any. A pod filter is
            outside the reach of an inbox or mailbox key, which reaches no pod as
            such: it is answered ``pod_not_found``, as a pod key's filter naming
            another pod is.
    """

    permission: str | None = None
    scopes: frozenset[str] = frozenset()
    operator: bool = False
    pod_filter: str | None = None


def keys(
    permission: str, *scopes: str, operator: bool = False, pod_filter: str | None = None
) -> Access:
    """The row of an RPC that API keys of ``scopes`` with ``permission`` may call
    (and the service credential too when ``operator``)."""
    return Access(permission, frozenset(scopes), operator, pod_filter)


#: The row of an RPC only the service credential may call.
OPERATOR_ONLY = Access(operator=True)
#: Every key scope, for RPCs whose resources decide what each key reaches.
ALL_SCOPES = SCOPE_TYPES


def authorize(access: Access | None, principal: Principal | None, request: object) -> None:
    """Checks a call against its row of the authorization table.

    Args:
        access: the method's row; ``None`` when the table has none, which is
            refused (fail closed).
        principal: the caller; ``None`` when it sent no credential.
        request: the request message, for the row's ``pod_filter``.

    Raises:
        MailplaneError: ``unauthenticated`` without a credential;
            ``permission_denied`` for a method missing from the table, the service
            credential where it may not call, a key of a scope or without the
            permission the row needs; ``pod_not_found`` for a pod filter outside
            an inbox or mailbox key's reach.
    """
    if access is None:
        raise MailplaneError(
            "permission_denied", "This method has no authorization rule, so nobody may call it."
        )
    if principal is None:
        raise MailplaneError(
            "unauthenticated",
            "This call needs an API key: send `Authorization: Bearer <key>`.",
        )
    if principal.operator:
        if not access.operator:
            raise MailplaneError(
                "permission_denied",
                "The service credential cannot call this method: it acts for an API key.",
            )
        return
    if access.permission is None:
        raise MailplaneError(
            "permission_denied",
            "Only the operator may do this: use mailplane-admin with the service credential.",
        )
    if principal.scope_type not in access.scopes:
        wanted = " or a ".join(s for s in SCOPE_TYPES if s in access.scopes)
        raise MailplaneError(
            "permission_denied",
            f"A {principal.scope_type}-scoped API key cannot do this; it needs a key "
            f"scoped to the {wanted}.",
            {"scope": principal.scope_type},
        )
    if access.permission not in principal.permissions:
        raise MailplaneError(
            "permission_denied",
            f"This API key lacks the {access.permission!r} permission; use a key that has it.",
            {"permission": access.permission},
        )
    if access.pod_filter and principal.scope_type in ("inbox", "mailbox"):
        pod_ref = getattr(request, access.pod_filter, "")
        if pod_ref:
            raise MailplaneError(
                "pod_not_found",
                f"No pod {pod_ref!r} within this {principal.scope_type}-scoped key's reach; "
                "leave the pod filter out.",
                {"podId": pod_ref},
            )


def current() -> Principal:
    """Returns the caller's principal (the interceptor has authorized it).

    Raises:
        MailplaneError: ``unauthenticated`` when the call carries no credential.
    """
    principal = _principal.get()
    if principal is None:
        raise MailplaneError(
            "unauthenticated",
            "This call needs an API key: send `Authorization: Bearer <key>`.",
        )
    return principal


def acting_account(requested: str = "") -> str:
    """Returns the ID of the account the RPC acts on: an API key's own account;
    for the service credential, the request's ``account_id``.

    Args:
        requested: the request's ``account_id`` field; empty means the key's own.

    Raises:
        MailplaneError: ``unauthenticated``; ``invalid_argument`` (``account_id``)
            for the service credential without an account; ``account_not_found``
            when a key names another account than its own.
    """
    principal = current()
    if principal.account_id is None:
        if not requested:
            raise invalid_argument(
                "account_id", "is required with the service credential: name the account."
            )
        return requested
    if requested and requested != principal.account_id:
        raise MailplaneError("account_not_found", f"No account {requested!r} for this key.")
    return principal.account_id


def reaches(pod_id: str, kind: str | None = None, resource_id: str | None = None) -> bool:
    """Whether the caller's key reaches a resource in ``pod_id``: every account
    key does; a pod key in its pod; an inbox or mailbox key only the ``kind``
    (``inbox``/``mailbox``) resource with an ID in its scope. A resource
    out of reach is answered as not found, never as forbidden."""
    principal = _principal.get()
    if principal is None or principal.operator or principal.scope_type == "account":
        return True
    if principal.scope_type == "pod":
        return principal.pod_id == pod_id
    return principal.scope_type == kind and resource_id in principal.scope_ids


def _base62(value: int, width: int) -> str:
    chars = []
    for _ in range(width):
        value, digit = divmod(value, 62)
        chars.append(_ALPHABET[digit])
    return "".join(reversed(chars))


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode()), _CHECK_LEN)


def new_secret() -> str:
    """Returns a new API-key secret: ``mp_`` + 33 + 6 base62 characters (42 in all)."""
    body = _base62(secrets.randbits(192), _BODY_LEN)
    return f"{SECRET_PREFIX}{body}{_checksum(body)}"


def well_formed(secret: str) -> bool:
    """Whether ``secret`` has the shape and checksum of a Mailplane key (no I/O)."""
    if len(secret) != len(SECRET_PREFIX) + _BODY_LEN + _CHECK_LEN:
        return False
    if not secret.startswith(SECRET_PREFIX):
        return False
    body = secret[len(SECRET_PREFIX) : len(SECRET_PREFIX) + _BODY_LEN]
    if any(c not in _ALPHABET for c in body):
        return False
    return hmac.compare_digest(secret[-_CHECK_LEN:], _checksum(body))


def secret_hash(secret: str) -> bytes:
    """Returns the SHA-256 digest (32 bytes) under which a secret is stored."""
    return hashlib.sha256(secret.encode()).digest()


def bad_key() -> MailplaneError:
    """Returns the ``unauthenticated`` error for a malformed, unknown or deleted key."""
    return MailplaneError(
        "unauthenticated",
        "The API key is malformed, unknown or deleted; send a live key as "
        "`Authorization: Bearer <key>`.",
    )


Resolver = Callable[[str], Awaitable[Principal]]


class KeyCache:
    """Resolves secrets to principals, remembering answers for ``ttl_seconds``.

    Malformed secrets are refused before the resolver is asked (the shape is
    checked on a cache miss only). Only successes are cached, keyed by the
    secret's SHA-256, so a new key works at once and a deleted key stops working
    within ``ttl_seconds``.

    Args:
        resolve: asks the source of truth (the pods store, or the pods service
            over gRPC); raises ``unauthenticated`` for an unknown key.
        ttl_seconds: how long an answer is trusted; at most 5 s in production.
        max_entries: the cache's bound; expired entries are dropped past it.
    """

    def __init__(self, resolve: Resolver, ttl_seconds: float = 5.0, max_entries: int = 10_000):
        self._resolve = resolve
        self._ttl = ttl_seconds
        self._max = max_entries
        self._entries: dict[bytes, tuple[float, Principal]] = {}

    async def authenticate(self, secret: str) -> Principal:
        """Returns the principal of ``secret``.

        Raises:
            MailplaneError: ``unauthenticated`` for a malformed or unknown key;
                ``unavailable`` when the pods service cannot be asked.
        """
        # The cache is looked at first: only secrets that passed the shape check
        # are ever cached, so a hit needs no re-check (the check, base62 and a
        # CRC-32 in Python, costs more than the SHA-256 and the lookup).
        digest = secret_hash(secret)
        now = time.monotonic()
        hit = self._entries.get(digest)
        if hit is not None and hit[0] > now:
            return hit[1]
        if not well_formed(secret):
            raise bad_key()
        principal = await self._resolve(secret)
        if len(self._entries) >= self._max:
            self._entries = {k: v for k, v in self._entries.items() if v[0] > now}
            if len(self._entries) >= self._max:
                self._entries.clear()
        self._entries[digest] = (now + self._ttl, principal)
        return principal
