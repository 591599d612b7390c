"""``/v1/domains…`` and ``/v1/pods/{pod}/domains`` (DESIGN §4 Domains)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query
from google.protobuf import field_mask_pb2
from mailplane.domains.v1 import domains_pb2
from pydantic import Field

from gateway.deps import CallerCall
from gateway.errors import documented
from gateway.routes.common import Deleted, PageLimit, PageToken, RequestBody, Resource, time_of

router = APIRouter(tags=["domains"])
DomainRef = Path(description="The domain's ID or its name.")
_STATUS = {
    domains_pb2.DOMAIN_STATUS_PENDING: "pending",
    domains_pb2.DOMAIN_STATUS_VERIFIED: "verified",
    domains_pb2.DOMAIN_STATUS_FAILED: "failed",
}
_STATUS_PB = {v: k for k, v in _STATUS.items()}
Status = Literal["pending", "verified", "failed"]


class DnsRecord(Resource):
    """A record to publish, and what DNS showed at the last verification."""

    type: Literal["MX", "TXT"]
    name: str = Field(description="Where to publish it (fully qualified, no trailing dot).")
    value: str = Field(description="What to publish.")
    purpose: Literal["receiving", "sending", "dkim", "dmarc"] = Field(
        description="MX: receiving; SPF: sending; DKIM: signing and proof of ownership; "
        "DMARC: recommended, not required."
    )
    status: Literal["valid", "missing", "invalid"]
    observed: str | None = Field(description="What DNS answered, records joined by ` | `.")


class Domain(Resource):
    """A custom domain: account-wide (`podId` null) or scoped to one pod."""

    id: str = Field(description="The domain's ID, `dom_…`.")
    domain: str = Field(description="The name, lower case, IDNA (punycode) form.")
    pod_id: str | None = Field(description="The pod it is scoped to; null: account-wide.")
    status: Status
    records: list[DnsRecord]
    can_send: bool = Field(description="SPF and DKIM are valid.")
    can_receive: bool = Field(description="MX and DKIM are valid.")
    created_at: datetime
    verified_at: datetime | None


class DomainList(Resource):
    """One page of domains, oldest first."""

    domains: list[Domain]
    next_page_token: str | None


class CreateDomainBody(RequestBody):
    """A new domain."""

    domain: str = Field(min_length=1, max_length=253, description="e.g. `mail.example.com`.")
    pod_id: str | None = Field(None, description="Pod ID or clientId; omit for account-wide.")


class UpdateDomainBody(RequestBody):
    """The new scope: a pod ID or clientId, or null for account-wide."""

    pod_id: str | None


def domain_of(message: domains_pb2.Domain) -> Domain:
    """Converts a domain message to its REST shape."""
    return Domain(
        id=message.id,
        domain=message.name,
        pod_id=message.pod_id if message.HasField("pod_id") else None,
        status=_STATUS[message.status],  # type: ignore[arg-type]
        records=[
            DnsRecord(
                type=r.type,  # type: ignore[arg-type]
                name=r.name,
                value=r.value,
                purpose=r.purpose,  # type: ignore[arg-type]
                status=r.status,  # type: ignore[arg-type]
                observed=r.observed if r.HasField("observed") else None,
            )
            for r in message.records
        ],
        can_send=message.can_send,
        can_receive=message.can_receive,
        created_at=time_of(message.create_time),
        verified_at=time_of(message.verify_time) if message.HasField("verify_time") else None,
    )


async def _list(
    call: CallerCall, pod: str | None, status: Status | None, limit: int, token: str | None
) -> DomainList:
    response = await call.stubs.domains.ListDomains(
        domains_pb2.ListDomainsRequest(
            pod_id=pod or "",
            status=_STATUS_PB[status] if status else domains_pb2.DOMAIN_STATUS_UNSPECIFIED,
            page_size=limit,
            page_token=token or "",
        ),
        metadata=call.metadata,
        timeout=call.timeout,
    )
    return DomainList(
        domains=[domain_of(d) for d in response.domains],
        next_page_token=response.next_page_token or None,
    )


@router.post(
    "/v1/domains",
    status_code=201,
    response_model=Domain,
    responses=documented(
        "pod_not_found", "domain_exists", "account_expired", "domain_limit_reached", "pod_busy"
    ),
    summary="Add a domain",
)
async def create_domain(call: CallerCall, body: CreateDomainBody) -> Domain:
    """Adds a domain, `pending`, with the DNS records to publish."""
    domain = domains_pb2.Domain(name=body.domain)
    if body.pod_id is not None:
        domain.pod_id = body.pod_id
    created = await call.stubs.domains.CreateDomain(
        domains_pb2.CreateDomainRequest(domain=domain), metadata=call.metadata, timeout=call.timeout
    )
    return domain_of(created)


@router.get(
    "/v1/domains",
    response_model=DomainList,
    responses=documented("pod_not_found"),
    summary="List domains",
)
async def list_domains(
    call: CallerCall,
    pod_id: Annotated[
        str | None, Query(alias="podId", description="Only domains scoped to this pod.")
    ] = None,
    status: Annotated[Status | None, Query(description="Only domains with this status.")] = None,
    limit: PageLimit = 50,
    page_token: PageToken = None,
) -> DomainList:
    """Lists the account's domains, oldest first."""
    return await _list(call, pod_id, status, limit, page_token)


