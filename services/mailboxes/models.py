"""The mailboxes service's records, as frozen dataclasses."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

MailboxStatus = Literal["provisioning", "active", "paused", "error"]
AUTONOMY_LEVELS = ("L1", "L2", "L3")
RULE_ACTIONS = ("move_to_folder", "archive", "mark_spam")
#: Config keys as stored (snake case) → as the REST contract names them (seed 004).
CONFIG_KEYS = {
    "inbound_rate_limit": "inboundRateLimit",
    "paused_auto_reply": "pausedAutoReply",
    "reply_to": "replyTo",
    "signature": "signature",
    "humanizer_style": "humanizerStyle",
}
#: Rule match keys as stored → as the REST contract names them.
MATCH_KEYS = {"from": "from", "to": "to", "subject_contains": "subjectContains"}


def empty_config() -> dict[str, Any]:
    """A config with every key null."""
    return dict.fromkeys(CONFIG_KEYS)


@dataclass(frozen=True)
class Mailbox:
    """An agentic inbound mailbox (seed 004).

    Attributes:
        id: ``mbx_…``.
        account_id: the owning account.
        pod_id: its pod.
        address: ``local@domain``, lower case.
        domain: the address's domain.
        shared_domain: whether that is the platform's shared domain.
        display_name: a label, or ``None``.
        status: ``provisioning``, ``active``, ``paused`` or ``error``.
        can_receive: the domain's last known reception.
        config: every key of ``CONFIG_KEYS``, ``None`` when unset.
        catch_all: whether unknown addresses of its domain land here.
        autonomy_level: ``L1``, ``L2`` or ``L3``.
        created_at: when it was created (UTC).
        updated_at: when it last changed (UTC).
    """

    id: str
    account_id: str
    pod_id: str
    address: str
    domain: str
    shared_domain: bool
    display_name: str | None
    status: MailboxStatus
    can_receive: bool
    config: dict[str, Any]
    catch_all: bool
    autonomy_level: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class Folder:
    """A folder of a mailbox; names are unique in the mailbox (any case)."""

    id: str
    mailbox_id: str
    name: str
    created_at: datetime


@dataclass(frozen=True)
class Rule:
    """A rule of a mailbox: every set ``match`` condition must hold; the action
    ``move_to_folder`` names a folder of the same mailbox.

    Attributes:
        match: ``from``, ``to``, ``subject_contains`` → string (absent when unset).
    """

    id: str
    mailbox_id: str
    name: str
    enabled: bool
    priority: int
    match: dict[str, str] = field(default_factory=dict)
    action_type: str = "archive"
    folder_id: str | None = None
    created_at: datetime | None = None


@dataclass(frozen=True)
class PolicySnapshot:
    """What the messages service needs of a live mailbox at ingest (DESIGN §7.3):
    its status, address, config and enabled rules in the order they apply.

    Attributes:
        version: increases with every change (the database's triggers).
        rules: ``{"id", "priority", "match", "action", "folderId"}`` each.
    """

    mailbox_id: str
    account_id: str
    pod_id: str
    version: int
    status: str
    address: str
    display_name: str | None
    config: dict[str, Any]
    rules: list[dict[str, Any]]
