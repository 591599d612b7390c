"""The inboxes service's records, as frozen dataclasses."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

#: ``pending``: child-side creation in flight (DESIGN §3), invisible to reads.
InboxState = Literal["pending", "live"]


@dataclass(frozen=True)
class Inbox:
    """An address ``username@domain`` in one pod of one account.

    Attributes:
        id: ``inb_…``.
        account_id: the owning account.
        pod_id: the pod, fixed at creation.
        username: the local part, lower case.
        domain: the shared domain or a custom domain's canonical name.
        email: ``username@domain``.
        display_name: a label for people, or ``None``.
        state: ``pending`` or ``live``.
        created_at: when it was created (UTC).
        updated_at: when it last changed (UTC).
    """

    id: str
    account_id: str
    pod_id: str
    username: str
    domain: str
    email: str
    display_name: str | None
    state: InboxState
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class Holder:
    """Who holds an address: enough to tell an idempotent retry from a collision.

    Attributes:
        inbox_id: the holding inbox.
        account_id: its account (compared, never shown to another account).
        pod_id: its pod.
        pending: whether its create is still in flight.
    """

    inbox_id: str
    account_id: str
    pod_id: str
    pending: bool
