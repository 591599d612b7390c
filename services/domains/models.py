"""The domains service's records, as frozen dataclasses."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

DomainStatus = Literal["pending", "verified", "failed"]
RecordStatus = Literal["valid", "missing", "invalid"]
#: ``pending``: child-side creation in flight (invisible to reads);
#: ``rescoping``/``deleting``: parent-side intents of DESIGN §3.
DomainState = Literal["pending", "live", "rescoping", "deleting"]
DOMAIN_STATUSES: tuple[DomainStatus, ...] = ("pending", "verified", "failed")


@dataclass(frozen=True)
class DnsRecord:
    """One record to publish and, after a verification, what DNS showed.

    Attributes:
        type: ``MX`` or ``TXT``.
        name: the fully qualified name it is published at (no trailing dot).
        value: what to publish.
        purpose: ``receiving`` (MX), ``sending`` (SPF), ``dkim`` or ``dmarc``.
        status: ``valid``, ``missing`` or ``invalid``.
        observed: what DNS answered (records joined by `` | ``), or ``None``.
    """

    type: str
    name: str
    value: str
    purpose: str
    status: RecordStatus = "missing"
    observed: str | None = None


@dataclass(frozen=True)
class Domain:
    """A custom domain; ``pod_id`` ``None`` means account-wide; ``target_pod_id``
    is the scope a ``rescoping`` intent moves it to (``None``: account-wide)."""

    id: str
    account_id: str
    name: str
    pod_id: str | None
    state: DomainState
    target_pod_id: str | None
    status: DomainStatus
    records: tuple[DnsRecord, ...]
    can_send: bool
    can_receive: bool
    created_at: datetime
    verified_at: datetime | None
