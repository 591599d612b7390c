"""``/v1/account`` and ``/v1/api-keys`` (DESIGN §4 Accounts, plans, keys)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from fastapi import APIRouter, Path
from mailplane.pods.v1 import pods_pb2
from pydantic import Field

from gateway.deps import CallerCall
from gateway.errors import documented
from gateway.routes.common import Deleted, PageLimit, PageToken, RequestBody, Resource, time_of
from services.chassis.errors import invalid_argument

router = APIRouter(tags=["account"])

_PLANS = {
    pods_pb2.PLAN_TRIAL: "trial",
    pods_pb2.PLAN_STARTER: "starter",
    pods_pb2.PLAN_GROWTH: "growth",
    pods_pb2.PLAN_ENTERPRISE: "enterprise",
}
_STATES = {pods_pb2.ACCOUNT_STATE_ACTIVE: "active", pods_pb2.ACCOUNT_STATE_EXPIRED: "expired"}


class Account(Resource):
    """The caller's account."""

    id: str = Field(description="The account's ID, `acct_…`.")
    name: str
    plan: Literal["trial", "starter", "growth", "enterprise"]
    state: Literal["active", "expired"] = Field(
        description="`expired` accounts can read and delete but not create."
    )
    created_at: datetime


ScopeType = Literal["account", "pod", "inbox", "mailbox"]
Permission = Literal["read", "write", "admin"]
_SCOPES = {
    pods_pb2.SCOPE_TYPE_ACCOUNT: "account",
    pods_pb2.SCOPE_TYPE_POD: "pod",
    pods_pb2.SCOPE_TYPE_INBOX: "inbox",
    pods_pb2.SCOPE_TYPE_MAILBOX: "mailbox",
}


class KeyScope(Resource):
    """What a key may reach: the account, one pod, one inbox or some mailboxes."""

    type: ScopeType
    ids: list[str] = Field(description="The pod, inbox or mailbox IDs; empty for the account.")


class ApiKey(Resource):
    """An API key; its secret is never shown again after creation."""

    id: str = Field(description="The key's ID, `key_…`.")
    name: str
    prefix: str = Field(description="The secret's first 8 characters.")
    last4: str = Field(description="The secret's last 4 characters.")
    scope: KeyScope
    permissions: list[Permission]
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None = Field(description="Recorded in batches (≈15 s).")


class CreatedApiKey(ApiKey):
    """A new key, with its secret: store it now, it is shown only once."""

    key: str = Field(description="The secret, `mp_…`.")


class ApiKeyList(Resource):
    """One page of keys, oldest first."""

    api_keys: list[ApiKey]
    next_page_token: str | None


class CreateApiKeyBody(RequestBody):
    """A new key: account-wide, or scoped to one of a pod, an inbox or mailboxes."""

    name: str = Field(min_length=1, max_length=255, description="Who or what will use the key.")
    pod_id: str | None = Field(None, min_length=1, description="Pod ID or clientId.")
    inbox_id: str | None = Field(None, min_length=1)
    mailbox_ids: list[str] | None = Field(None, min_length=1, max_length=100)
    permissions: list[Permission] | None = Field(
        None, min_length=1, description="Default `read` and `write`."
    )
    expires_at: datetime | None = Field(
        None, strict=False, description="RFC 3339; must be in the future."
    )


def _key_of(message: pods_pb2.ApiKey) -> dict[str, object]:
    return {
        "id": message.id,
        "name": message.name,
        "prefix": message.prefix,
        "last4": message.last4,
        "scope": KeyScope(
            type=_SCOPES.get(message.scope.type, "account"),  # type: ignore[arg-type]
            ids=list(message.scope.ids),
        ),
        "permissions": list(message.permissions),
        "created_at": time_of(message.create_time),
        "expires_at": time_of(message.expire_time) if message.HasField("expire_time") else None,
        "last_used_at": time_of(message.last_use_time)
        if message.HasField("last_use_time")
        else None,
    }


