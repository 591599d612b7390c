"""The descriptor-driven REST codec: every resource round-trips (REST body → message →
REST body), PATCH masks carry exactly the fields sent, unset optional fields are
null, and bad bodies name the field. No server needed: the codec is pure."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf.message import Message
from mailplane.domains.v1 import domains_pb2
from mailplane.inboxes.v1 import inboxes_pb2
from mailplane.mailboxes.v1 import mailboxes_pb2
from mailplane.pods.v1 import pods_pb2

from gateway import codec
from gateway.app import OPERATIONS
from services.chassis.errors import MailplaneError

T = "2026-03-01T12:00:00.123456Z"

# Each resource as REST shows it: every field present, optional ones set.
RESOURCES: list[tuple[type[Message], dict[str, Any]]] = [
    (
        pods_pb2.Pod,
        {
            "id": "pod_1",
            "clientId": "tenant-1",
            "name": "Tenant",
            "isDefault": True,
            "createdAt": T,
            "updatedAt": T,
        },
    ),
    (
        pods_pb2.Account,
        {"id": "acct_1", "name": "Globex", "plan": "growth", "state": "expired", "createdAt": T},
    ),
    (
        pods_pb2.ApiKey,
        {
            "id": "key_1",
            "name": "ci",
            "prefix": "mp_abc",
            "last4": "wxyz",
            "createdAt": T,
            "scope": {"type": "mailbox", "ids": ["mbx_1", "mbx_2"]},
            "permissions": ["read", "admin"],
            "expiresAt": T,
            "lastUsedAt": T,
        },
    ),
    (
        domains_pb2.Domain,
        {
            "id": "dom_1",
            "domain": "example.com",
            "podId": "pod_1",
            "status": "verified",
            "records": [
                {
                    "type": "MX",
                    "name": "example.com",
                    "value": "10 mx.mailplane.test",
                    "purpose": "receiving",
                    "status": "invalid",
                    "observed": "10 other.example",
                }
            ],
            "canSend": True,
            "canReceive": False,
            "createdAt": T,
            "verifiedAt": T,
        },
    ),
    (
        inboxes_pb2.Inbox,
        {
            "id": "inb_1",
            "podId": "pod_1",
            "email": "scout@mailplane.test",
            "username": "scout",
            "domain": "mailplane.test",
            "displayName": "Scout",
            "createdAt": T,
            "updatedAt": T,
        },
    ),
    (
        mailboxes_pb2.Mailbox,
        {
            "id": "mbx_1",
            "podId": "pod_1",
            "address": "support@example.com",
            "displayName": "Support",
            "status": "paused",
            "config": {
                "inboundRateLimit": 2**40,
                "pausedAutoReply": "Away",
                "replyTo": "ops@example.com",
                "signature": "— S",
                "humanizerStyle": "warm",
            },
            "catchAll": True,
            "autonomyLevel": "L3",
            "createdAt": T,
            "updatedAt": T,
        },
    ),
    (mailboxes_pb2.Folder, {"id": "fld_1", "name": "Leads", "createdAt": T}),
    (
        mailboxes_pb2.Rule,
        {
            "id": "rule_1",
            "name": "Quotes",
            "enabled": True,
            "priority": -5,
            "match": {"from": "a@b.c", "to": "d@e.f", "subjectContains": "quote"},
            "action": {"type": "move_to_folder", "folderId": "fld_1"},
            "createdAt": T,
        },
    ),
]


def message_of(cls: type[Message], body: dict[str, Any]) -> Message:
    """Decodes a REST body into ``cls``, output-only fields included (as a service
    would set them), by decoding the input fields and copying the rest."""
    message = cls()
    writable = {k: v for k, v in body.items() if codec.proto_name_of(cls.DESCRIPTOR, k)}
    codec.decode(writable, message)
    for key in set(body) - set(writable):
        field = next(f for f in cls.DESCRIPTOR.fields if f.json_name == key)
        value = body[key]
        if field.message_type is not None and field.message_type.name == "Timestamp":
            getattr(message, field.name).FromJsonString(value)
        elif field.is_repeated:
            for item in value:
                codec.decode(item, getattr(message, field.name).add())
        elif field.enum_type is not None:
            setattr(message, field.name, codec.enum_numbers(field.enum_type)[value])
        else:
            setattr(message, field.name, value)
    return message


@pytest.mark.parametrize(("cls", "body"), RESOURCES, ids=[c.__name__ for c, _ in RESOURCES])
def test_every_resource_round_trips(cls: type[Message], body: dict[str, Any]) -> None:
    assert codec.encode(message_of(cls, body)) == body


@pytest.mark.parametrize(("cls", "body"), RESOURCES, ids=[c.__name__ for c, _ in RESOURCES])
def test_unset_optional_fields_are_null_and_internal_fields_hidden(
    cls: type[Message], body: dict[str, Any]
) -> None:
    empty = codec.encode(cls())
    assert set(empty) == set(body)  # every field present, internal ones (accountId…) absent
    assert "accountId" not in empty
    for field in cls.DESCRIPTOR.fields:
        if field.json_name in empty and field.has_presence and not field.is_repeated:
            assert empty[field.json_name] is None, field.name


def test_enum_spellings_come_from_the_descriptors() -> None:
    assert codec.enum_names(pods_pb2.Plan.DESCRIPTOR) == {
        1: "trial",
        2: "starter",
        3: "growth",
        4: "enterprise",
    }
    assert codec.enum_names(mailboxes_pb2.AutonomyLevel.DESCRIPTOR) == {1: "L1", 2: "L2", 3: "L3"}
    assert codec.encode(pods_pb2.Account())["plan"] is None  # the zero value


def test_lifted_responses_show_the_resource_beside_their_other_fields() -> None:
    create = next(op for op in OPERATIONS if op.operation_id == "createInbox")
    response = inboxes_pb2.CreateInboxResponse(
        inbox=inboxes_pb2.Inbox(id="inb_1", email="a@b.c"), existed=True
    )
    body = create.render(response)
    assert body["id"] == "inb_1" and body["existed"] is True and body["credentials"] is None
    key = next(op for op in OPERATIONS if op.operation_id == "createApiKey")
    rendered = key.render(
        pods_pb2.CreateApiKeyResponse(api_key=pods_pb2.ApiKey(id="key_1"), secret="mp_x")
    )
    assert rendered["key"] == "mp_x" and rendered["id"] == "key_1" and "apiKey" not in rendered
    delete = next(op for op in OPERATIONS if op.operation_id == "deletePod")
    assert delete.render(pods_pb2.DeletePodResponse(pod_id="pod_1")) == {
        "id": "pod_1",
        "deleted": True,
    }


@pytest.mark.parametrize(
    ("body", "paths"),
    [
        ({}, []),
        ({"name": "x"}, ["name"]),
        ({"clientId": None}, ["client_id"]),
        ({"clientId": "c", "name": None}, ["client_id", "name"]),
    ],
)
def test_patch_masks_carry_exactly_the_fields_sent(body: dict[str, Any], paths: list[str]) -> None:
    pod = pods_pb2.Pod()
    codec.decode(body, pod)
    assert codec.mask_paths(body, pods_pb2.Pod.DESCRIPTOR, frozenset()) == paths
    if body.get("clientId") is None:
        assert not pod.HasField("client_id")  # null clears


def test_merged_fields_mask_key_by_key_and_others_replace_whole() -> None:
    body = {"displayName": "D", "config": {"signature": None, "inboundRateLimit": 5}}
    mailbox = mailboxes_pb2.Mailbox()
    codec.decode(body, mailbox)
    paths = codec.mask_paths(body, mailboxes_pb2.Mailbox.DESCRIPTOR, frozenset({"config"}))
    assert paths == ["display_name", "config.signature", "config.inbound_rate_limit"]
    assert mailbox.config.inbound_rate_limit == 5 and not mailbox.config.HasField("signature")
    rule = {"match": {"to": "x@y.z"}, "enabled": False}
    assert codec.mask_paths(rule, mailboxes_pb2.Rule.DESCRIPTOR, frozenset()) == [
        "match",
        "enabled",
    ]
    with pytest.raises(MailplaneError) as err:
        codec.mask_paths({"config": None}, mailboxes_pb2.Mailbox.DESCRIPTOR, frozenset({"config"}))
    assert err.value.details == {"field": "config"}


@pytest.mark.parametrize(
    ("cls", "body", "field"),
    [
        (pods_pb2.Pod, {"client_id": "snake"}, "client_id"),  # only JSON names
        (pods_pb2.Pod, {"isDefault": True}, "isDefault"),  # output only
        (pods_pb2.Pod, {"accountId": "acct_x"}, "accountId"),  # internal
        (pods_pb2.Pod, {"clientId": 5}, "clientId"),
        (pods_pb2.Pod, {"name": "a\x00b"}, "name"),
        (pods_pb2.Pod, {"name": ["a"]}, "name"),
        (inboxes_pb2.Inbox, {"username": ""}, "username"),
        (mailboxes_pb2.Mailbox, {"autonomyLevel": "l1"}, "autonomyLevel"),
        (mailboxes_pb2.Mailbox, {"status": None}, "status"),
        (mailboxes_pb2.Mailbox, {"catchAll": 1}, "catchAll"),
        (mailboxes_pb2.Mailbox, {"config": {"inboundRateLimit": True}}, "config.inboundRateLimit"),
        (mailboxes_pb2.Mailbox, {"config": {"inboundRateLimit": "5"}}, "config.inboundRateLimit"),
        (mailboxes_pb2.Mailbox, {"config": {"colour": "red"}}, "config.colour"),
        (mailboxes_pb2.Mailbox, {"config": []}, "config"),
        (mailboxes_pb2.Rule, {"priority": 2**31}, "priority"),
        (mailboxes_pb2.Rule, {"priority": 1.5}, "priority"),
        (pods_pb2.ApiKey, {"expiresAt": "2030-01-01T00:00:00"}, "expiresAt"),  # no zone
        (pods_pb2.ApiKey, {"expiresAt": "soon"}, "expiresAt"),
        (pods_pb2.ApiKey, {"permissions": "read"}, "permissions"),
        (pods_pb2.ApiKey, {"scope": {"ids": [1]}}, "scope.ids[0]"),
    ],
)
def test_bad_bodies_answer_invalid_argument_naming_the_field(
    cls: type[Message], body: dict[str, Any], field: str
) -> None:
    with pytest.raises(MailplaneError) as err:
        codec.decode(body, cls())
    assert err.value.code == "invalid_argument"
    assert err.value.details == {"field": field} and f"`{field}`" in err.value.message
