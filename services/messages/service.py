"""The rules of reading mail (DESIGN §7.4): whose mail a caller sees, how lists
filter and page, which labels a caller may set, and how threads are trashed,
purged and restored. This module imports no transport.

Reach (issue 6, DESIGN §1): an account key sees the account's mail; a pod key its
pod's; an inbox or mailbox key only its own inboxes' or mailboxes'. Anything out
of reach is answered as not found, never as forbidden.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from services.chassis import pagination
from services.chassis.errors import MailplaneError, invalid_argument
from services.chassis.pagination import PageTokens
from services.messages.models import HIDDEN, SYSTEM_LABELS, USER_SETTABLE, Message, Thread
from services.messages.store import MailStore, Reach

#: Longest label, in characters.
MAX_LABEL = 64
#: Most labels one request may add or remove.
MAX_LABELS = 50

#: Resolves a pod ID or clientId to the pod's ID (through the pods service).
PodResolver = Callable[[str], Awaitable[str]]


def message_not_found(message_id: str) -> MailplaneError:
    """Returns the ``message_not_found`` error."""
    return MailplaneError(
        "message_not_found", f"No message {message_id[:64]!r} in this account; list messages."
    )


def thread_not_found(thread_id: str) -> MailplaneError:
    """Returns the ``thread_not_found`` error."""
    return MailplaneError(
        "thread_not_found", f"No thread {thread_id[:64]!r} in this account; list threads."
    )


def owner_not_found(noun: str, owner_id: str) -> MailplaneError:
    """``inbox_not_found`` or ``mailbox_not_found`` (``noun``) for a filter's ID."""
    if noun == "inbox":
        return MailplaneError(
            "inbox_not_found", f"No inbox {owner_id[:64]!r} in this account; list inboxes."
        )
    return MailplaneError(
        "mailbox_not_found", f"No mailbox {owner_id[:64]!r} in this account; list mailboxes."
    )


@dataclass(frozen=True)
class Scope:
    """Where a listing looks: exactly one of an inbox, a mailbox or a pod, or
    (all empty) the whole account."""

    inbox_id: str = ""
    mailbox_id: str = ""
    pod_ref: str = ""


@dataclass(frozen=True)
class LabelChange:
    """Labels to add and remove, after ``read``/``unread`` are folded together."""

    add: list[str]
    remove: list[str]


async def narrow_reach(
    store: MailStore, resolve_pod: PodResolver, account_id: str, reach: Reach, scope: Scope
) -> Reach:
    """The caller's reach narrowed to one inbox, mailbox or pod (messages, threads
    and events are filtered alike).

    Raises:
        MailplaneError: ``invalid_argument`` (two of them), ``inbox_not_found``,
            ``mailbox_not_found`` (an owner of another account or out of the key's
            reach), ``pod_not_found``.
    """
    given = [s for s in (scope.inbox_id, scope.mailbox_id, scope.pod_ref) if s]
    if len(given) > 1:
        raise invalid_argument("inboxId", "podId and mailboxId cannot be combined; give one.")
    owner_id = scope.inbox_id or scope.mailbox_id
    if owner_id:
        noun, prefix = ("inbox", "inb_") if scope.inbox_id else ("mailbox", "mbx_")
        owner = await store.owner(account_id, owner_id) if owner_id.startswith(prefix) else None
        if owner is None or not reach.allows(owner.pod_id, owner.id):
            raise owner_not_found(noun, owner_id)
        return Reach(owner_ids=(owner.id,))
    if scope.pod_ref:
        pod_id = await resolve_pod(scope.pod_ref)
        if reach.pod_id is not None and reach.pod_id != pod_id:
            raise MailplaneError(
                "pod_not_found", f"No pod {scope.pod_ref[:64]!r} in this account; list pods."
            )
        return Reach(pod_id=pod_id, owner_ids=reach.owner_ids)
    return reach


