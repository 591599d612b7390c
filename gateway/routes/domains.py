"""``/v1/domains…`` and ``/v1/pods/{pod}/domains`` (DESIGN §4 Domains)."""

from __future__ import annotations

from mailplane.domains.v1 import domains_pb2

from gateway.operations import Operation, pod_listing, rpc_of

_DOMAIN = {"domain": "domain_id"}
_EXAMPLE = {
    "id": "dom_01JD5B6Q8Z3Y7X2W1V0T9S8R7Q",
    "domain": "meridian.example",
    "podId": "pod_01JD5B6Q8Z3Y7X2W1V0T9S8R7Q",
    "status": "pending",
    "records": [
        {
            "type": "MX",
            "name": "meridian.example",
            "value": "10 mx.mailplane.test",
            "purpose": "receiving",
            "status": "missing",
            "observed": None,
        }
    ],
    "canSend": False,
    "canReceive": False,
    "createdAt": "2026-03-01T12:00:00Z",
    "verifiedAt": None,
}
_LIST = {"domains": [_EXAMPLE], "nextPageToken": None}

_LIST_DOMAINS = Operation(
    "GET",
    "/v1/domains",
    rpc_of(domains_pb2, "DomainService", "ListDomains"),
    "listDomains",
    "List domains",
    "domains",
    query_fields={"podId": "pod_id", "status": "status"},
    paged=True,
    errors=("pod_not_found",),
    example=_LIST,
)

OPERATIONS = (
    Operation(
        "POST",
        "/v1/domains",
        rpc_of(domains_pb2, "DomainService", "CreateDomain"),
        "createDomain",
        "Add a domain",
        "domains",
        body="domain",
        body_required=True,
        status=201,
        errors=(
            "pod_not_found",
            "domain_exists",
            "account_expired",
            "domain_limit_reached",
            "pod_busy",
        ),
        example=_EXAMPLE,
    ),
    _LIST_DOMAINS,
    pod_listing(_LIST_DOMAINS, "domains"),
    Operation(
        "GET",
        "/v1/domains/{domain}",
        rpc_of(domains_pb2, "DomainService", "GetDomain"),
        "getDomain",
        "Get a domain",
        "domains",
        path_fields=_DOMAIN,
        errors=("domain_not_found",),
        example=_EXAMPLE,
    ),
    Operation(
        "POST",
        "/v1/domains/{domain}/verify",
        rpc_of(domains_pb2, "DomainService", "VerifyDomain"),
        "verifyDomain",
        "Verify a domain in DNS",
        "domains",
        path_fields=_DOMAIN,
        errors=("domain_not_found", "domain_claimed"),
        example=_EXAMPLE,
    ),
    Operation(
        "PATCH",
        "/v1/domains/{domain}",
        rpc_of(domains_pb2, "DomainService", "UpdateDomain"),
        "updateDomain",
        "Re-scope a domain",
        "domains",
        path_fields=_DOMAIN,
        body="domain",
        mask="update_mask",
        errors=("domain_not_found", "pod_not_found", "domain_in_use", "pod_busy", "domain_busy"),
        example=_EXAMPLE,
    ),
    Operation(
        "DELETE",
        "/v1/domains/{domain}",
        rpc_of(domains_pb2, "DomainService", "DeleteDomain"),
        "deleteDomain",
        "Delete a domain",
        "domains",
        path_fields=_DOMAIN,
        deleted=True,
        errors=("domain_not_found", "domain_in_use", "domain_busy"),
    ),
)
