"""The domains service's typed client of the pods service.

Each call forwards the caller's credentials (so the pods service answers for the
caller's account only) and has a deadline; failures arrive as catalog errors,
``unavailable`` when the pods service cannot be reached.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from mailplane.pods.v1 import pods_pb2, pods_pb2_grpc

from services.chassis.rpc import call_peer

_PLANS = {
    pods_pb2.PLAN_TRIAL: "trial",
    pods_pb2.PLAN_STARTER: "starter",
    pods_pb2.PLAN_GROWTH: "growth",
    pods_pb2.PLAN_ENTERPRISE: "enterprise",
}


@dataclass(frozen=True)
class PodRef:
    """A resolved pod: its ID and whether a delete of it is in flight."""

    id: str
    deleting: bool


@dataclass(frozen=True)
class AccountStanding:
    """The caller's account's plan name and whether it is expired."""

    plan: str
    expired: bool


class PodsClient:
    """Resolves pods and reads the caller's account through the pods service.

    Args:
        channel: the process's one channel to the pods service.
        deadline: seconds each call may take.
    """

    def __init__(self, channel: grpc.aio.Channel, deadline: float):
        self._pods = pods_pb2_grpc.PodServiceStub(channel)
        self._accounts = pods_pb2_grpc.AccountServiceStub(channel)
        self._deadline = deadline

    async def get_pod(self, ref: str) -> PodRef:
        """Resolves a pod ID or clientId. Raises ``pod_not_found`` or ``unavailable``."""
        pod = await call_peer(
            self._pods.GetPod, pods_pb2.GetPodRequest(pod_id=ref), deadline=self._deadline
        )
        return PodRef(id=pod.id, deleting=pod.state == pods_pb2.POD_STATE_DELETING)

    async def get_account(self) -> AccountStanding:
        """Returns the caller's account's plan and state. Raises ``unavailable``."""
        account = await call_peer(
            self._accounts.GetAccount, pods_pb2.GetAccountRequest(), deadline=self._deadline
        )
        return AccountStanding(
            plan=_PLANS.get(account.plan, "trial"),
            expired=account.state == pods_pb2.ACCOUNT_STATE_EXPIRED,
        )