def label_change(add: Sequence[str], remove: Sequence[str]) -> LabelChange:
    """Checks a label change (DESIGN §7.4): user labels, plus ``unread``, ``read``
    (removes ``unread``), ``spam``, ``trash``, ``archived``.

    Raises:
        MailplaneError: ``invalid_argument`` naming ``addLabels``/``removeLabels``.
    """
    out: dict[str, set[str]] = {"addLabels": set(), "removeLabels": set()}
    for field, labels, opposite in (
        ("addLabels", add, "removeLabels"),
        ("removeLabels", remove, "addLabels"),
    ):
        if len(labels) > MAX_LABELS:
            raise invalid_argument(field, f"has more than {MAX_LABELS} labels.")
        for label in labels:
            if not label or len(label) > MAX_LABEL or not label.isprintable():
                raise invalid_argument(
                    field, f"has a label that is empty, longer than {MAX_LABEL} or not printable."
                )
            if label == "read":
                out[opposite].add("unread")
                continue
            if label in SYSTEM_LABELS and label not in USER_SETTABLE:
                raise invalid_argument(
                    field, f"has {label!r}, a label only Mailplane sets; use a label of your own."
                )
            out[field].add(label)
    both = out["addLabels"] & out["removeLabels"]
    if both:
        raise invalid_argument("addLabels", f"and removeLabels both name {sorted(both)[0]!r}.")
    return LabelChange(sorted(out["addLabels"]), sorted(out["removeLabels"]))


