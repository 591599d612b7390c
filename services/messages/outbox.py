"""The rules of sending (DESIGN §7.4-7.5; seeds 001, 004): who may send from
where, idempotency, pause, suppressions, send limits, replies and forwards,
drafts and send statistics. This module imports no transport.

A send, in order: the sender is a live inbox or mailbox within the caller's
reach (else ``inbox_not_found``/``mailbox_not_found``); the ``Idempotency-Key``
is taken (a replay answers the stored response, an in-flight one 409, another
request under it 422); a paused mailbox refuses (``mailbox_paused``); a domain
that cannot send refuses (``domain_not_sendable``); a suppressed recipient
refuses (``recipient_suppressed``); then one transaction counts the send against
the per-minute and per-day limits (``send_rate_limited`` rolls it back), stores
the message ``queued`` with a delivery per recipient domain and its event, and
records the response under the key. The delivery worker signs (DKIM) and
delivers it.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from services.chassis import ids, pagination
from services.chassis.errors import MailplaneError, invalid_argument
from services.chassis.pagination import PageTokens
from services.messages import compose, mime
from services.messages.compose import Attachment, Composition
from services.messages.delivery import return_path_of
from services.messages.models import Message
from services.messages.outbox_store import Draft, OutboxStore, SenderRow, Suppression
from services.messages.policy import bare_address
from services.messages.service import (
    PodResolver,
    Scope,
    label_change,
    message_not_found,
    narrow_reach,
    owner_not_found,
)
from services.messages.store import MailStore, Outbound, Reach

#: Longest Idempotency-Key, in characters (DESIGN §7.5).
MAX_IDEMPOTENCY_KEY = 255
#: The furthest ahead a draft may be scheduled.
MAX_SCHEDULE = timedelta(days=30)
#: Seed 004's periods.
PERIODS = {"24h": timedelta(hours=24), "7d": timedelta(days=7), "30d": timedelta(days=30)}


def draft_not_found(draft_id: str) -> MailplaneError:
    """Returns the ``draft_not_found`` error."""
    return MailplaneError(
        "draft_not_found", f"No draft {draft_id[:64]!r} in this account; list drafts."
    )


@dataclass(frozen=True)
class Limits:
    """Sends per owner per minute and per day (0: no limit), hours a delivery is
    retried, the largest message in bytes, and the shared domain (which always
    sends)."""

    per_minute: int
    per_day: int
    max_hours: int
    max_bytes: int
    shared_domain: str


@dataclass(frozen=True)
class Idempotency:
    """A send's ``Idempotency-Key``, the SHA-256 of what it asks (without the key),
    and how its response is stored and read back."""

    key: str
    request_sha256: bytes
    encode: Callable[[Message], bytes]


def request_digest(method: str, request: bytes) -> bytes:
    """The SHA-256 a key is bound to: the method and the request's deterministic
    bytes (without the key)."""
    return hashlib.sha256(method.encode() + b"\0" + request).digest()


class Outbox:
    """Sending mail, drafts, suppressions and send statistics of an account.

    Args:
        store: the sending tables.
        mail: the mail store (messages, threads, blobs).
        resolve_pod: pod ID or clientId → pod ID.
        limits: send limits and sizes.
        page_tokens: signs and checks page tokens.
    """

    def __init__(
        self,
        store: OutboxStore,
        mail: MailStore,
        resolve_pod: PodResolver,
        limits: Limits,
        *,
        page_tokens: PageTokens,
    ) -> None:
        self._store = store
        self._mail = mail
        self._resolve_pod = resolve_pod
        self._limits = limits
        self._tokens = page_tokens

    # --- sending -----------------------------------------------------------------

    async def sender(
        self, account_id: str, reach: Reach, inbox_id: str, mailbox_id: str
    ) -> SenderRow:
        """The inbox or mailbox a send comes from.

        Raises:
            MailplaneError: ``invalid_argument`` (neither or both),
                ``inbox_not_found``/``mailbox_not_found``.
        """
        if bool(inbox_id) == bool(mailbox_id):
            raise invalid_argument("inboxId", "or mailboxId is required; give exactly one.")
        noun, prefix, owner_id = (
            ("inbox", "inb_", inbox_id) if inbox_id else ("mailbox", "mbx_", mailbox_id)
        )
        row = None
        if owner_id.startswith(prefix):
            row = await self._store.sender(account_id, owner_id, self._limits.shared_domain)
        if row is None or not reach.allows(row.owner.pod_id, row.owner.id):
            raise owner_not_found(noun, owner_id)
        return row

    async def send(
        self,
        sender: SenderRow,
        composition: Composition,
        labels: Sequence[str],
        idempotency: Idempotency,
        *,
        parent: Message | None = None,
        forward: bool = False,
    ) -> Message:
        """Sends ``composition`` from ``sender`` (see the module's docstring).

        Args:
            parent: the message replied to or forwarded (same thread).
            forward: ``parent`` is forwarded, not replied to.

        Raises:
            MailplaneError: ``invalid_argument``, ``message_too_large``,
                ``idempotency_key_in_use``, ``idempotency_key_reused``,
                ``mailbox_paused``, ``domain_not_sendable``,
                ``recipient_suppressed``, ``send_rate_limited``.
        """
        key = idempotency.key
        if not key:
            raise invalid_argument(
                "Idempotency-Key",
                "is required: send a unique key per message and reuse it on retry.",
            )
        if len(key) > MAX_IDEMPOTENCY_KEY or not key.isprintable():
            raise invalid_argument("Idempotency-Key", "must be 1-255 printable characters.")
        account_id = sender.owner.account_id
        await self._claim(account_id, idempotency)
        try:
            return await self._send(sender, composition, labels, idempotency, parent, forward)
        except BaseException:
            await self._store.forget_key(account_id, key)
            raise

    async def _claim(self, account_id: str, idempotency: Idempotency) -> None:
        """Takes a send's key (DESIGN §7.5).

        Raises:
            MailplaneError: ``idempotency_key_reused`` (another request used it),
                ``idempotency_key_in_use`` (its first request is still running).
            Replay: the key's first request finished: its response is the answer.
        """
        taken, stored_hash, response = await self._store.claim_key(
            account_id, idempotency.key, idempotency.request_sha256
        )
        if taken:
            return
        if stored_hash != idempotency.request_sha256:
            raise MailplaneError(
                "idempotency_key_reused",
                "This Idempotency-Key was used for a different request; use a new key.",
            )
        if response is None:
            raise MailplaneError(
                "idempotency_key_in_use",
                "A request with this Idempotency-Key is in progress; retry in a moment.",
            )
        raise _Replay(bytes(response))

    async def _send(
        self,
        sender: SenderRow,
        composition: Composition,
        labels: Sequence[str],
        idempotency: Idempotency | None,
        parent: Message | None,
        forward: bool,
        send_at: datetime | None = None,
        draft: Draft | None = None,
    ) -> Message:
        self._check_sender(sender)
        compose.check_composition(composition, self._limits.max_bytes)
        await self.check_recipients(sender, composition.recipients)
        message_id = ids.new_id("msg")
        now = datetime.now(UTC)
        in_reply_to: str | None = None
        references: list[str] = []
        thread_id: str | None = None
        if parent is not None:
            thread_id = parent.thread_id
            if not forward:
                in_reply_to = parent.message_id
                references = compose.references_of(parent.message_id, parent.references)
        header_id = f"<{message_id.removeprefix('msg_').lower()}@{sender.domain}>"
        sender_header = email_from(sender)
        raw = compose.build(sender_header, composition, header_id, now, in_reply_to, references)
        parsed = mime.composed(
            raw,
            message_id=header_id,
            in_reply_to=in_reply_to,
            references=references,
            sender=sender_header,
            to=[r.display for r in composition.to],
            cc=[r.display for r in composition.cc],
            reply_to=[r.display for r in composition.reply_to],
            subject=composition.subject,
            text=composition.text,
            html=composition.html,
            written=composition.written,
            attachments=[
                mime.Part(
                    a.filename or None,
                    a.content_type,
                    a.content_id or None,
                    a.disposition,
                    a.content,
                )
                for a in composition.attachments
            ],
        )
        status = "scheduled" if send_at is not None and send_at > now else "queued"
        outbound = Outbound(
            recipients=composition.recipients,
            return_path=return_path_of(sender.address, message_id),
            bcc=[r.display for r in composition.bcc],
            status=status,
            send_at=send_at,
            labels=labels,
            max_hours=self._limits.max_hours,
            id=message_id,
        )
        return await self._queue(sender, thread_id, parsed, raw, outbound, idempotency, draft)

    async def check_recipients(self, sender: SenderRow, recipients: Sequence[str]) -> None:
        """Refuses a send to an address the account suppresses.

        Raises:
            MailplaneError: ``recipient_suppressed`` naming the address.
        """
        suppressed = await self._store.suppressed(sender.owner.account_id, recipients)
        if suppressed is not None:
            raise MailplaneError(
                "recipient_suppressed",
                f"{suppressed} is on this account's suppression list (a bounce or a manual "
                "entry); remove it from the list or drop the recipient.",
                {"address": suppressed},
            )

    async def submit(
        self, sender: SenderRow, raw: bytes, recipients: Sequence[str], idempotency: Idempotency
    ) -> Message:
        """Queues a message a mail client submitted (SMTP submission, RFC 6409):
        the bytes as written, to the envelope's recipients, by the same rules as
        the API (pause, domain, suppressions, limits, events). The key is the
        message's Message-ID, so a client that resubmits after a lost reply sends
        nothing twice.

        Raises:
            MailplaneError: as :meth:`send`, and ``message_too_large``.
        """
        self._check_sender(sender)
        if len(raw) > self._limits.max_bytes:
            raise MailplaneError(
                "message_too_large", f"The message is larger than {self._limits.max_bytes} bytes."
            )
        await self.check_recipients(sender, recipients)
        await self._claim(sender.owner.account_id, idempotency)
        try:
            parsed = mime.parse(raw)
            message_id = ids.new_id("msg")
            header_recipients = {bare_address(a) for a in [*parsed.to, *parsed.cc]}
            outbound = Outbound(
                recipients=[r.lower() for r in recipients],
                return_path=return_path_of(sender.address, message_id),
                bcc=[r for r in recipients if r.lower() not in header_recipients],
                max_hours=self._limits.max_hours,
                id=message_id,
            )
            return await self._queue(sender, None, parsed, raw, outbound, idempotency, None)
        except BaseException:
            await self._store.forget_key(sender.owner.account_id, idempotency.key)
            raise

    async def _queue(
        self,
        sender: SenderRow,
        thread_id: str | None,
        parsed: mime.Parsed,
        raw: bytes,
        outbound: Outbound,
        idempotency: Idempotency | None,
        draft: Draft | None,
    ) -> Message:
        """Stores and queues the message, records the key's response (and a sent
        draft's end) and counts the send, in one transaction. The count comes
        last: its rows are the sender's, locked until commit, and every send of
        that sender waits for them."""
        owner = sender.owner
        async with self._mail.pool.acquire() as conn, conn.transaction():
            taken = draft is None or await OutboxStore.take_draft(conn, owner.account_id, draft.id)
            if not taken:
                raise draft_not_found(draft.id if draft else "")
            message = await self._mail.store_outbound(conn, owner, thread_id, parsed, raw, outbound)
            if draft is not None:
                await self._mail.record_event(
                    conn, owner, "draft.sent", {"draft": {"id": draft.id}, "messageId": message.id}
                )
            if idempotency is not None:
                await OutboxStore.finish_key(
                    conn, owner.account_id, idempotency.key, idempotency.encode(message)
                )
            await self._count(conn, owner.id)
        return message

    def _check_sender(self, sender: SenderRow) -> None:
        if sender.status == "paused":
            raise MailplaneError(
                "mailbox_paused",
                "This mailbox is paused: it receives but does not send. Resume it "
                "(status active) to send.",
                {"blockReason": "mailbox_paused"},
            )
        if not sender.can_send:
            raise MailplaneError(
                "domain_not_sendable",
                f"The domain {sender.domain} cannot send yet: publish its SPF and DKIM "
                "records and verify it.",
                {"domain": sender.domain},
            )

    async def _count(self, conn: object, owner_id: str) -> None:
        counts = await OutboxStore.count_send(conn, owner_id)  # type: ignore[arg-type]
        for window, limit in (("minute", self._limits.per_minute), ("day", self._limits.per_day)):
            n, seconds_left = counts[window]
            if limit and n > limit:
                wait = max(1, math.ceil(seconds_left))
                raise MailplaneError(
                    "send_rate_limited",
                    f"This sender has sent {limit} messages this {window}, its limit; "
                    f"retry in {wait} seconds.",
                    {"limit": limit, "window": window, "retryAfterSeconds": wait},
                )

    async def parent(
        self, account_id: str, reach: Reach, message_id: str
    ) -> tuple[Message, SenderRow]:
        """The message replied to or forwarded, and its owner as the sender.

        Raises:
            MailplaneError: ``message_not_found``; ``inbox_not_found`` or
                ``mailbox_not_found`` when its owner was deleted.
        """
        message = await self._mail.get_message(account_id, message_id) if message_id else None
        if message is None or not reach.allows(message.pod_id, message.owner_id):
            raise message_not_found(message_id)
        inbox = message.owner_id if message.owner_id.startswith("inb_") else ""
        return message, await self.sender(
            account_id, reach, inbox, "" if inbox else message.owner_id
        )

    async def attachments_of(self, message: Message) -> list[Attachment]:
        """A message's attachments with their bytes (a forward carries them)."""
        out = []
        for meta in message.attachments:
            content = await self._mail.attachment(message.id, meta.id) or b""
            out.append(
                Attachment(
                    meta.filename or "attachment",
                    meta.content_type,
                    content,
                    meta.content_id or "",
                    meta.disposition,
                )
            )
        return out

    # --- drafts ------------------------------------------------------------------

    async def create_draft(self, sender: SenderRow, draft: Draft) -> Draft:
        """Stores a draft of ``sender``. Raises ``invalid_argument``."""
        owner = sender.owner
        stored = replace(
            draft,
            id=ids.new_id("drf"),
            account_id=owner.account_id,
            pod_id=owner.pod_id,
            owner_id=owner.id,
        )
        await self._check_draft(stored)
        return await self._store.insert_draft(stored)

    async def _check_draft(self, draft: Draft) -> None:
        for name, values in (
            ("to", draft.to),
            ("cc", draft.cc),
            ("bcc", draft.bcc),
            ("replyTo", draft.reply_to),
        ):
            compose.recipients(values, f"draft.{name}")
        if "\r" in draft.subject or "\n" in draft.subject:
            raise invalid_argument("draft.subject", "must be one line.")
        label_change(draft.labels, [])
        if draft.reply_to_message_id:
            parent = await self._mail.get_message(draft.account_id, draft.reply_to_message_id)
            if parent is None or parent.owner_id != draft.owner_id:
                raise invalid_argument(
                    "draft.inReplyToMessageId",
                    "must name a message of the draft's inbox or mailbox.",
                )
        _check_send_at(draft.send_at, "draft.sendAt")

    async def get_draft(self, account_id: str, reach: Reach, draft_id: str) -> Draft:
        """A draft within reach. Raises ``draft_not_found``."""
        draft = await self._store.draft(account_id, draft_id) if draft_id else None
        if draft is None or not reach.allows(draft.pod_id, draft.owner_id):
            raise draft_not_found(draft_id)
        return draft

    async def update_draft(self, account_id: str, reach: Reach, draft: Draft) -> Draft:
        """Writes a draft's editable fields. Raises ``draft_not_found``, ``invalid_argument``."""
        await self.get_draft(account_id, reach, draft.id)
        await self._check_draft(draft)
        updated = await self._store.update_draft(draft)
        if updated is None:
            raise draft_not_found(draft.id)
        return updated

    async def delete_draft(self, account_id: str, reach: Reach, draft_id: str) -> None:
        """Deletes a draft. Raises ``draft_not_found``."""
        await self.get_draft(account_id, reach, draft_id)
        if not await self._store.delete_draft(account_id, draft_id):
            raise draft_not_found(draft_id)

    async def list_drafts(
        self, account_id: str, reach: Reach, scope: Scope, size: int, token: str
    ) -> tuple[list[Draft], str]:
        """A page of drafts, latest change first, and the next page's token."""
        limit = pagination.page_size(size)
        narrowed = await narrow_reach(self._mail, self._resolve_pod, account_id, reach, scope)
        listing = f"drafts:{narrowed.pod_id or ''}:{','.join(narrowed.owner_ids or ())}"
        page = await self._store.list_drafts(
            account_id,
            narrowed.pod_id,
            narrowed.owner_ids,
            self._tokens.decode(account_id, listing, token),
            limit,
        )
        return page.items, (
            self._tokens.encode(account_id, listing, page.next_key) if page.next_key else ""
        )

    async def send_draft(
        self, account_id: str, reach: Reach, draft_id: str, send_at: datetime | None
    ) -> Message:
        """Sends a draft now or at ``send_at`` (``scheduled``); the draft is gone
        after (event ``draft.sent``). A second send of it is ``draft_not_found``.

        Raises:
            MailplaneError: ``draft_not_found``, ``invalid_argument`` and the
                errors of a send.
        """
        draft = await self.get_draft(account_id, reach, draft_id)
        _check_send_at(send_at, "sendAt")
        send_at = send_at or draft.send_at
        inbox = draft.owner_id if draft.owner_id.startswith("inb_") else ""
        sender = await self.sender(account_id, reach, inbox, "" if inbox else draft.owner_id)
        parent = None
        if draft.reply_to_message_id:
            parent = await self._mail.get_message(account_id, draft.reply_to_message_id)
        attachments = []
        for item in draft.attachments:
            content = await self._store.blob(bytes.fromhex(item["sha256"])) or b""
            attachments.append(
                Attachment(
                    item["filename"],
                    item["contentType"],
                    content,
                    item.get("contentId") or "",
                    item.get("disposition") or "attachment",
                )
            )
        composition = Composition(
            to=compose.recipients(draft.to, "draft.to"),
            cc=compose.recipients(draft.cc, "draft.cc"),
            bcc=compose.recipients(draft.bcc, "draft.bcc"),
            reply_to=compose.recipients(draft.reply_to, "draft.replyTo"),
            subject=draft.subject,
            text=draft.text,
            html=draft.html,
            attachments=attachments,
            headers=draft.headers,
        )
        return await self._send(
            sender, composition, draft.labels, None, parent, False, send_at=send_at, draft=draft
        )

    async def store_attachments(self, attachments: Sequence[Attachment]) -> list[dict[str, object]]:
        """Stores a draft's attachment bytes as blobs; returns their references."""
        out: list[dict[str, object]] = []
        for item in attachments:
            digest = hashlib.sha256(item.content).digest()
            await self._store.put_blob(digest, item.content)
            out.append(
                {
                    "filename": item.filename,
                    "contentType": item.content_type,
                    "sha256": digest.hex(),
                    "size": len(item.content),
                    "contentId": item.content_id or None,
                    "disposition": item.disposition,
                }
            )
        return out

    # --- suppressions and stats --------------------------------------------------

    async def list_suppressions(
        self, account_id: str, size: int, token: str
    ) -> tuple[list[Suppression], str]:
        """A page of the account's suppressions, newest first."""
        limit = pagination.page_size(size)
        page = await self._store.list_suppressions(
            account_id, self._tokens.decode(account_id, "suppressions", token), limit
        )
        return page.items, (
            self._tokens.encode(account_id, "suppressions", page.next_key) if page.next_key else ""
        )

    async def suppress(self, account_id: str, address: str) -> Suppression:
        """Adds ``address`` to the suppression list. Raises ``invalid_argument``."""
        checked = compose.recipient(address, "suppression.address")
        return await self._store.add_suppression(account_id, checked.bare)

    async def unsuppress(self, account_id: str, address: str) -> None:
        """Removes ``address`` from the list. Raises ``not_found``."""
        if not await self._store.remove_suppression(account_id, address.strip().lower()):
            raise MailplaneError(
                "not_found",
                f"{address[:254]!r} is not on this account's suppression list; list suppressions.",
            )

    async def stats(self, sender: SenderRow, period: str) -> dict[str, object]:
        """Seed 004's stats body of one inbox or mailbox over ``period``.

        Raises:
            MailplaneError: ``invalid_argument`` naming ``period``.
        """
        period = period or "7d"
        if period not in PERIODS:
            raise invalid_argument("period", "must be 24h, 7d or 30d.")
        counts, days = await self._store.stats(
            sender.owner.account_id, sender.owner.id, PERIODS[period]
        )
        settled = counts["delivered"] + counts["bounced"] + counts["complained"]

        def rate(n: int) -> float:
            return round(n / settled, 3) if settled else 0.0

        return {
            "period": period,
            "total": counts["total"],
            "sends": counts["sends"],
            "inbound": counts["inbound"],
            "delivered": counts["delivered"],
            "bounced": counts["bounced"],
            "complained": counts["complained"],
            "delivery_rate": rate(counts["delivered"]),
            "bounce_rate": rate(counts["bounced"]),
            "complaint_rate": rate(counts["complained"]),
            "suppressions": counts["suppressions"],
            "last_send_at": counts["last_send_at"],
            "daily_sends": days,
        }


class _Replay(Exception):
    """A send's key was used before: its stored response is the answer."""

    def __init__(self, response: bytes):
        super().__init__("replay")
        self.response = response


Replay = _Replay


def email_from(sender: SenderRow) -> str:
    """The From header of ``sender``: ``Name <address>`` for a mailbox with a
    display name, else the bare address."""
    if sender.display_name:
        import email.utils

        return email.utils.formataddr((sender.display_name, sender.address))
    return sender.address


def _check_send_at(send_at: datetime | None, path: str) -> None:
    if send_at is None:
        return
    if send_at > datetime.now(UTC) + MAX_SCHEDULE:
        raise invalid_argument(path, "may be at most 30 days ahead.")
