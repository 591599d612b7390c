"""The rules of webhooks (DESIGN §7.6) and their SQL: registration, the target
check, secrets, the delivery log and the test delivery. This module imports no
transport.

Rules:
- ``url`` is http or https with a host, at most 2,048 characters. Unless
  ``webhook_allow_private``, its host must resolve, and only to public
  addresses: loopback, private, link-local and other non-global targets are
  refused here and again at every connection (``services.messages.dispatch``).
- ``eventTypes``: at least one, each from DESIGN §7.6's list.
- ``podIds``, ``inboxIds``, ``mailboxIds``: at most 10 each, each in the
  account and within the caller's reach; an event is delivered when it is in
  one of the pods (if any are named) and of one of the inboxes or mailboxes
  (if any are named).
- Reach (issue 6): a webhook keeps the reach of the key that made it (all of
  the account, a pod, or inboxes and mailboxes) and delivers only events within
  it; a key sees and manages only webhooks within its own reach; anything else
  answers ``webhook_not_found``.
- The signing secret (``whsec_`` + 24 random bytes, base64) is shown once, on
  create and on rotate, and stored Fernet-encrypted; it is never logged.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import orjson

from services.chassis import ids, pagination
from services.chassis.errors import MailplaneError, invalid_argument
from services.chassis.pagination import Page, PageTokens, page_of
from services.messages.dispatch import SecretBox, Sender, ip_literal, is_public
from services.messages.event_log import TEST_EVENT_TYPE, Event, Position
from services.messages.events import check_event_types
from services.messages.service import owner_not_found
from services.messages.store import MailStore, Reach

#: Longest URL, in characters.
MAX_URL = 2048
#: Most IDs in one filter.
MAX_FILTER_IDS = 10
#: Longest description, in characters.
MAX_DESCRIPTION = 500
#: Fields UpdateWebhook may change.
UPDATABLE = ("url", "event_types", "pod_ids", "inbox_ids", "mailbox_ids", "description", "enabled")

#: Resolves a pod ID or clientId to the pod's ID (through the pods service).
PodResolver = Callable[[str], Awaitable[str]]
#: Resolves a host name to its addresses.
HostResolver = Callable[[str], Awaitable[list[str]]]


def webhook_not_found(webhook_id: str) -> MailplaneError:
    """Returns the ``webhook_not_found`` error."""
    return MailplaneError(
        "webhook_not_found", f"No webhook {webhook_id[:64]!r} in this account; list webhooks."
    )


@dataclass(frozen=True)
class Webhook:
    """A registered endpoint; ``secret`` is set only right after create or rotate."""

    id: str
    account_id: str
    url: str
    description: str | None
    event_types: list[str]
    pod_ids: list[str]
    inbox_ids: list[str]
    mailbox_ids: list[str]
    reach: Reach
    enabled: bool
    sealed_secret: bytes = field(repr=False)
    created_at: datetime
    updated_at: datetime
    secret: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class WebhookFields:
    """What a caller sets on a webhook (all of them on create)."""

    url: str = ""
    event_types: tuple[str, ...] = ()
    pod_ids: tuple[str, ...] = ()
    inbox_ids: tuple[str, ...] = ()
    mailbox_ids: tuple[str, ...] = ()
    description: str | None = None
    enabled: bool = True


@dataclass(frozen=True)
class Attempt:
    """One delivery attempt."""

    attempt: int
    status_code: int | None
    error: str | None
    duration_ms: int
    attempted_at: datetime


@dataclass(frozen=True)
class Delivery:
    """One event's delivery to one webhook, with its attempts oldest first."""

    id: str
    webhook_id: str
    event_id: str
    event_type: str
    state: str
    next_attempt_at: datetime | None
    created_at: datetime
    attempts: list[Attempt] = field(default_factory=list)


