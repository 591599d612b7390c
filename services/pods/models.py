"""The pods service's records, as frozen dataclasses."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from services.chassis.plans import PlanName

AccountState = Literal["active", "expired"]
PodState = Literal["active", "deleting"]

ACCOUNT_STATES: tuple[AccountState, ...] = ("active", "expired")


@dataclass(frozen=True)
class Account:
    """An account: one business, one bill."""

    id: str
    name: str
    plan: PlanName
    state: AccountState
    created_at: datetime


@dataclass(frozen=True)
class Pod:
    """A pod: one tenant of an account. ``state`` is ``deleting`` while a delete
    is in flight (the parent-side intent of DESIGN §3)."""

    id: str
    account_id: str
    client_id: str | None
    name: str | None
    is_default: bool
    state: PodState
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class ApiKey:
    """An API key without its secret; ``prefix`` and ``last4`` identify it to people."""

    id: str
    account_id: str
    name: str
    prefix: str
    last4: str
    created_at: datetime
    scope_type: str = "account"
    scope_ids: tuple[str, ...] = ()
    permissions: tuple[str, ...] = ("read", "write", "admin")
    expires_at: datetime | None = None
    last_used_at: datetime | None = None