@router.get(
    "/v1/pods/{pod}/domains",
    response_model=DomainList,
    responses=documented("pod_not_found"),
    tags=["pods"],
    summary="List a pod's domains",
)
async def list_pod_domains(
    call: CallerCall,
    pod: str = Path(description="The pod's ID or clientId."),
    limit: PageLimit = 50,
    page_token: PageToken = None,
) -> DomainList:
    """Lists the domains scoped to one pod."""
    return await _list(call, pod, None, limit, page_token)


@router.get(
    "/v1/domains/{domain}",
    response_model=Domain,
    responses=documented("domain_not_found"),
    summary="Get a domain",
)
async def get_domain(call: CallerCall, domain: str = DomainRef) -> Domain:
    """Gets a domain by ID or name."""
    found = await call.stubs.domains.GetDomain(
        domains_pb2.GetDomainRequest(domain_id=domain), metadata=call.metadata, timeout=call.timeout
    )
    return domain_of(found)


@router.post(
    "/v1/domains/{domain}/verify",
    response_model=Domain,
    responses=documented("domain_not_found", "domain_claimed"),
    summary="Verify a domain in DNS",
)
async def verify_domain(call: CallerCall, domain: str = DomainRef) -> Domain:
    """Looks the records up in DNS now; answers each record's status and observed value."""
    verified = await call.stubs.domains.VerifyDomain(
        domains_pb2.VerifyDomainRequest(domain_id=domain),
        metadata=call.metadata,
        timeout=call.timeout,
    )
    return domain_of(verified)


@router.patch(
    "/v1/domains/{domain}",
    response_model=Domain,
    responses=documented(
        "domain_not_found", "pod_not_found", "domain_in_use", "pod_busy", "domain_busy"
    ),
    summary="Re-scope a domain",
)
async def update_domain(
    call: CallerCall, body: UpdateDomainBody, domain: str = DomainRef
) -> Domain:
    """Moves a domain to account-wide (`podId: null`) or to one pod."""
    changes = domains_pb2.Domain()
    if body.pod_id is not None:
        changes.pod_id = body.pod_id
    updated = await call.stubs.domains.UpdateDomain(
        domains_pb2.UpdateDomainRequest(
            domain_id=domain, domain=changes, update_mask=field_mask_pb2.FieldMask(paths=["pod_id"])
        ),
        metadata=call.metadata,
        timeout=call.timeout,
    )
    return domain_of(updated)


@router.delete(
    "/v1/domains/{domain}",
    response_model=Deleted,
    responses=documented("domain_not_found", "domain_in_use", "domain_busy"),
    summary="Delete a domain",
)
async def delete_domain(call: CallerCall, domain: str = DomainRef) -> Deleted:
    """Deletes a domain that no inbox or mailbox uses."""
    response = await call.stubs.domains.DeleteDomain(
        domains_pb2.DeleteDomainRequest(domain_id=domain),
        metadata=call.metadata,
        timeout=call.timeout,
    )
    return Deleted(id=response.domain_id)