_WEBHOOK_COLUMNS = (
    "id, account_id, url, description, event_types, pod_ids, inbox_ids, mailbox_ids,"
    " reach_pod_id, reach_owner_ids, enabled, secret_encrypted, created_at, updated_at"
)
#: The webhooks a reach sees: $2 the reach's pod or NULL, $3 its owners or NULL.
_IN_REACH = (
    " AND ($2::text IS NULL OR reach_pod_id = $2)"
    " AND ($3::text[] IS NULL OR (reach_owner_ids IS NOT NULL AND reach_owner_ids <@ $3))"
)
INSERT_WEBHOOK = f"""
INSERT INTO webhooks (id, account_id, url, description, event_types, pod_ids, inbox_ids,
    mailbox_ids, reach_pod_id, reach_owner_ids, enabled, secret_encrypted)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
RETURNING {_WEBHOOK_COLUMNS}
"""
SELECT_WEBHOOK = (
    f"SELECT {_WEBHOOK_COLUMNS} FROM webhooks WHERE account_id = $1{_IN_REACH} AND id = $4"
)
LIST_WEBHOOKS = f"""
SELECT {_WEBHOOK_COLUMNS} FROM webhooks WHERE account_id = $1{_IN_REACH}
  AND ($4::timestamptz IS NULL OR (created_at, id) > ($4, $5::text))
ORDER BY created_at, id LIMIT $6
"""
UPDATE_WEBHOOK = f"""
UPDATE webhooks SET url = $3, description = $4, event_types = $5, pod_ids = $6,
    inbox_ids = $7, mailbox_ids = $8, enabled = $9, updated_at = now()
WHERE account_id = $1 AND id = $2
RETURNING {_WEBHOOK_COLUMNS}
"""
#: A disabled webhook's pending deliveries wait (never due); enabling makes them due.
PARK_DELIVERIES = """
UPDATE webhook_deliveries
SET next_attempt_at = CASE WHEN $2 THEN now() ELSE 'infinity'::timestamptz END
WHERE webhook_id = $1 AND state = 'pending'
"""
ROTATE_SECRET = f"""
UPDATE webhooks SET secret_encrypted = $3, updated_at = now()
WHERE account_id = $1 AND id = $2
RETURNING {_WEBHOOK_COLUMNS}
"""
DELETE_WEBHOOK = "DELETE FROM webhooks WHERE account_id = $1 AND id = $2"
LIST_DELIVERIES = """
SELECT id, webhook_id, event_id, event_type, state, next_attempt_at, created_at
FROM webhook_deliveries
WHERE webhook_id = $1 AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3::text))
ORDER BY created_at DESC, id DESC LIMIT $4
"""
SELECT_ATTEMPTS = """
SELECT delivery_id, attempt, status_code, error, duration_ms, attempted_at
FROM webhook_attempts WHERE delivery_id = ANY($1::text[]) ORDER BY delivery_id, attempt
"""
INSERT_TEST_DELIVERY = """
INSERT INTO webhook_deliveries (id, webhook_id, account_id, event_id, event_type, state,
    attempts)
VALUES ($1, $2, $3, $4, $5, $6, 1)
RETURNING id, webhook_id, event_id, event_type, state, next_attempt_at, created_at
"""
INSERT_ATTEMPT = """
INSERT INTO webhook_attempts (delivery_id, attempt, status_code, error, duration_ms,
    attempted_at)
VALUES ($1, 1, $2, $3, $4, $5)
"""


