"""The pods service's servicers: protobuf ↔ models and the caller's identity.

No business rules and no SQL here: each method reads the principal, converts the
request, calls ``PodService`` and converts the answer. Who may call each method
is the authorization table of each service below (``POD_ACCESS``,
``ACCOUNT_ACCESS``, ``API_KEY_ACCESS``), enforced by the chassis interceptor.
"""

from __future__ import annotations

from datetime import UTC, datetime

import grpc
from google.protobuf import timestamp_pb2
from mailplane.pods.v1 import pods_pb2, pods_pb2_grpc

from services.chassis import auth
from services.chassis.errors import invalid_argument
from services.chassis.plans import PLAN_LIMITS, PlanLimits
from services.pods.models import Account, ApiKey, Pod
from services.pods.service import PodService, pod_not_found

_PLAN_TO_PB = {
    "trial": pods_pb2.PLAN_TRIAL,
    "starter": pods_pb2.PLAN_STARTER,
    "growth": pods_pb2.PLAN_GROWTH,
    "enterprise": pods_pb2.PLAN_ENTERPRISE,
}
_PLAN_FROM_PB = {v: k for k, v in _PLAN_TO_PB.items()}
_STATE_TO_PB = {
    "active": pods_pb2.ACCOUNT_STATE_ACTIVE,
    "expired": pods_pb2.ACCOUNT_STATE_EXPIRED,
}
_STATE_FROM_PB = {v: k for k, v in _STATE_TO_PB.items()}
_POD_STATE_TO_PB = {"active": pods_pb2.POD_STATE_ACTIVE, "deleting": pods_pb2.POD_STATE_DELETING}
_POD_UPDATABLE = ("client_id", "name")