@router.get(
    "/v1/account",
    response_model=Account,
    responses=documented("permission_denied"),
    summary="Get the account",
)
async def get_account(call: CallerCall) -> Account:
    """Returns the caller's account: its plan and state."""
    account = await call.stubs.accounts.GetAccount(
        pods_pb2.GetAccountRequest(), metadata=call.metadata, timeout=call.timeout
    )
    return Account(
        id=account.id,
        name=account.name,
        plan=_PLANS[account.plan],  # type: ignore[arg-type]
        state=_STATES[account.state],  # type: ignore[arg-type]
        created_at=time_of(account.create_time),
    )


@router.post(
    "/v1/api-keys",
    status_code=201,
    response_model=CreatedApiKey,
    responses=documented(
        "permission_denied",
        "pod_not_found",
        "inbox_not_found",
        "mailbox_not_found",
        "api_key_limit_reached",
    ),
    tags=["api-keys"],
    summary="Create an API key",
)
async def create_api_key(call: CallerCall, body: CreateApiKeyBody) -> CreatedApiKey:
    """Creates a key and shows its secret once. Needs an account key with `admin`."""
    given = [f for f in ("pod_id", "inbox_id", "mailbox_ids") if getattr(body, f) is not None]
    if len(given) > 1:
        raise invalid_argument("podId", "send one of podId, inboxId and mailboxIds.")
    scope = pods_pb2.KeyScope(type=pods_pb2.SCOPE_TYPE_ACCOUNT)
    if body.pod_id is not None:
        scope = pods_pb2.KeyScope(type=pods_pb2.SCOPE_TYPE_POD, ids=[body.pod_id])
    elif body.inbox_id is not None:
        scope = pods_pb2.KeyScope(type=pods_pb2.SCOPE_TYPE_INBOX, ids=[body.inbox_id])
    elif body.mailbox_ids is not None:
        scope = pods_pb2.KeyScope(type=pods_pb2.SCOPE_TYPE_MAILBOX, ids=body.mailbox_ids)
    key = pods_pb2.ApiKey(name=body.name, scope=scope, permissions=body.permissions or [])
    if body.expires_at is not None:
        key.expire_time.FromDatetime(body.expires_at)
    response = await call.stubs.api_keys.CreateApiKey(
        pods_pb2.CreateApiKeyRequest(api_key=key),
        metadata=call.metadata,
        timeout=call.timeout,
    )
    return CreatedApiKey(**_key_of(response.api_key), key=response.secret)  # type: ignore[arg-type]


@router.get(
    "/v1/api-keys",
    response_model=ApiKeyList,
    responses=documented("permission_denied"),
    tags=["api-keys"],
    summary="List API keys",
)
async def list_api_keys(
    call: CallerCall, limit: PageLimit = 50, page_token: PageToken = None
) -> ApiKeyList:
    """Lists the account's keys without their secrets."""
    response = await call.stubs.api_keys.ListApiKeys(
        pods_pb2.ListApiKeysRequest(page_size=limit, page_token=page_token or ""),
        metadata=call.metadata,
        timeout=call.timeout,
    )
    return ApiKeyList(
        api_keys=[ApiKey(**_key_of(k)) for k in response.api_keys],  # type: ignore[arg-type]
        next_page_token=response.next_page_token or None,
    )


@router.delete(
    "/v1/api-keys/{key_id}",
    response_model=Deleted,
    responses=documented("api_key_not_found", "permission_denied"),
    tags=["api-keys"],
    summary="Delete an API key",
)
async def delete_api_key(
    call: CallerCall, key_id: str = Path(description="The key's ID, `key_…`.")
) -> Deleted:
    """Deletes a key; within 5 seconds it stops working everywhere."""
    response = await call.stubs.api_keys.DeleteApiKey(
        pods_pb2.DeleteApiKeyRequest(api_key_id=key_id),
        metadata=call.metadata,
        timeout=call.timeout,
    )
    return Deleted(id=response.api_key_id)
