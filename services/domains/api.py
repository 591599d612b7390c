"""The domains service's servicer: protobuf ↔ models and the caller's identity.

Who may call each method is ``DOMAIN_ACCESS``, enforced by the chassis
interceptor; which domains a key sees is checked here (``_check_reach``), the same
for one domain as for the list."""

from __future__ import annotations

import grpc
from google.protobuf import timestamp_pb2
from mailplane.domains.v1 import domains_pb2, domains_pb2_grpc

from services.chassis import auth
from services.chassis.errors import MailplaneError, invalid_argument
from services.domains.models import Domain
from services.domains.service import DomainService, domain_not_found

_STATUS_TO_PB = {
    "pending": domains_pb2.DOMAIN_STATUS_PENDING,
    "verified": domains_pb2.DOMAIN_STATUS_VERIFIED,
    "failed": domains_pb2.DOMAIN_STATUS_FAILED,
}
_STATUS_FROM_PB = {v: k for k, v in _STATUS_TO_PB.items()}
_STATE_TO_PB = {
    "live": domains_pb2.DOMAIN_STATE_LIVE,
    "rescoping": domains_pb2.DOMAIN_STATE_RESCOPING,
    "deleting": domains_pb2.DOMAIN_STATE_DELETING,
}


def domain_to_pb(domain: Domain) -> domains_pb2.Domain:
    """Converts a domain model to its message; the DKIM private key is not in the model."""
    created = timestamp_pb2.Timestamp()
    created.FromDatetime(domain.created_at)
    message = domains_pb2.Domain(
        id=domain.id,
        name=domain.name,
        status=_STATUS_TO_PB[domain.status],
        can_send=domain.can_send,
        can_receive=domain.can_receive,
        create_time=created,
        account_id=domain.account_id,
        state=_STATE_TO_PB.get(domain.state, domains_pb2.DOMAIN_STATE_UNSPECIFIED),
        records=[
            domains_pb2.DnsRecord(
                type=r.type,
                name=r.name,
                value=r.value,
                purpose=r.purpose,
                status=r.status,
                observed=r.observed,
            )
            for r in domain.records
        ],
    )
    if domain.pod_id is not None:
        message.pod_id = domain.pod_id
    if domain.target_pod_id is not None:
        message.target_pod_id = domain.target_pod_id
    if domain.verified_at is not None:
        message.verify_time.FromDatetime(domain.verified_at)
    return message


#: Who may call each DomainService method: account and pod keys
#: manage domains (a pod key its pod's); inbox and mailbox keys see none; only
#: account keys re-scope; counting is internal (the service credential, or an
#: account-wide admin key for billing status); the service credential reads a
#: domain for the inboxes and mailboxes services ("may this pod use it"); only
#: the service credential has DKIM signatures made (the messages service).
DOMAIN_ACCESS: dict[str, auth.Access] = {
    "CreateDomain": auth.keys("write", "account", "pod"),
    "GetDomain": auth.keys("read", *auth.ALL_SCOPES, operator=True),
    "ListDomains": auth.keys("read", *auth.ALL_SCOPES, pod_filter="pod_id"),
    "UpdateDomain": auth.keys("write", "account"),
    "DeleteDomain": auth.keys("write", "account", "pod"),
    "VerifyDomain": auth.keys("write", "account", "pod"),
    "CountDomains": auth.keys("read", "account", operator=True),
    "SignDkim": auth.OPERATOR_ONLY,
}


def _check_reach(domain: Domain, ref: str) -> None:
    """What ListDomains lists, GetDomain gets: every domain to account keys and
    the service credential; account-wide ones and its pod's to a pod key; none to
    inbox and mailbox keys. Out of reach is not found."""
    principal = auth.current()
    if principal.operator or principal.scope_type == "account":
        return
    if principal.scope_type != "pod" or domain.pod_id not in (None, principal.pod_id):
        raise domain_not_found(ref)


