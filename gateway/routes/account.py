"""``/v1/account`` and ``/v1/api-keys`` (DESIGN §4 Accounts, plans, keys)."""

from __future__ import annotations

from mailplane.pods.v1 import pods_pb2

from gateway.codec import Json
from gateway.operations import Operation, rpc_of
from services.chassis.errors import invalid_argument

_KEY_EXAMPLE = {
    "id": "key_01JD5B6Q8Z3Y7X2W1V0T9S8R7Q",
    "name": "ci",
    "prefix": "mp_3Kx9a",
    "last4": "Qz7w",
    "createdAt": "2026-03-01T12:00:00Z",
    "scope": {"type": "pod", "ids": ["pod_01JD5B6Q8Z3Y7X2W1V0T9S8R7Q"]},
    "permissions": ["read", "write"],
    "expiresAt": None,
    "lastUsedAt": "2026-03-02T08:15:00Z",
}
#: The REST names of a key's scope in a create body, and the scope each makes.
_SCOPE_FIELDS = {"podId": "pod", "inboxId": "inbox", "mailboxIds": "mailbox"}


def key_scope(body: dict[str, Json]) -> dict[str, Json]:
    """Turns a create body's ``podId``, ``inboxId`` or ``mailboxIds`` into the key's
    ``scope`` (none of them: the account).

    Raises:
        MailplaneError: ``invalid_argument`` when more than one is sent.
    """
    given = [name for name in _SCOPE_FIELDS if body.get(name) is not None]
    if len(given) > 1:
        raise invalid_argument(given[1], "send one of podId, inboxId and mailboxIds.")
    sent = {name: body.pop(name) for name in _SCOPE_FIELDS if name in body}
    if given:
        (name,) = given
        ids = sent[name] if name == "mailboxIds" else [sent[name]]
        if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
            shape = "a list of mailbox IDs" if name == "mailboxIds" else "an ID"
            raise invalid_argument(name, f"must be {shape}.")
        body["scope"] = {"type": _SCOPE_FIELDS[name], "ids": ids}
    return body


OPERATIONS = (
    Operation(
        "GET",
        "/v1/account",
        rpc_of(pods_pb2, "AccountService", "GetAccount"),
        "getAccount",
        "Get the account",
        "account",
        errors=("permission_denied",),
        example={
            "id": "acct_01JD5B6Q8Z3Y7X2W1V0T9S8R7Q",
            "name": "Globex",
            "plan": "starter",
            "state": "active",
            "createdAt": "2026-03-01T12:00:00Z",
        },
    ),
    Operation(
        "POST",
        "/v1/api-keys",
        rpc_of(pods_pb2, "ApiKeyService", "CreateApiKey"),
        "createApiKey",
        "Create an API key",
        "api-keys",
        body="api_key",
        prepare=key_scope,
        status=201,
        lift="api_key",
        errors=(
            "permission_denied",
            "pod_not_found",
            "inbox_not_found",
            "mailbox_not_found",
            "api_key_limit_reached",
        ),
        example={**_KEY_EXAMPLE, "key": "mp_3Kx9a…Qz7w"},
    ),
    Operation(
        "GET",
        "/v1/api-keys",
        rpc_of(pods_pb2, "ApiKeyService", "ListApiKeys"),
        "listApiKeys",
        "List API keys",
        "api-keys",
        paged=True,
        errors=("permission_denied",),
        example={"apiKeys": [_KEY_EXAMPLE], "nextPageToken": None},
    ),
    Operation(
        "DELETE",
        "/v1/api-keys/{key_id}",
        rpc_of(pods_pb2, "ApiKeyService", "DeleteApiKey"),
        "deleteApiKey",
        "Delete an API key",
        "api-keys",
        path_fields={"key_id": "api_key_id"},
        deleted=True,
        errors=("api_key_not_found", "permission_denied"),
    ),
)
