"""``GET /v1/billing/status``: the one route the gateway composes (DESIGN §2, §4).

The plan, its limits and the state come from the pods service, which owns plans;
the counts from the services that own inboxes, mailboxes and domains. The four
calls run concurrently with the caller's key; any failing fails the route. The
counts are account-wide, so only an account-wide key with ``read`` gets the
status (a pod, inbox or mailbox key: 403 ``permission_denied``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import grpc
from google.protobuf.message import Message
from mailplane.domains.v1 import domains_pb2
from mailplane.inboxes.v1 import inboxes_pb2
from mailplane.mailboxes.v1 import mailboxes_pb2
from mailplane.pods.v1 import pods_pb2
from starlette.requests import Request
from starlette.responses import Response

from gateway import codec
from gateway.caller import caller_of
from gateway.operations import Invoke, json_response, multicallable, rpc_of
from services.chassis.errors import Code

PATH = "/v1/billing/status"
OPERATION_ID = "getBillingStatus"
SUMMARY = "Plan, state and usage"
ERRORS: tuple[Code, ...] = ("permission_denied",)
RESPONSE = pods_pb2.BillingStatus.DESCRIPTOR
EXAMPLE = {
    "plan": "starter",
    "state": "active",
    "inboxes": {"used": 4, "limit": 10},
    "mailboxes": {"used": 1, "limit": 3},
    "domains": {"used": 0, "limit": 3},
}
_RPCS = (
    ("pods", rpc_of(pods_pb2, "AccountService", "GetAccount"), pods_pb2.GetAccountRequest()),
    (
        "inboxes",
        rpc_of(inboxes_pb2, "InboxService", "CountInboxes"),
        inboxes_pb2.CountInboxesRequest(),
    ),
    (
        "mailboxes",
        rpc_of(mailboxes_pb2, "MailboxService", "CountMailboxes"),
        mailboxes_pb2.CountMailboxesRequest(),
    ),
    (
        "domains",
        rpc_of(domains_pb2, "DomainService", "CountDomains"),
        domains_pb2.CountDomainsRequest(),
    ),
)


def _usage(used: int, limits: pods_pb2.PlanLimits, name: str) -> pods_pb2.Usage:
    usage = pods_pb2.Usage(used=used)
    if limits.HasField(name):
        usage.limit = getattr(limits, name)
    return usage


def calls(channels: Mapping[str, grpc.aio.Channel]) -> list[tuple[Invoke, Message]]:
    """The route's four calls over the per-service channels (made once, at start)."""
    return [(multicallable(channels[service], rpc), message) for service, rpc, message in _RPCS]


async def billing_status(request: Request) -> Response:
    """Answers the plan, state and usage; ``app.state.billing`` holds :func:`calls`."""
    caller = caller_of(request)
    account, inboxes, mailboxes, domains = await asyncio.gather(
        *(
            invoke(message, metadata=caller.metadata, timeout=caller.timeout)
            for invoke, message in request.app.state.billing
        )
    )
    limits = account.limits
    status = pods_pb2.BillingStatus(
        plan=account.plan,
        state=account.state,
        inboxes=_usage(inboxes.inboxes, limits, "inboxes"),
        mailboxes=_usage(mailboxes.mailboxes, limits, "mailboxes"),
        domains=_usage(domains.domains, limits, "domains"),
    )
    return json_response(codec.encode(status))
