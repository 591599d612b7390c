"""The pods service's records, as frozen dataclasses."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Generic, Literal, TypeVar

T = TypeVar("T")

PlanName = Literal["trial", "starter", "growth", "enterprise"]
AccountState = Literal["active", "expired"]
PodState = Literal["active", "deleting"]

PLANS: tuple[PlanName, ...] = ("trial", "starter", "growth", "enterprise")
ACCOUNT_STATES: tuple[AccountState, ...] = ("active", "expired")


@dataclass(frozen=True)
class PlanLimits:
    """What a plan allows (DESIGN §4 plan table); ``None`` means unlimited."""

    inboxes: int | None
    mailboxes: int | None
    domains: int | None


PLAN_LIMITS: dict[PlanName, PlanLimits] = {
    "trial": PlanLimits(inboxes=3, mailboxes=1, domains=1),
    "starter": PlanLimits(inboxes=10, mailboxes=3, domains=3),
    "growth": PlanLimits(inboxes=100, mailboxes=10, domains=10),
    "enterprise": PlanLimits(inboxes=None, mailboxes=None, domains=None),
}


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


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a listing and the sort key that resumes after it (``None`` at the end)."""

    items: list[T]
    next_key: list[object] | None
