"""Typed clients of the pods and domains services, for the services that place
their resources in a pod and on a domain (domains, inboxes, mailboxes).

Each call forwards the caller's credentials (so the peer answers for the caller's
account only) and has a deadline; failures arrive as catalog errors,
``unavailable`` when the peer cannot be reached (DESIGN §2, §3). The internal
questions (revoking a deleted resource's keys, whether a pod may use a domain)
are asked with the service credential and the account's ID instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from mailplane.domains.v1 import domains_pb2, domains_pb2_grpc
from mailplane.pods.v1 import pods_pb2, pods_pb2_grpc

from services.chassis import auth
from services.chassis.errors import MailplaneError
from services.chassis.rpc import call_peer

_PLANS = {
    pods_pb2.PLAN_TRIAL: "trial",
    pods_pb2.PLAN_STARTER: "starter",
    pods_pb2.PLAN_GROWTH: "growth",
    pods_pb2.PLAN_ENTERPRISE: "enterprise",
}


@dataclass(frozen=True)
class PodRef:
    """A resolved pod: its ID, its name (``None`` when unset) and whether a
    delete of it is in flight."""

    id: str
    name: str | None
    deleting: bool


@dataclass(frozen=True)
class AccountStanding:
    """The caller's account's plan name and whether it is expired."""

    plan: str
    expired: bool


def pod_busy(pod_id: str) -> MailplaneError:
    """Returns the ``pod_busy`` error of a pod whose delete is in flight."""
    return MailplaneError(
        "pod_busy", f"Pod {pod_id} is being deleted; retry in a moment.", {"podId": pod_id}
    )


class PodsClient:
    """Resolves pods and reads the caller's account through the pods service.

    Args:
        channel: the process's one channel to the pods service.
        deadline: seconds each call may take.
        internal_token: the service credential, for revoking keys.
    """

    def __init__(self, channel: grpc.aio.Channel, deadline: float, internal_token: str):
        self._pods = pods_pb2_grpc.PodServiceStub(channel)
        self._accounts = pods_pb2_grpc.AccountServiceStub(channel)
        self._keys = pods_pb2_grpc.ApiKeyServiceStub(channel)
        self._deadline = deadline
        self._operator = ((auth.INTERNAL_TOKEN_METADATA, internal_token),)

    async def get_pod(self, ref: str) -> PodRef:
        """Resolves a pod ID or clientId. Raises ``pod_not_found`` or ``unavailable``."""
        pod = await call_peer(
            self._pods.GetPod, pods_pb2.GetPodRequest(pod_id=ref), deadline=self._deadline
        )
        return PodRef(
            id=pod.id,
            name=pod.name if pod.HasField("name") else None,
            deleting=pod.state == pods_pb2.POD_STATE_DELETING,
        )

    async def live_pod(self, ref: str) -> PodRef:
        """Resolves a pod that no delete is in flight for (DESIGN §3 child side).

        Raises:
            MailplaneError: ``pod_not_found``, ``pod_busy``, ``unavailable``.
        """
        pod = await self.get_pod(ref)
        if pod.deleting:
            raise pod_busy(pod.id)
        return pod

    async def default_pod(self) -> PodRef:
        """Returns the caller's account's default pod. Raises ``unavailable``."""
        page = await call_peer(
            self._pods.ListPods, pods_pb2.ListPodsRequest(page_size=1), deadline=self._deadline
        )
        pod = page.pods[0]  # the default pod is listed first and is never deleted
        return PodRef(id=pod.id, name=pod.name if pod.HasField("name") else None, deleting=False)

    async def revoke_scoped_keys(self, account_id: str, scope_type: str, resource_id: str) -> None:
        """Drops a deleted inbox or mailbox from ``account_id``'s key scopes; keys
        left with nothing in scope are revoked. Asked with the service credential:
        only the service that deleted the resource may. Raises
        ``unavailable``."""
        await call_peer(
            self._keys.RevokeScopedApiKeys,
            pods_pb2.RevokeScopedApiKeysRequest(
                scope_type=pods_pb2.SCOPE_TYPE_INBOX
                if scope_type == "inbox"
                else pods_pb2.SCOPE_TYPE_MAILBOX,
                resource_id=resource_id,
                account_id=account_id,
            ),
            deadline=self._deadline,
            metadata=self._operator,
        )

    async def get_account(self) -> AccountStanding:
        """Returns the caller's account's plan and state. Raises ``unavailable``."""
        account = await call_peer(
            self._accounts.GetAccount, pods_pb2.GetAccountRequest(), deadline=self._deadline
        )
        return AccountStanding(
            plan=_PLANS.get(account.plan, "trial"),
            expired=account.state == pods_pb2.ACCOUNT_STATE_EXPIRED,
        )


@dataclass(frozen=True)
class DomainRef:
    """A custom domain as a pod's resources see it.

    Attributes:
        id: ``dom_…``.
        name: the canonical name (lower case, IDNA).
        pod_id: the pod it is scoped to; ``None``: account-wide.
        verified: whether MX, SPF and DKIM were found.
        can_receive: whether MX and DKIM were found.
    """

    id: str
    name: str
    pod_id: str | None
    verified: bool
    can_receive: bool


def domain_busy(name: str) -> MailplaneError:
    """Returns the ``domain_busy`` error of a domain being re-scoped or deleted."""
    return MailplaneError(
        "domain_busy",
        f"Domain {name} is being re-scoped or deleted; retry in a moment.",
        {"domain": name},
    )


class DomainsClient:
    """Asks the domains service whether a pod may use a domain.

    Args:
        channel: the process's one channel to the domains service.
        deadline: seconds each call may take.
        internal_token: the service credential: whether a pod may use a domain is
            asked for the service, which has authorized its caller, since keys
            scoped to an inbox or mailbox may not read domains.
    """

    def __init__(self, channel: grpc.aio.Channel, deadline: float, internal_token: str):
        self._domains = domains_pb2_grpc.DomainServiceStub(channel)
        self._deadline = deadline
        self._operator = ((auth.INTERNAL_TOKEN_METADATA, internal_token),)

    async def usable_by(
        self, account_id: str, name: str, pod_id: str, *, verified: bool = True
    ) -> DomainRef:
        """Returns the account's domain ``name`` if the pod may use it: account-wide
        or scoped to that pod, no delete or re-scope elsewhere in flight, and
        verified unless ``verified`` is false (DESIGN §4 Inboxes; seed 001). A
        domain of another pod is ``domain_pod_mismatch`` to an account-wide key
        and not found to a scoped key, which may not see it.

        Called before a child is committed pending and again after (DESIGN §3),
        so a racing re-scope or delete is seen by one side or the other.

        Raises:
            MailplaneError: ``domain_not_found``, ``domain_not_verified``,
                ``domain_pod_mismatch``, ``domain_busy``, ``unavailable``.
        """
        message = await call_peer(
            self._domains.GetDomain,
            domains_pb2.GetDomainRequest(domain_id=name, account_id=account_id),
            deadline=self._deadline,
            metadata=self._operator,
        )
        domain = DomainRef(
            id=message.id,
            name=message.name,
            pod_id=message.pod_id if message.HasField("pod_id") else None,
            verified=message.status == domains_pb2.DOMAIN_STATUS_VERIFIED,
            can_receive=message.can_receive,
        )
        if message.state == domains_pb2.DOMAIN_STATE_DELETING:
            raise domain_busy(domain.name)
        if domain.pod_id not in (None, pod_id):
            caller = auth.current_principal()
            if caller is not None and caller.scope_type != "account":
                raise MailplaneError(  # as the domains service answers what a key cannot see
                    "domain_not_found",
                    f"No domain {name!r} in this account; list domains to find it.",
                )
            raise MailplaneError(
                "domain_pod_mismatch",
                f"{domain.name} is scoped to pod {domain.pod_id}, not {pod_id}; use it from "
                "that pod or make it account-wide.",
                {"domain": domain.name, "domainPodId": domain.pod_id, "podId": pod_id},
            )
        target = message.target_pod_id if message.HasField("target_pod_id") else None
        if message.state == domains_pb2.DOMAIN_STATE_RESCOPING and target not in (None, pod_id):
            raise domain_busy(domain.name)
        if verified and not domain.verified:
            raise MailplaneError(
                "domain_not_verified",
                f"{domain.name} is not verified; publish its DNS records and verify it first.",
                {"domain": domain.name},
            )
        return domain