class MailService:
    """Reading and labelling an account's mail.

    Args:
        store: the messages schema.
        resolve_pod: turns a pod ID or clientId into the pod's ID; raises
            ``pod_not_found``.
        page_tokens: signs and checks page tokens.
    """

    def __init__(self, store: MailStore, resolve_pod: PodResolver, *, page_tokens: PageTokens):
        self._store = store
        self._resolve_pod = resolve_pod
        self._tokens = page_tokens

    async def list_messages(
        self,
        account_id: str,
        reach: Reach,
        scope: Scope,
        labels: Sequence[str],
        before: datetime | None,
        after: datetime | None,
        include_spam: bool,
        include_trash: bool,
        size: int,
        token: str,
    ) -> tuple[list[Message], str]:
        """A page of messages, newest first, and the next page's token.

        Raises:
            MailplaneError: ``invalid_argument`` (page, labels), not-found of the scope.
        """
        limit = pagination.page_size(size)
        narrowed = await narrow_reach(self._store, self._resolve_pod, account_id, reach, scope)
        listing = f"messages:{narrowed.pod_id or ''}:{','.join(narrowed.owner_ids or ())}"
        page = await self._store.list_messages(
            account_id,
            narrowed,
            _labels(labels),
            _hidden(include_spam, include_trash, labels),
            before,
            after,
            self._tokens.decode(account_id, listing, token),
            limit,
        )
        return page.items, self._tokens.encode(
            account_id, listing, page.next_key
        ) if page.next_key else ""

    async def get_message(self, account_id: str, reach: Reach, message_id: str) -> Message:
        """A message with bodies. Raises ``message_not_found``."""
        message = await self._store.get_message(account_id, message_id) if message_id else None
        if message is None or not reach.allows(message.pod_id, message.owner_id):
            raise message_not_found(message_id)
        return message

    async def raw(self, account_id: str, reach: Reach, message_id: str) -> bytes:
        """A message's RFC 5322 bytes. Raises ``message_not_found``."""
        await self.get_message(account_id, reach, message_id)
        raw = await self._store.raw(account_id, message_id)
        if raw is None:
            raise message_not_found(message_id)
        return raw

    async def attachment(
        self, account_id: str, reach: Reach, message_id: str, attachment_id: str
    ) -> tuple[Message, bytes]:
        """A message and the bytes of one of its attachments.

        Raises:
            MailplaneError: ``message_not_found``, ``attachment_not_found``.
        """
        message = await self.get_message(account_id, reach, message_id)
        content = await self._store.attachment(message.id, attachment_id)
        if content is None:
            raise MailplaneError(
                "attachment_not_found",
                f"Message {message.id} has no attachment {attachment_id[:64]!r}; get the "
                "message to see its attachments.",
            )
        return message, content

    async def relabel_message(
        self,
        account_id: str,
        reach: Reach,
        message_id: str,
        add: Sequence[str],
        remove: Sequence[str],
    ) -> Message:
        """Adds and removes a message's labels. Raises ``invalid_argument``,
        ``message_not_found``."""
        change = label_change(add, remove)
        message = await self.get_message(account_id, reach, message_id)
        return await self._store.relabel_message(account_id, message, change.add, change.remove)

    async def delete_message(self, account_id: str, reach: Reach, message_id: str) -> str:
        """Deletes a message for good. Raises ``message_not_found``."""
        await self.get_message(account_id, reach, message_id)
        if not await self._store.delete_message(account_id, message_id):
            raise message_not_found(message_id)
        return message_id

    async def list_threads(
        self,
        account_id: str,
        reach: Reach,
        scope: Scope,
        labels: Sequence[str],
        folder_id: str | None,
        include_spam: bool,
        include_trash: bool,
        size: int,
        token: str,
    ) -> tuple[list[Thread], str]:
        """A page of threads, latest activity first, and the next page's token."""
        limit = pagination.page_size(size)
        narrowed = await narrow_reach(self._store, self._resolve_pod, account_id, reach, scope)
        owners = ",".join(narrowed.owner_ids or ())
        listing = f"threads:{narrowed.pod_id or ''}:{owners}:{folder_id or ''}"
        page = await self._store.list_threads(
            account_id,
            narrowed,
            _labels(labels),
            _hidden(include_spam, include_trash, labels),
            folder_id,
            self._tokens.decode(account_id, listing, token),
            limit,
        )
        return page.items, self._tokens.encode(
            account_id, listing, page.next_key
        ) if page.next_key else ""

    async def get_thread(
        self, account_id: str, reach: Reach, thread_id: str, with_messages: bool = True
    ) -> Thread:
        """A thread with its messages, oldest first. Raises ``thread_not_found``."""
        thread = await self._store.get_thread(account_id, thread_id) if thread_id else None
        if thread is None or not reach.allows(thread.pod_id, thread.owner_id):
            raise thread_not_found(thread_id)
        if with_messages:
            thread.messages = await self._store.thread_messages(thread.id)
        return thread

    async def relabel_thread(
        self,
        account_id: str,
        reach: Reach,
        thread_id: str,
        add: Sequence[str],
        remove: Sequence[str],
    ) -> Thread:
        """Adds and removes labels on every message of a thread."""
        change = label_change(add, remove)
        await self.get_thread(account_id, reach, thread_id, with_messages=False)
        thread = await self._store.relabel_thread(account_id, thread_id, change.add, change.remove)
        if thread is None:
            raise thread_not_found(thread_id)
        return thread

    async def delete_thread(self, account_id: str, reach: Reach, thread_id: str) -> bool:
        """Trashes a thread, or purges it when it is already in the trash (as
        AgentMail: "first call trashes, second permanently deletes").

        Returns:
            Whether it was purged.
        """
        thread = await self.get_thread(account_id, reach, thread_id, with_messages=False)
        if "trash" in thread.labels:
            await self._store.purge_thread(account_id, thread.id)
            return True
        await self._store.relabel_thread(account_id, thread.id, ["trash"], [])
        return False

    async def restore_thread(self, account_id: str, reach: Reach, thread_id: str) -> Thread:
        """Takes a thread out of the trash. A deleted mailbox's threads stay in it
        (seed 004: its history is kept hidden): ``thread_not_found``."""
        thread = await self.get_thread(account_id, reach, thread_id, with_messages=False)
        if await self._store.owner(account_id, thread.owner_id) is None:
            raise thread_not_found(thread_id)
        return await self.relabel_thread(account_id, reach, thread_id, [], ["trash"])


def _labels(labels: Sequence[str]) -> list[str]:
    if len(labels) > MAX_LABELS:
        raise invalid_argument("labels", f"has more than {MAX_LABELS} labels.")
    for label in labels:
        if not label or len(label) > MAX_LABEL:
            raise invalid_argument("labels", f"has a label that is empty or over {MAX_LABEL}.")
    return sorted(set(labels))


def _hidden(include_spam: bool, include_trash: bool, labels: Sequence[str]) -> list[str]:
    """Labels left out: spam and trash unless included or asked for by label."""
    included = {"spam": include_spam, "trash": include_trash}
    return [h for h in HIDDEN if not included[h] and h not in labels]
