"""What each plan allows (DESIGN §4 plan table). Every service that enforces a
limit reads it from here; the pods service owns which plan an account has."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

PlanName = Literal["trial", "starter", "growth", "enterprise"]
PLANS: tuple[PlanName, ...] = ("trial", "starter", "growth", "enterprise")


@dataclass(frozen=True)
class PlanLimits:
    """Counts a plan allows across the whole account; ``None`` means unlimited."""

    inboxes: int | None
    mailboxes: int | None
    domains: int | None


PLAN_LIMITS: dict[str, PlanLimits] = {
    "trial": PlanLimits(inboxes=3, mailboxes=1, domains=1),
    "starter": PlanLimits(inboxes=10, mailboxes=3, domains=3),
    "growth": PlanLimits(inboxes=100, mailboxes=10, domains=10),
    "enterprise": PlanLimits(inboxes=None, mailboxes=None, domains=None),
}