def _ts(value: datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts


def pod_to_pb(pod: Pod) -> pods_pb2.Pod:
    """Converts a pod model to its message."""
    message = pods_pb2.Pod(
        id=pod.id,
        is_default=pod.is_default,
        state=_POD_STATE_TO_PB[pod.state],
        account_id=pod.account_id,
        create_time=_ts(pod.created_at),
        update_time=_ts(pod.updated_at),
    )
    if pod.client_id is not None:
        message.client_id = pod.client_id
    if pod.name is not None:
        message.name = pod.name
    return message


def account_to_pb(account: Account) -> pods_pb2.Account:
    """Converts an account model to its message."""
    return pods_pb2.Account(
        id=account.id,
        name=account.name,
        plan=_PLAN_TO_PB[account.plan],
        state=_STATE_TO_PB[account.state],
        create_time=_ts(account.created_at),
        limits=_limits_to_pb(PLAN_LIMITS[account.plan]),
    )


def _limits_to_pb(limits: PlanLimits) -> pods_pb2.PlanLimits:
    """The plan's limits; an unlimited count stays unset."""
    counts = {"inboxes": limits.inboxes, "mailboxes": limits.mailboxes, "domains": limits.domains}
    return pods_pb2.PlanLimits(**{k: v for k, v in counts.items() if v is not None})


def api_key_to_pb(key: ApiKey) -> pods_pb2.ApiKey:
    """Converts an API-key model to its message (it has no secret)."""
    message = pods_pb2.ApiKey(
        id=key.id,
        name=key.name,
        prefix=key.prefix,
        last4=key.last4,
        create_time=_ts(key.created_at),
        scope=pods_pb2.KeyScope(type=SCOPE_TO_PB[key.scope_type], ids=key.scope_ids),
        permissions=key.permissions,
    )
    if key.expires_at is not None:
        message.expire_time.CopyFrom(_ts(key.expires_at))
    if key.last_used_at is not None:
        message.last_use_time.CopyFrom(_ts(key.last_used_at))
    return message


SCOPE_TO_PB = {
    "account": pods_pb2.SCOPE_TYPE_ACCOUNT,
    "pod": pods_pb2.SCOPE_TYPE_POD,
    "inbox": pods_pb2.SCOPE_TYPE_INBOX,
    "mailbox": pods_pb2.SCOPE_TYPE_MAILBOX,
}
_SCOPE_FROM_PB = {v: k for k, v in SCOPE_TO_PB.items()}


def _optional(message: pods_pb2.Pod, field: str) -> str | None:
    return getattr(message, field) if message.HasField(field) else None


#: Who may call each PodService method: pods are made, changed and deleted by
#: account-wide keys only; a pod key reads its own pod.
POD_ACCESS: dict[str, auth.Access] = {
    "CreatePod": auth.keys("write", "account"),
    "GetPod": auth.keys("read", *auth.ALL_SCOPES),
    "ListPods": auth.keys("read", *auth.ALL_SCOPES),
    "UpdatePod": auth.keys("write", "account"),
    "DeletePod": auth.keys("write", "account"),
}
#: Who may call each AccountService method: accounts are the operator's
#: (DESIGN §4); inbox and mailbox keys reach their resource, not the account.
ACCOUNT_ACCESS: dict[str, auth.Access] = {
    "CreateAccount": auth.OPERATOR_ONLY,
    "GetAccount": auth.keys("read", "account", "pod", operator=True),
    "SetAccountPlan": auth.OPERATOR_ONLY,
    "SetAccountState": auth.OPERATOR_ONLY,
}
#: Who may call each ApiKeyService method: keys are managed by account-wide keys
#: with ``admin``; authenticating and revoking are calls between
#: services, with the service credential (DESIGN §2).
API_KEY_ACCESS: dict[str, auth.Access] = {
    "CreateApiKey": auth.keys("admin", "account"),
    "ListApiKeys": auth.keys("admin", "account"),
    "DeleteApiKey": auth.keys("admin", "account"),
    "AuthenticateApiKey": auth.OPERATOR_ONLY,
    "RevokeScopedApiKeys": auth.OPERATOR_ONLY,
}


class PodServicer(pods_pb2_grpc.PodServiceServicer):
    """``mailplane.pods.v1.PodService`` over ``PodService``."""

    def __init__(self, service: PodService):
        self._service = service

    async def CreatePod(
        self, request: pods_pb2.CreatePodRequest, context: grpc.aio.ServicerContext
    ) -> pods_pb2.Pod:
        account_id = auth.acting_account()
        pod = await self._service.create_pod(
            account_id, _optional(request.pod, "client_id"), _optional(request.pod, "name")
        )
        return pod_to_pb(pod)

    async def GetPod(
        self, request: pods_pb2.GetPodRequest, context: grpc.aio.ServicerContext
    ) -> pods_pb2.Pod:
        account_id = auth.acting_account()
        pod = await self._service.get_pod(account_id, request.pod_id)
        if not auth.reaches(pod.id):
            raise pod_not_found(request.pod_id)
        return pod_to_pb(pod)

    async def ListPods(
        self, request: pods_pb2.ListPodsRequest, context: grpc.aio.ServicerContext
    ) -> pods_pb2.ListPodsResponse:
        principal = auth.current()
        account_id = auth.acting_account()
        if principal.scope_type != "account":  # a pod key sees its pod; others none
            own = principal.pod_id
            pods = [await self._service.get_pod(account_id, own)] if own else []
            return pods_pb2.ListPodsResponse(pods=[pod_to_pb(p) for p in pods])
        pods, token = await self._service.list_pods(
            account_id, request.page_size, request.page_token
        )
        return pods_pb2.ListPodsResponse(pods=[pod_to_pb(p) for p in pods], next_page_token=token)

    async def UpdatePod(
        self, request: pods_pb2.UpdatePodRequest, context: grpc.aio.ServicerContext
    ) -> pods_pb2.Pod:
        account_id = auth.acting_account()
        paths = list(request.update_mask.paths)
        unknown = [p for p in paths if p not in _POD_UPDATABLE]
        if unknown:
            raise invalid_argument(
                "update_mask", f"names {', '.join(unknown)}; only client_id and name can change."
            )
        client_id = (_optional(request.pod, "client_id"),) if "client_id" in paths else None
        name = (_optional(request.pod, "name"),) if "name" in paths else None
        pod = await self._service.update_pod(account_id, request.pod_id, client_id, name)
        return pod_to_pb(pod)

    async def DeletePod(
        self, request: pods_pb2.DeletePodRequest, context: grpc.aio.ServicerContext
    ) -> pods_pb2.DeletePodResponse:
        account_id = auth.acting_account()
        pod_id = await self._service.delete_pod(account_id, request.pod_id)
        return pods_pb2.DeletePodResponse(pod_id=pod_id)


class AccountServicer(pods_pb2_grpc.AccountServiceServicer):
    """``mailplane.pods.v1.AccountService`` over ``PodService``."""

    def __init__(self, service: PodService):
        self._service = service

    async def CreateAccount(
        self, request: pods_pb2.CreateAccountRequest, context: grpc.aio.ServicerContext
    ) -> pods_pb2.CreateAccountResponse:
        plan = _PLAN_FROM_PB.get(request.plan, "trial")
        account, pod, secret = await self._service.create_account(request.name, plan)
        return pods_pb2.CreateAccountResponse(
            account=account_to_pb(account), default_pod=pod_to_pb(pod), api_key=secret
        )

    async def GetAccount(
        self, request: pods_pb2.GetAccountRequest, context: grpc.aio.ServicerContext
    ) -> pods_pb2.Account:
        account_id = auth.acting_account(request.account_id)
        return account_to_pb(await self._service.get_account(account_id))

    async def SetAccountPlan(
        self, request: pods_pb2.SetAccountPlanRequest, context: grpc.aio.ServicerContext
    ) -> pods_pb2.Account:
        plan = _PLAN_FROM_PB.get(request.plan, "")
        return account_to_pb(await self._service.set_plan(request.account_id, plan))

    async def SetAccountState(
        self, request: pods_pb2.SetAccountStateRequest, context: grpc.aio.ServicerContext
    ) -> pods_pb2.Account:
        state = _STATE_FROM_PB.get(request.state, "")
        return account_to_pb(await self._service.set_state(request.account_id, state))


class ApiKeyServicer(pods_pb2_grpc.ApiKeyServiceServicer):
    """``mailplane.pods.v1.ApiKeyService`` over ``PodService``."""

    def __init__(self, service: PodService):
        self._service = service

    async def CreateApiKey(
        self, request: pods_pb2.CreateApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> pods_pb2.CreateApiKeyResponse:
        account_id = auth.acting_account()
        wanted = request.api_key
        scope_type = _SCOPE_FROM_PB.get(wanted.scope.type, "account")
        ids = list(wanted.scope.ids)
        if scope_type != "account" and not ids:
            raise invalid_argument("scope.ids", f"a {scope_type} key names its {scope_type}.")
        key, secret = await self._service.create_api_key(
            account_id,
            wanted.name,
            pod_ref=ids[0] if scope_type == "pod" else None,
            inbox_id=ids[0] if scope_type == "inbox" else None,
            mailbox_ids=ids if scope_type == "mailbox" else (),
            permissions=list(wanted.permissions),
            expires_at=wanted.expire_time.ToDatetime(tzinfo=UTC)
            if wanted.HasField("expire_time")
            else None,
        )
        return pods_pb2.CreateApiKeyResponse(api_key=api_key_to_pb(key), secret=secret)

    async def ListApiKeys(
        self, request: pods_pb2.ListApiKeysRequest, context: grpc.aio.ServicerContext
    ) -> pods_pb2.ListApiKeysResponse:
        account_id = auth.acting_account()
        keys, token = await self._service.list_api_keys(
            account_id, request.page_size, request.page_token
        )
        return pods_pb2.ListApiKeysResponse(
            api_keys=[api_key_to_pb(k) for k in keys], next_page_token=token
        )

    async def DeleteApiKey(
        self, request: pods_pb2.DeleteApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> pods_pb2.DeleteApiKeyResponse:
        account_id = auth.acting_account()
        key_id = await self._service.delete_api_key(account_id, request.api_key_id)
        return pods_pb2.DeleteApiKeyResponse(api_key_id=key_id)

    async def AuthenticateApiKey(
        self, request: pods_pb2.AuthenticateApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> pods_pb2.AuthenticateApiKeyResponse:
        principal = await self._service.authenticate(request.secret)
        return pods_pb2.AuthenticateApiKeyResponse(
            account_id=principal.account_id or "",
            api_key_id=principal.api_key_id or "",
            scope=pods_pb2.KeyScope(
                type=SCOPE_TO_PB[principal.scope_type], ids=principal.scope_ids
            ),
            permissions=sorted(principal.permissions),
        )

    async def RevokeScopedApiKeys(
        self, request: pods_pb2.RevokeScopedApiKeysRequest, context: grpc.aio.ServicerContext
    ) -> pods_pb2.RevokeScopedApiKeysResponse:
        account_id = auth.acting_account(request.account_id)
        revoked = await self._service.unscope_api_keys(
            account_id, _SCOPE_FROM_PB.get(request.scope_type, ""), request.resource_id
        )
        return pods_pb2.RevokeScopedApiKeysResponse(revoked=revoked)
