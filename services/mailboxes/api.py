"""The mailboxes service's servicer: protobuf ↔ models and the caller's identity.

Who may call each method is ``MAILBOX_ACCESS``, enforced by the chassis
interceptor; which mailboxes a key reaches is checked here."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import grpc
from google.protobuf import timestamp_pb2
from mailplane.mailboxes.v1 import mailboxes_pb2, mailboxes_pb2_grpc

from services.chassis import auth
from services.chassis.errors import MailplaneError, invalid_argument
from services.chassis.logs import get_logger
from services.mailboxes.models import CONFIG_KEYS, MATCH_KEYS, Folder, Mailbox, Rule
from services.mailboxes.service import MailboxService, mailbox_not_found

_log = get_logger("mailplane.mailboxes")

#: Drops a deleted mailbox from key scopes: ``(account_id, mailbox_id)``
#: (through the pods service).
RevokeKeys = Callable[[str, str], Awaitable[None]]

#: Who may call each MailboxService method (DESIGN §4 Mailboxes):
#: mailbox keys work on their mailboxes, folders and rules; creating and cloning
#: need a pod or account key; delete and clone need ``admin``; counting is
#: internal (the service credential, or an account-wide admin key for billing
#: status); reception news comes from the domains service only.
MAILBOX_ACCESS: dict[str, auth.Access] = {
    "CreateMailbox": auth.keys("write", "account", "pod"),
    "GetMailbox": auth.keys("read", *auth.ALL_SCOPES),
    "ListMailboxes": auth.keys("read", *auth.ALL_SCOPES, pod_filter="pod_id"),
    "UpdateMailbox": auth.keys("write", *auth.ALL_SCOPES),
    "DeleteMailbox": auth.keys("admin", *auth.ALL_SCOPES),
    "CloneMailbox": auth.keys("admin", "account", "pod"),
    "CreateFolder": auth.keys("write", *auth.ALL_SCOPES),
    "ListFolders": auth.keys("read", *auth.ALL_SCOPES),
    "DeleteFolder": auth.keys("write", *auth.ALL_SCOPES),
    "CreateRule": auth.keys("write", *auth.ALL_SCOPES),
    "ListRules": auth.keys("read", *auth.ALL_SCOPES),
    "UpdateRule": auth.keys("write", *auth.ALL_SCOPES),
    "DeleteRule": auth.keys("write", *auth.ALL_SCOPES),
    "CountMailboxes": auth.keys("read", "account", operator=True),
    "SetDomainReception": auth.OPERATOR_ONLY,
    "GetMailboxAddresses": auth.OPERATOR_ONLY,
}

_STATUS_TO_PB = {
    "provisioning": mailboxes_pb2.MAILBOX_STATUS_PROVISIONING,
    "active": mailboxes_pb2.MAILBOX_STATUS_ACTIVE,
    "paused": mailboxes_pb2.MAILBOX_STATUS_PAUSED,
    "error": mailboxes_pb2.MAILBOX_STATUS_ERROR,
}
_STATUS_FROM_PB = {v: k for k, v in _STATUS_TO_PB.items()}
_LEVEL_TO_PB = {
    "L1": mailboxes_pb2.AUTONOMY_LEVEL_L1,
    "L2": mailboxes_pb2.AUTONOMY_LEVEL_L2,
    "L3": mailboxes_pb2.AUTONOMY_LEVEL_L3,
}
_LEVEL_FROM_PB = {v: k for k, v in _LEVEL_TO_PB.items()}
_MAILBOX_PATHS = ("display_name", "status", "catch_all", "address")
_RULE_PATHS = ("name", "enabled", "priority", "match", "action")


def _ts(when: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(when)
    return stamp


def mailbox_to_pb(mailbox: Mailbox) -> mailboxes_pb2.Mailbox:
    """Converts a mailbox model to its message."""
    config = mailboxes_pb2.MailboxConfig(
        **{k: v for k, v in mailbox.config.items() if v is not None}
    )
    message = mailboxes_pb2.Mailbox(
        id=mailbox.id,
        pod_id=mailbox.pod_id,
        address=mailbox.address,
        status=_STATUS_TO_PB[mailbox.status],
        config=config,
        catch_all=mailbox.catch_all,
        autonomy_level=_LEVEL_TO_PB[mailbox.autonomy_level],
        account_id=mailbox.account_id,
        create_time=_ts(mailbox.created_at),
        update_time=_ts(mailbox.updated_at),
    )
    if mailbox.display_name is not None:
        message.display_name = mailbox.display_name
    return message


def folder_to_pb(folder: Folder) -> mailboxes_pb2.Folder:
    """Converts a folder model to its message."""
    return mailboxes_pb2.Folder(id=folder.id, name=folder.name, create_time=_ts(folder.created_at))


def rule_to_pb(rule: Rule) -> mailboxes_pb2.Rule:
    """Converts a rule model to its message."""
    action = mailboxes_pb2.RuleAction(type=rule.action_type)
    if rule.folder_id is not None:
        action.folder_id = rule.folder_id
    message = mailboxes_pb2.Rule(
        id=rule.id,
        name=rule.name,
        enabled=rule.enabled,
        priority=rule.priority,
        match=mailboxes_pb2.RuleMatch(**rule.match),
        action=action,
    )
    if rule.created_at is not None:
        message.create_time.CopyFrom(_ts(rule.created_at))
    return message


def _config_of(message: mailboxes_pb2.MailboxConfig) -> dict[str, Any]:
    return {key: getattr(message, key) for key in CONFIG_KEYS if message.HasField(key)}


def _match_of(message: mailboxes_pb2.RuleMatch) -> dict[str, str]:
    return {key: getattr(message, key) for key in MATCH_KEYS if message.HasField(key)}


def _action_of(message: mailboxes_pb2.RuleAction) -> tuple[str, str | None]:
    return message.type, message.folder_id if message.HasField("folder_id") else None


def _mailbox_changes(request: mailboxes_pb2.UpdateMailboxRequest) -> dict[str, Any]:
    wanted = request.mailbox
    changes: dict[str, Any] = {}
    config: dict[str, Any] = {}
    for path in request.update_mask.paths:
        if path.startswith("config."):
            key = path.removeprefix("config.")
            if key not in CONFIG_KEYS:
                raise invalid_argument(f"config.{key}", "is not a config key.")
            config[key] = getattr(wanted.config, key) if wanted.config.HasField(key) else None
        elif path == "display_name":
            changes[path] = wanted.display_name if wanted.HasField("display_name") else None
        elif path == "status":
            changes[path] = _STATUS_FROM_PB.get(wanted.status, "")
        elif path in _MAILBOX_PATHS:
            changes[path] = getattr(wanted, path)
        else:
            raise invalid_argument(
                "update_mask", f"{path!r} cannot change; use {', '.join(_MAILBOX_PATHS)}, config.*."
            )
    if config:
        changes["config"] = config
    return changes


def _check_reach(mailbox: Mailbox) -> Mailbox:
    """``mailbox`` if the caller's key reaches it, else ``mailbox_not_found``."""
    if not auth.reaches(mailbox.pod_id, "mailbox", mailbox.id):
        raise mailbox_not_found(mailbox.id)
    return mailbox