class DomainServicer(domains_pb2_grpc.DomainServiceServicer):
    """``mailplane.domains.v1.DomainService`` over ``DomainService``."""

    def __init__(self, service: DomainService):
        self._service = service

    async def _writable(self, ref: str) -> str:
        """The caller's account if its key may change domain ``ref``: account keys
        any (the service answers not found itself, so no lookup here); pod keys
        their pod's (an account-wide one is read-only to them)."""
        principal = auth.current()
        account_id = auth.acting_account()
        if principal.scope_type == "account":
            return account_id
        domain = await self._service.get(account_id, ref)
        _check_reach(domain, ref)
        if domain.pod_id is None:
            raise MailplaneError(
                "permission_denied",
                f"{domain.name} is account-wide: a pod-scoped key can read it, not change it.",
            )
        return account_id

    async def CreateDomain(
        self, request: domains_pb2.CreateDomainRequest, context: grpc.aio.ServicerContext
    ) -> domains_pb2.Domain:
        principal = auth.current()
        pod = request.domain.pod_id if request.domain.HasField("pod_id") else None
        if principal.scope_type == "pod" and pod is None:
            raise MailplaneError(
                "permission_denied",
                "A pod-scoped key adds only domains scoped to its pod; send its podId.",
            )
        return domain_to_pb(
            await self._service.create(auth.acting_account(), request.domain.name, pod)
        )

    async def GetDomain(
        self, request: domains_pb2.GetDomainRequest, context: grpc.aio.ServicerContext
    ) -> domains_pb2.Domain:
        account_id = auth.acting_account(request.account_id)
        domain = await self._service.get(account_id, request.domain_id)
        _check_reach(domain, request.domain_id)
        return domain_to_pb(domain)

    async def ListDomains(
        self, request: domains_pb2.ListDomainsRequest, context: grpc.aio.ServicerContext
    ) -> domains_pb2.ListDomainsResponse:
        principal = auth.current()
        if principal.scope_type in ("inbox", "mailbox"):
            return domains_pb2.ListDomainsResponse()
        status = _STATUS_FROM_PB.get(request.status)
        domains, token = await self._service.list_domains(
            auth.acting_account(),
            request.pod_id or None,
            status,
            request.page_size,
            request.page_token,
            usable_by_pod=principal.pod_id,
        )
        return domains_pb2.ListDomainsResponse(
            domains=[domain_to_pb(d) for d in domains], next_page_token=token
        )

    async def UpdateDomain(
        self, request: domains_pb2.UpdateDomainRequest, context: grpc.aio.ServicerContext
    ) -> domains_pb2.Domain:
        account_id = auth.acting_account()
        if list(request.update_mask.paths) != ["pod_id"]:
            raise invalid_argument(
                "update_mask", "must be exactly `pod_id`: only the scope changes."
            )
        pod = request.domain.pod_id if request.domain.HasField("pod_id") else None
        return domain_to_pb(await self._service.rescope(account_id, request.domain_id, pod))

    async def DeleteDomain(
        self, request: domains_pb2.DeleteDomainRequest, context: grpc.aio.ServicerContext
    ) -> domains_pb2.DeleteDomainResponse:
        account_id = await self._writable(request.domain_id)
        domain_id = await self._service.delete(account_id, request.domain_id)
        return domains_pb2.DeleteDomainResponse(domain_id=domain_id)

    async def VerifyDomain(
        self, request: domains_pb2.VerifyDomainRequest, context: grpc.aio.ServicerContext
    ) -> domains_pb2.Domain:
        account_id = await self._writable(request.domain_id)
        return domain_to_pb(await self._service.verify(account_id, request.domain_id))

    async def CountDomains(
        self, request: domains_pb2.CountDomainsRequest, context: grpc.aio.ServicerContext
    ) -> domains_pb2.CountDomainsResponse:
        account_id = auth.acting_account(request.account_id)
        count = await self._service.count_domains(account_id, request.pod_id or None)
        return domains_pb2.CountDomainsResponse(domains=count)

    async def SignDkim(
        self, request: domains_pb2.SignDkimRequest, context: grpc.aio.ServicerContext
    ) -> domains_pb2.SignDkimResponse:
        account_id = auth.acting_account(request.account_id)
        signed = await self._service.sign_dkim(account_id, request.domain, request.digest)
        return domains_pb2.SignDkimResponse(signature=signed.signature, selector=signed.selector)