def _webhook_of(row: Any) -> Webhook:
    owners = row["reach_owner_ids"]
    return Webhook(
        id=row["id"],
        account_id=row["account_id"],
        url=row["url"],
        description=row["description"],
        event_types=list(row["event_types"]),
        pod_ids=list(row["pod_ids"]),
        inbox_ids=list(row["inbox_ids"]),
        mailbox_ids=list(row["mailbox_ids"]),
        reach=Reach(row["reach_pod_id"], tuple(owners) if owners is not None else None),
        enabled=row["enabled"],
        sealed_secret=bytes(row["secret_encrypted"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _delivery_of(row: Any) -> Delivery:
    return Delivery(
        row["id"],
        row["webhook_id"],
        row["event_id"],
        row["event_type"],
        row["state"],
        row["next_attempt_at"],
        row["created_at"],
    )


def _attempt_of(row: Any) -> Attempt:
    return Attempt(
        row["attempt"], row["status_code"], row["error"], row["duration_ms"], row["attempted_at"]
    )


def _reach_args(reach: Reach) -> list[Any]:
    return [reach.pod_id, list(reach.owner_ids) if reach.owner_ids is not None else None]


class WebhookStore:
    """The webhook tables of the ``messages`` schema.

    Args:
        pool: the service's pool.
    """

    def __init__(self, pool: asyncpg.Pool):
        self._pool = pool

    async def insert(
        self, account_id: str, fields: WebhookFields, reach: Reach, sealed: bytes
    ) -> Webhook:
        """Registers a webhook."""
        row = await self._pool.fetchrow(
            INSERT_WEBHOOK,
            ids.new_id("whk"),
            account_id,
            fields.url,
            fields.description,
            list(fields.event_types),
            list(fields.pod_ids),
            list(fields.inbox_ids),
            list(fields.mailbox_ids),
            reach.pod_id,
            list(reach.owner_ids) if reach.owner_ids is not None else None,
            fields.enabled,
            sealed,
        )
        return _webhook_of(row)

    async def get(self, account_id: str, reach: Reach, webhook_id: str) -> Webhook | None:
        """The webhook if it is the account's and within ``reach``."""
        row = await self._pool.fetchrow(SELECT_WEBHOOK, account_id, *_reach_args(reach), webhook_id)
        return _webhook_of(row) if row else None

    async def page(
        self, account_id: str, reach: Reach, resume: list[Any] | None, limit: int
    ) -> Page[Webhook]:
        """A page of webhooks, oldest first (keyset on ``created_at, id``)."""
        at, last = (datetime.fromisoformat(resume[0]), resume[1]) if resume else (None, None)
        rows = await self._pool.fetch(
            LIST_WEBHOOKS, account_id, *_reach_args(reach), at, last, limit + 1
        )
        return page_of(
            [_webhook_of(r) for r in rows], limit, lambda w: [w.created_at.isoformat(), w.id]
        )

    async def update(
        self, account_id: str, webhook_id: str, fields: WebhookFields
    ) -> Webhook | None:
        """Replaces the settable fields; parks or wakes pending deliveries when
        ``enabled`` changes."""
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                UPDATE_WEBHOOK,
                account_id,
                webhook_id,
                fields.url,
                fields.description,
                list(fields.event_types),
                list(fields.pod_ids),
                list(fields.inbox_ids),
                list(fields.mailbox_ids),
                fields.enabled,
            )
            if row is not None:
                await conn.execute(PARK_DELIVERIES, webhook_id, fields.enabled)
        return _webhook_of(row) if row else None

    async def rotate(self, account_id: str, webhook_id: str, sealed: bytes) -> Webhook | None:
        """Replaces the sealed secret."""
        row = await self._pool.fetchrow(ROTATE_SECRET, account_id, webhook_id, sealed)
        return _webhook_of(row) if row else None

    async def delete(self, account_id: str, webhook_id: str) -> None:
        """Deletes a webhook with its deliveries and attempts."""
        await self._pool.execute(DELETE_WEBHOOK, account_id, webhook_id)

    async def deliveries(
        self, webhook_id: str, resume: list[Any] | None, limit: int
    ) -> Page[Delivery]:
        """A page of a webhook's deliveries, newest first, with their attempts."""
        at, last = (datetime.fromisoformat(resume[0]), resume[1]) if resume else (None, None)
        rows = await self._pool.fetch(LIST_DELIVERIES, webhook_id, at, last, limit + 1)
        page = page_of(
            [_delivery_of(r) for r in rows], limit, lambda d: [d.created_at.isoformat(), d.id]
        )
        by_id = {d.id: d for d in page.items}
        if by_id:
            for row in await self._pool.fetch(SELECT_ATTEMPTS, list(by_id)):
                by_id[row["delivery_id"]].attempts.append(_attempt_of(row))
        return page

    async def record_test(
        self, hook: Webhook, event_id: str, succeeded: bool, attempt: Attempt
    ) -> Delivery:
        """Logs a test delivery and its one attempt."""
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                INSERT_TEST_DELIVERY,
                ids.new_id("whd"),
                hook.id,
                hook.account_id,
                event_id,
                TEST_EVENT_TYPE,
                "succeeded" if succeeded else "failed",
            )
            await conn.execute(
                INSERT_ATTEMPT,
                row["id"],
                attempt.status_code,
                attempt.error,
                attempt.duration_ms,
                attempt.attempted_at,
            )
        delivery = _delivery_of(row)
        delivery.attempts.append(attempt)
        return delivery


async def resolve_host(host: str) -> list[str]:
    """The addresses of ``host`` (the system resolver)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


class WebhookService:
    """Registering and managing webhooks.

    Args:
        store: the webhook tables.
        mail: the mail store, to look up inboxes and mailboxes named by filters.
        resolve_pod: turns a pod ID or clientId into the pod's ID; raises
            ``pod_not_found``.
        box: makes, seals and opens secrets.
        sender: makes test deliveries.
        allow_private: whether loopback and private targets are allowed.
        resolve: resolves a URL's host (tests may replace it).
        page_tokens: signs and checks page tokens.
    """

    def __init__(
        self,
        store: WebhookStore,
        mail: MailStore,
        resolve_pod: PodResolver,
        box: SecretBox,
        sender: Sender,
        allow_private: bool,
        resolve: HostResolver = resolve_host,
        *,
        page_tokens: PageTokens,
    ):
        self._tokens = page_tokens
        self._store = store
        self._mail = mail
        self._resolve_pod = resolve_pod
        self._box = box
        self._sender = sender
        self._allow_private = allow_private
        self._resolve = resolve

    async def _check_url(self, url: str) -> str:
        """The URL if it may be a target.

        Raises:
            MailplaneError: ``invalid_argument`` naming ``url``.
        """
        if not url or len(url) > MAX_URL or not url.isprintable() or " " in url:
            raise invalid_argument(
                "url", f"must be an http or https URL of at most {MAX_URL} characters."
            )
        try:
            parts = urlsplit(url)
            host = parts.hostname
            _ = parts.port
        except ValueError:
            raise invalid_argument("url", "is not a valid URL.") from None
        if parts.scheme not in ("http", "https") or not host:
            raise invalid_argument("url", "must be an http or https URL with a host.")
        if self._allow_private:
            return url
        literal = ip_literal(host)
        if literal is not None:
            addresses = [literal]
        else:
            try:
                addresses = await self._resolve(host)
            except OSError:
                raise invalid_argument(
                    "url", f"names {host[:253]!r}, which does not resolve; use a reachable host."
                ) from None
        if not addresses or not all(is_public(a) for a in addresses):
            raise invalid_argument(
                "url",
                f"targets {host[:253]!r}, a loopback, private or link-local address; "
                "webhooks must reach a public endpoint.",
            )
        return url

    async def _check(self, account_id: str, reach: Reach, fields: WebhookFields) -> WebhookFields:
        """Checks every field; returns them normalised (pods by ID, no repeats).

        Raises:
            MailplaneError: ``invalid_argument``, ``pod_not_found``,
                ``inbox_not_found``, ``mailbox_not_found``.
        """
        url = await self._check_url(fields.url)
        if not fields.event_types:
            raise invalid_argument("eventTypes", "must name at least one event type.")
        types = check_event_types("eventTypes", fields.event_types)
        if fields.description is not None and (
            len(fields.description) > MAX_DESCRIPTION or "\x00" in fields.description
        ):
            raise invalid_argument("description", f"must be at most {MAX_DESCRIPTION} characters.")
        for name, values in (
            ("podIds", fields.pod_ids),
            ("inboxIds", fields.inbox_ids),
            ("mailboxIds", fields.mailbox_ids),
        ):
            if len(values) > MAX_FILTER_IDS:
                raise invalid_argument(name, f"has more than {MAX_FILTER_IDS} IDs.")
        pods = []
        for ref in dict.fromkeys(fields.pod_ids):
            pod_id = await self._resolve_pod(ref)
            if reach.pod_id is not None and pod_id != reach.pod_id:
                raise MailplaneError(
                    "pod_not_found", f"No pod {ref[:64]!r} in this account; list pods."
                )
            pods.append(pod_id)
        for noun, prefix, values in (
            ("inbox", "inb_", fields.inbox_ids),
            ("mailbox", "mbx_", fields.mailbox_ids),
        ):
            for owner_id in values:
                owner = (
                    await self._mail.owner(account_id, owner_id)
                    if owner_id.startswith(prefix)
                    else None
                )
                if owner is None or not reach.allows(owner.pod_id, owner.id):
                    raise owner_not_found(noun, owner_id)
        return replace(
            fields,
            url=url,
            event_types=tuple(types),
            pod_ids=tuple(pods),
            inbox_ids=tuple(dict.fromkeys(fields.inbox_ids)),
            mailbox_ids=tuple(dict.fromkeys(fields.mailbox_ids)),
        )

    async def create(self, account_id: str, reach: Reach, fields: WebhookFields) -> Webhook:
        """Registers a webhook within the caller's reach; the answer shows its secret.

        Raises:
            MailplaneError: ``invalid_argument``, ``pod_not_found``,
                ``inbox_not_found``, ``mailbox_not_found``.
        """
        checked = await self._check(account_id, reach, fields)
        secret, sealed = self._box.new()
        hook = await self._store.insert(account_id, checked, reach, sealed)
        return replace(hook, secret=secret)

    async def get(self, account_id: str, reach: Reach, webhook_id: str) -> Webhook:
        """A webhook, without its secret.

        Raises:
            MailplaneError: ``webhook_not_found``.
        """
        hook = await self._store.get(account_id, reach, webhook_id)
        if hook is None:
            raise webhook_not_found(webhook_id)
        return hook

    async def list_webhooks(
        self, account_id: str, reach: Reach, page_size: int, page_token: str
    ) -> tuple[list[Webhook], str]:
        """A page of webhooks and the next page's token ("" at the end).

        Raises:
            MailplaneError: ``invalid_argument`` (``limit``, ``pageToken``).
        """
        limit = pagination.page_size(page_size)
        page = await self._store.page(
            account_id, reach, self._tokens.decode(account_id, "webhooks", page_token), limit
        )
        token = self._tokens.encode(account_id, "webhooks", page.next_key) if page.next_key else ""
        return page.items, token

    async def update(
        self,
        account_id: str,
        reach: Reach,
        webhook_id: str,
        paths: Sequence[str],
        given: WebhookFields,
    ) -> Webhook:
        """Changes the fields named in ``paths`` to their values in ``given``.

        Raises:
            MailplaneError: ``webhook_not_found``, ``invalid_argument``,
                ``pod_not_found``, ``inbox_not_found``, ``mailbox_not_found``.
        """
        hook = await self.get(account_id, reach, webhook_id)
        if not paths:
            raise invalid_argument(
                "update_mask", f"is empty; name fields of {', '.join(UPDATABLE)}."
            )
        for path in paths:
            if path not in UPDATABLE:
                raise invalid_argument(
                    "update_mask", f"{path[:64]!r} cannot change; use {', '.join(UPDATABLE)}."
                )
        current = WebhookFields(
            url=hook.url,
            event_types=tuple(hook.event_types),
            pod_ids=tuple(hook.pod_ids),
            inbox_ids=tuple(hook.inbox_ids),
            mailbox_ids=tuple(hook.mailbox_ids),
            description=hook.description,
            enabled=hook.enabled,
        )
        merged = replace(current, **{p: getattr(given, p) for p in paths})
        checked = await self._check(account_id, reach, merged)
        updated = await self._store.update(account_id, webhook_id, checked)
        if updated is None:
            raise webhook_not_found(webhook_id)
        return updated

    async def delete(self, account_id: str, reach: Reach, webhook_id: str) -> None:
        """Deletes a webhook, its pending deliveries and its log.

        Raises:
            MailplaneError: ``webhook_not_found``.
        """
        await self.get(account_id, reach, webhook_id)
        await self._store.delete(account_id, webhook_id)

    async def rotate_secret(self, account_id: str, reach: Reach, webhook_id: str) -> Webhook:
        """Replaces the secret; the answer shows the new one. Attempts already
        in flight are signed with the old one.

        Raises:
            MailplaneError: ``webhook_not_found``.
        """
        await self.get(account_id, reach, webhook_id)
        secret, sealed = self._box.new()
        hook = await self._store.rotate(account_id, webhook_id, sealed)
        if hook is None:
            raise webhook_not_found(webhook_id)
        return replace(hook, secret=secret)

    async def deliveries(
        self, account_id: str, reach: Reach, webhook_id: str, page_size: int, page_token: str
    ) -> tuple[list[Delivery], str]:
        """A page of the webhook's deliveries, newest first, and the next token.

        Raises:
            MailplaneError: ``webhook_not_found``, ``invalid_argument``.
        """
        await self.get(account_id, reach, webhook_id)
        limit = pagination.page_size(page_size)
        listing = f"deliveries:{webhook_id}"
        page = await self._store.deliveries(
            webhook_id, self._tokens.decode(account_id, listing, page_token), limit
        )
        token = self._tokens.encode(account_id, listing, page.next_key) if page.next_key else ""
        return page.items, token

    async def test(self, account_id: str, reach: Reach, webhook_id: str) -> Delivery:
        """Sends a ``webhook.test`` event to this webhook only, now, once (even
        when disabled), and logs it.

        Raises:
            MailplaneError: ``webhook_not_found``.
        """
        hook = await self.get(account_id, reach, webhook_id)
        event = Event(
            id=ids.new_id("evt"),
            type=TEST_EVENT_TYPE,
            created_at=datetime.now(UTC),
            account_id=account_id,
            pod_id=None,
            inbox_id=None,
            mailbox_id=None,
            data=orjson.dumps({"webhookId": hook.id, "url": hook.url}).decode(),
            position=Position(),
        )
        outcome = await self._sender.send(hook.url, hook.sealed_secret, event)
        attempt = Attempt(
            1, outcome.status_code, outcome.error, outcome.duration_ms, outcome.attempted_at
        )
        return await self._store.record_test(hook, event.id, outcome.ok, attempt)