class MailboxServicer(mailboxes_pb2_grpc.MailboxServiceServicer):
    """``mailplane.mailboxes.v1.MailboxService`` over ``MailboxService``."""

    def __init__(self, service: MailboxService, revoke_keys: RevokeKeys):
        self._service = service
        self._revoke_keys = revoke_keys

    async def _reachable(self, account_id: str, mailbox_id: str) -> None:
        """Raises ``mailbox_not_found`` unless the caller's key reaches the mailbox.
        Account keys reach all of their account's (and the service answers not found
        for the rest), so only scoped keys pay this lookup."""
        if auth.current().scope_type != "account":
            _check_reach(await self._service.get(account_id, mailbox_id))

    async def CreateMailbox(
        self, request: mailboxes_pb2.CreateMailboxRequest, context: grpc.aio.ServicerContext
    ) -> mailboxes_pb2.Mailbox:
        account_id = auth.acting_account()  # a pod key's pod is enforced by the pods service
        wanted = request.mailbox
        created = await self._service.create(
            account_id,
            pod_ref=wanted.pod_id or None,
            address=wanted.address,
            display_name=wanted.display_name if wanted.HasField("display_name") else None,
            config=_config_of(wanted.config),
            autonomy_level=_LEVEL_FROM_PB.get(wanted.autonomy_level),
        )
        return mailbox_to_pb(created)

    async def GetMailbox(
        self, request: mailboxes_pb2.GetMailboxRequest, context: grpc.aio.ServicerContext
    ) -> mailboxes_pb2.Mailbox:
        account_id = auth.acting_account()
        return mailbox_to_pb(_check_reach(await self._service.get(account_id, request.mailbox_id)))

    async def ListMailboxes(
        self, request: mailboxes_pb2.ListMailboxesRequest, context: grpc.aio.ServicerContext
    ) -> mailboxes_pb2.ListMailboxesResponse:
        principal = auth.current()
        account_id = auth.acting_account()
        if principal.scope_type in ("inbox", "mailbox"):  # only the key's own mailboxes
            own = []
            if principal.scope_type == "mailbox":
                for mailbox_id in principal.scope_ids:
                    found = await self._service.find(account_id, mailbox_id)
                    own += [found] if found else []
            return mailboxes_pb2.ListMailboxesResponse(mailboxes=[mailbox_to_pb(m) for m in own])
        mailboxes, token = await self._service.list_mailboxes(
            account_id, request.pod_id or principal.pod_id, request.page_size, request.page_token
        )
        return mailboxes_pb2.ListMailboxesResponse(
            mailboxes=[mailbox_to_pb(m) for m in mailboxes], next_page_token=token
        )

    async def UpdateMailbox(
        self, request: mailboxes_pb2.UpdateMailboxRequest, context: grpc.aio.ServicerContext
    ) -> mailboxes_pb2.Mailbox:
        account_id = auth.acting_account()
        await self._reachable(account_id, request.mailbox_id)
        changes = _mailbox_changes(request)
        return mailbox_to_pb(await self._service.update(account_id, request.mailbox_id, changes))

    async def DeleteMailbox(
        self, request: mailboxes_pb2.DeleteMailboxRequest, context: grpc.aio.ServicerContext
    ) -> mailboxes_pb2.DeleteMailboxResponse:
        account_id = auth.acting_account()
        await self._reachable(account_id, request.mailbox_id)
        deleted = await self._service.delete(account_id, request.mailbox_id)
        try:  # keys scoped to it lose it; empty ones go. A key left pointing at a
            # deleted mailbox reaches nothing, so a pods outage here is only logged.
            await self._revoke_keys(account_id, deleted)
        except MailplaneError as error:
            _log.warning("mailbox_key_scopes_not_updated", mailbox_id=deleted, code=error.code)
        return mailboxes_pb2.DeleteMailboxResponse(mailbox_id=deleted)

    async def CloneMailbox(
        self, request: mailboxes_pb2.CloneMailboxRequest, context: grpc.aio.ServicerContext
    ) -> mailboxes_pb2.Mailbox:
        account_id = auth.acting_account()
        await self._reachable(account_id, request.mailbox_id)
        clone = await self._service.clone(
            account_id,
            request.mailbox_id,
            request.address,
            request.display_name if request.HasField("display_name") else None,
        )
        return mailbox_to_pb(clone)

    async def CreateFolder(
        self, request: mailboxes_pb2.CreateFolderRequest, context: grpc.aio.ServicerContext
    ) -> mailboxes_pb2.Folder:
        account_id = auth.acting_account()
        await self._reachable(account_id, request.mailbox_id)
        folder = await self._service.create_folder(
            account_id, request.mailbox_id, request.folder.name
        )
        return folder_to_pb(folder)

    async def ListFolders(
        self, request: mailboxes_pb2.ListFoldersRequest, context: grpc.aio.ServicerContext
    ) -> mailboxes_pb2.ListFoldersResponse:
        account_id = auth.acting_account()
        await self._reachable(account_id, request.mailbox_id)
        folders = await self._service.list_folders(account_id, request.mailbox_id)
        return mailboxes_pb2.ListFoldersResponse(folders=[folder_to_pb(f) for f in folders])

    async def DeleteFolder(
        self, request: mailboxes_pb2.DeleteFolderRequest, context: grpc.aio.ServicerContext
    ) -> mailboxes_pb2.DeleteFolderResponse:
        account_id = auth.acting_account()
        await self._reachable(account_id, request.mailbox_id)
        deleted = await self._service.delete_folder(
            account_id, request.mailbox_id, request.folder_id
        )
        return mailboxes_pb2.DeleteFolderResponse(folder_id=deleted)

    async def CreateRule(
        self, request: mailboxes_pb2.CreateRuleRequest, context: grpc.aio.ServicerContext
    ) -> mailboxes_pb2.Rule:
        account_id = auth.acting_account()
        await self._reachable(account_id, request.mailbox_id)
        wanted = request.rule
        action_type, folder_id = _action_of(wanted.action)
        rule = Rule(
            id="",
            mailbox_id=request.mailbox_id,
            name=wanted.name,
            enabled=wanted.enabled,
            priority=wanted.priority,
            match=_match_of(wanted.match),
            action_type=action_type,
            folder_id=folder_id,
        )
        return rule_to_pb(await self._service.create_rule(account_id, request.mailbox_id, rule))

    async def ListRules(
        self, request: mailboxes_pb2.ListRulesRequest, context: grpc.aio.ServicerContext
    ) -> mailboxes_pb2.ListRulesResponse:
        account_id = auth.acting_account()
        await self._reachable(account_id, request.mailbox_id)
        rules = await self._service.list_rules(account_id, request.mailbox_id)
        return mailboxes_pb2.ListRulesResponse(rules=[rule_to_pb(r) for r in rules])

    async def UpdateRule(
        self, request: mailboxes_pb2.UpdateRuleRequest, context: grpc.aio.ServicerContext
    ) -> mailboxes_pb2.Rule:
        account_id = auth.acting_account()
        await self._reachable(account_id, request.mailbox_id)
        wanted = request.rule
        changes: dict[str, Any] = {}
        for path in request.update_mask.paths:
            if path == "match":
                changes["match"] = _match_of(wanted.match)
            elif path == "action":
                changes["action"] = _action_of(wanted.action)
            elif path in _RULE_PATHS:
                changes[path] = getattr(wanted, path)
            else:
                raise invalid_argument(
                    "update_mask", f"{path!r} cannot change; use {', '.join(_RULE_PATHS)}."
                )
        rule = await self._service.update_rule(
            account_id, request.mailbox_id, request.rule_id, changes
        )
        return rule_to_pb(rule)

    async def DeleteRule(
        self, request: mailboxes_pb2.DeleteRuleRequest, context: grpc.aio.ServicerContext
    ) -> mailboxes_pb2.DeleteRuleResponse:
        account_id = auth.acting_account()
        await self._reachable(account_id, request.mailbox_id)
        deleted = await self._service.delete_rule(account_id, request.mailbox_id, request.rule_id)
        return mailboxes_pb2.DeleteRuleResponse(rule_id=deleted)

    async def CountMailboxes(
        self, request: mailboxes_pb2.CountMailboxesRequest, context: grpc.aio.ServicerContext
    ) -> mailboxes_pb2.CountMailboxesResponse:
        account_id = auth.acting_account(request.account_id)
        count = await self._service.count(
            account_id,
            request.pod_id or None,
            request.domain or None,
            request.outside_pod_id or None,
        )
        return mailboxes_pb2.CountMailboxesResponse(mailboxes=count)

    async def SetDomainReception(
        self, request: mailboxes_pb2.SetDomainReceptionRequest, context: grpc.aio.ServicerContext
    ) -> mailboxes_pb2.SetDomainReceptionResponse:
        account_id = auth.acting_account(request.account_id)
        changed = await self._service.set_reception(account_id, request.domain, request.can_receive)
        return mailboxes_pb2.SetDomainReceptionResponse(changed=changed)

    async def GetMailboxAddresses(
        self, request: mailboxes_pb2.GetMailboxAddressesRequest, context: grpc.aio.ServicerContext
    ) -> mailboxes_pb2.GetMailboxAddressesResponse:
        held = await self._service.held_addresses(list(request.mailbox_ids))
        return mailboxes_pb2.GetMailboxAddressesResponse(
            addresses=[
                mailboxes_pb2.HeldAddress(owner_id=mailbox_id, address=address, live=live)
                for mailbox_id, address, live in held
            ]
        )
