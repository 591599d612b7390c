"""The rules of reading events (DESIGN §7.6): whose events a caller sees, the
cursor, the filters and the long-poll. This module imports no transport.

Reach (issue 6): an account key sees all of its account's events; a pod key the
events of its pod; an inbox or mailbox key those of its inboxes or mailboxes.
Events that concern no inbox or mailbox (a domain's) are for account keys only.
A filter naming something out of reach answers as not found.

``wait`` (≤ 30 s) long-polls: the call answers as soon as a matching event is
readable. It subscribes to the process's one listener before its first read, so
an event committed in between still wakes it; after a wake that finds nothing
readable (an older transaction still running holds the event back) it reads
again with a short backoff, and without any wake it reads again every
``IDLE_POLL_SECONDS`` in case a notification was lost.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from services.chassis import pagination
from services.chassis.errors import invalid_argument
from services.messages.event_log import EVENT_TYPES, START, Event, EventListener, EventLog
from services.messages.service import Scope, narrow_reach
from services.messages.store import MailStore, Reach

#: The longest long-poll, in seconds.
MAX_WAIT_SECONDS = 30
#: Re-read without a notification this often while waiting, in seconds.
IDLE_POLL_SECONDS = 5.0
#: The first and the longest pause between re-reads after a wake found nothing.
RETRY_FIRST_SECONDS, RETRY_MAX_SECONDS = 0.02, 1.0

#: Resolves a pod ID or clientId to the pod's ID (through the pods service).
PodResolver = Callable[[str], Awaitable[str]]


def check_event_types(field: str, types: Sequence[str]) -> list[str]:
    """The distinct event types, in order.

    Raises:
        MailplaneError: ``invalid_argument`` naming ``field`` for an unknown type.
    """
    for name in types:
        if name not in EVENT_TYPES:
            raise invalid_argument(
                field, f"has {name[:64]!r}, not an event type; use one of {', '.join(EVENT_TYPES)}."
            )
    return list(dict.fromkeys(types))


@dataclass(frozen=True)
class EventPage:
    """Events oldest first and the cursor to continue from."""

    events: list[Event]
    next: str


@dataclass(frozen=True)
class EventFilter:
    """What a listing asks for: types (empty: all) and at most one of a pod
    (ID or clientId), an inbox or a mailbox."""

    types: tuple[str, ...] = ()
    pod_ref: str = ""
    inbox_id: str = ""
    mailbox_id: str = ""


class EventService:
    """Reading an account's event log.

    Args:
        log: the events table.
        listener: the process's one listener.
        mail: the mail store, to look up inboxes and mailboxes named by filters.
        resolve_pod: turns a pod ID or clientId into the pod's ID; raises
            ``pod_not_found``.
    """

    def __init__(
        self, log: EventLog, listener: EventListener, mail: MailStore, resolve_pod: PodResolver
    ):
        self._log = log
        self._listener = listener
        self._mail = mail
        self._resolve_pod = resolve_pod

    async def narrow(self, account_id: str, reach: Reach, wanted: EventFilter) -> Reach:
        """The caller's reach narrowed to the filter's pod, inbox or mailbox
        (``service.narrow_reach``)."""
        scope = Scope(wanted.inbox_id, wanted.mailbox_id, wanted.pod_ref)
        return await narrow_reach(self._mail, self._resolve_pod, account_id, reach, scope)

    async def list_events(
        self,
        account_id: str,
        reach: Reach,
        after: str,
        wanted: EventFilter,
        page_size: int,
        wait_seconds: int,
    ) -> EventPage:
        """Events after the cursor ``after`` (an event ID; empty: the start),
        oldest first; with ``wait_seconds``, waits that long for one to come.

        Raises:
            MailplaneError: ``invalid_argument`` (``after``, ``types``, ``wait``,
                ``limit``), ``pod_not_found``, ``inbox_not_found``,
                ``mailbox_not_found``.
        """
        types = check_event_types("types", wanted.types)
        if not 0 <= wait_seconds <= MAX_WAIT_SECONDS:
            raise invalid_argument("wait", f"must be from 0 to {MAX_WAIT_SECONDS} seconds.")
        limit = pagination.page_size(page_size)
        narrowed = await self.narrow(account_id, reach, wanted)
        position = START
        if after:
            found = await self._log.position(account_id, after)
            if found is None:
                raise invalid_argument(
                    "after", "is not an event of this account; send a `next` this API gave."
                )
            position = found
        if wait_seconds == 0:
            events = await self._log.read(account_id, position, types, narrowed, limit)
            return EventPage(events, events[-1].id if events else after)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_seconds
        retry: float | None = None
        async with self._listener.subscribe(account_id) as subscription:
            while True:
                events = await self._log.read(account_id, position, types, narrowed, limit)
                remaining = deadline - loop.time()
                if events or remaining <= 0:
                    return EventPage(events, events[-1].id if events else after)
                woke = await subscription.wait(min(remaining, retry or IDLE_POLL_SECONDS))
                if woke:
                    retry = RETRY_FIRST_SECONDS
                elif retry is not None:
                    retry = min(retry * 2, RETRY_MAX_SECONDS)
                await self._listener.connect()
