"""``/v1/agent/mailboxes…``, ``/v1/pods/{pod}/mailboxes`` (seed 004; DESIGN §4
Mailboxes) and ``/v1/billing/status``, which the gateway composes."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query
from google.protobuf import field_mask_pb2
from mailplane.domains.v1 import domains_pb2
from mailplane.inboxes.v1 import inboxes_pb2
from mailplane.mailboxes.v1 import mailboxes_pb2
from mailplane.pods.v1 import pods_pb2
from pydantic import ConfigDict, Field

from gateway.deps import CallerCall
from gateway.errors import documented
from gateway.routes.account import _PLANS, _STATES
from gateway.routes.common import Deleted, PageLimit, PageToken, RequestBody, Resource, time_of
from services.chassis.errors import Code, invalid_argument
from services.chassis.plans import PLAN_LIMITS

router = APIRouter(tags=["mailboxes"])
MailboxRef = Path(description="The mailbox's ID, `mbx_…`.")
Status = Literal["provisioning", "active", "paused", "error"]
Level = Literal["L1", "L2", "L3"]
ActionType = Literal["move_to_folder", "archive", "mark_spam"]
_STATUS = {
    mailboxes_pb2.MAILBOX_STATUS_PROVISIONING: "provisioning",
    mailboxes_pb2.MAILBOX_STATUS_ACTIVE: "active",
    mailboxes_pb2.MAILBOX_STATUS_PAUSED: "paused",
    mailboxes_pb2.MAILBOX_STATUS_ERROR: "error",
}
_STATUS_PB = {v: k for k, v in _STATUS.items()}
_LEVEL = {
    mailboxes_pb2.AUTONOMY_LEVEL_L1: "L1",
    mailboxes_pb2.AUTONOMY_LEVEL_L2: "L2",
    mailboxes_pb2.AUTONOMY_LEVEL_L3: "L3",
}
_LEVEL_PB = {v: k for k, v in _LEVEL.items()}
_CONFIG_KEYS = (
    "inbound_rate_limit",
    "paused_auto_reply",
    "reply_to",
    "signature",
    "humanizer_style",
)


class MailboxConfig(Resource):
    """Per-mailbox settings; null means unset."""

    inbound_rate_limit: int | None = Field(description="Inbound messages per period, > 0.")
    paused_auto_reply: str | None = Field(description="Auto-reply while paused.")
    reply_to: str | None = Field(description="Reply-To of outbound mail.")
    signature: str | None
    humanizer_style: str | None


class Mailbox(Resource):
    """An agentic inbound mailbox."""

    id: str = Field(description="The mailbox's ID, `mbx_…`.")
    pod_id: str = Field(description="Its pod (seed 004's tenant).")
    address: str
    display_name: str | None
    status: Status = Field(
        description="`active` when its domain can receive, `provisioning` until it can, "
        "`error` when the domain stopped verifying, `paused` by you."
    )
    config: MailboxConfig
    catch_all: bool
    autonomy_level: Level
    created_at: datetime
    updated_at: datetime


class MailboxList(Resource):
    """One page of mailboxes, oldest first; deleted ones never appear."""

    mailboxes: list[Mailbox]
    next_page_token: str | None


class ConfigBody(RequestBody):
    """Config keys to set; a key sent as null is cleared, an absent key is unchanged."""

    inbound_rate_limit: int | None = Field(None, gt=0, le=1_000_000)
    paused_auto_reply: str | None = Field(None, max_length=5000)
    reply_to: str | None = Field(None, max_length=255, description="An email address.")
    signature: str | None = Field(None, max_length=5000)
    humanizer_style: str | None = Field(None, max_length=255)


class CreateMailboxBody(RequestBody):
    """A new mailbox."""

    address: str = Field(min_length=3, max_length=320, description="`local@domain`.")
    pod_id: str | None = Field(None, min_length=1, description="Pod ID or clientId.")
    tenant_id: str | None = Field(None, min_length=1, description="Seed 004's name for podId.")
    display_name: str | None = Field(None, max_length=255)
    config: ConfigBody | None = None
    autonomy_level: Level | None = None


class UpdateMailboxBody(RequestBody):
    """Fields to change; absent fields are unchanged."""

    display_name: str | None = Field(None, max_length=255)
    status: Literal["active", "paused"] | None = None
    config: ConfigBody | None = None
    catch_all: bool | None = None
    address: str | None = Field(None, min_length=3, max_length=320)


class CloneBody(RequestBody):
    """The clone's address and display name."""

    address: str = Field(min_length=3, max_length=320)
    display_name: str | None = Field(None, max_length=255)


class Folder(Resource):
    """A folder of a mailbox."""

    id: str = Field(description="`fld_…`.")
    name: str
    created_at: datetime


class FolderList(Resource):
    """A mailbox's folders, oldest first."""

    folders: list[Folder]
    next_page_token: str | None = None


class FolderBody(RequestBody):
    """A new folder; names are unique in the mailbox."""

    name: str = Field(min_length=1, max_length=100)


class RuleMatch(Resource):
    """Conditions; every one given must hold."""

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)
    from_: str | None = Field(None, alias="from", max_length=255)
    to: str | None = Field(None, max_length=255)
    subject_contains: str | None = Field(None, alias="subjectContains", max_length=255)


class RuleAction(Resource):
    """What the rule does; `move_to_folder` needs a folder of the same mailbox."""

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)
    type: ActionType
    folder_id: str | None = Field(None, alias="folderId")


class Rule(Resource):
    """A rule of a mailbox."""

    id: str = Field(description="`rule_…`.")
    name: str
    enabled: bool
    priority: int = Field(description="Lower runs first.")
    match: RuleMatch
    action: RuleAction
    created_at: datetime


class RuleList(Resource):
    """A mailbox's rules by priority, then oldest first."""

    rules: list[Rule]
    next_page_token: str | None = None


class CreateRuleBody(RequestBody):
    """A new rule."""

    name: str = Field(min_length=1, max_length=255)
    enabled: bool = True
    priority: int = 0
    match: RuleMatch = Field(default_factory=RuleMatch)
    action: RuleAction


class UpdateRuleBody(RequestBody):
    """Fields to change; absent fields are unchanged."""

    name: str | None = Field(None, min_length=1, max_length=255)
    enabled: bool | None = None
    priority: int | None = None
    match: RuleMatch | None = None
    action: RuleAction | None = None


class Usage(Resource):
    """How many are used, and the plan's limit (null: unlimited)."""

    used: int
    limit: int | None


class BillingStatus(Resource):
    """The account's plan, state and usage."""

    plan: Literal["trial", "starter", "growth", "enterprise"]
    state: Literal["active", "expired"]
    inboxes: Usage
    mailboxes: Usage
    domains: Usage


def mailbox_of(message: mailboxes_pb2.Mailbox) -> Mailbox:
    """Converts a mailbox message to its REST shape."""
    config = message.config
    return Mailbox(
        id=message.id,
        pod_id=message.pod_id,
        address=message.address,
        display_name=message.display_name if message.HasField("display_name") else None,
        status=_STATUS[message.status],  # type: ignore[arg-type]
        config=MailboxConfig(
            **{k: getattr(config, k) if config.HasField(k) else None for k in _CONFIG_KEYS}
        ),
        catch_all=message.catch_all,
        autonomy_level=_LEVEL[message.autonomy_level],  # type: ignore[arg-type]
        created_at=time_of(message.create_time),
        updated_at=time_of(message.update_time),
    )


def folder_of(message: mailboxes_pb2.Folder) -> Folder:
    """Converts a folder message to its REST shape."""
    return Folder(id=message.id, name=message.name, created_at=time_of(message.create_time))


def _config_pb(body: ConfigBody) -> tuple[mailboxes_pb2.MailboxConfig, list[str]]:
    """The config message and the keys the body sent (null ones included)."""
    sent = [k for k in _CONFIG_KEYS if k in body.model_fields_set]
    values = {k: getattr(body, k) for k in sent if getattr(body, k) is not None}
    return mailboxes_pb2.MailboxConfig(**values), sent


def _rule_of(message: mailboxes_pb2.Rule) -> Rule:
    match, action = message.match, message.action
    return Rule(
        id=message.id,
        name=message.name,
        enabled=message.enabled,
        priority=message.priority,
        match=RuleMatch(
            from_=getattr(match, "from") if match.HasField("from") else None,
            to=match.to if match.HasField("to") else None,
            subject_contains=match.subject_contains if match.HasField("subject_contains") else None,
        ),
        action=RuleAction(
            type=action.type,  # type: ignore[arg-type]
            folder_id=action.folder_id if action.HasField("folder_id") else None,
        ),
        created_at=time_of(message.create_time),
    )


def _match_pb(match: RuleMatch) -> mailboxes_pb2.RuleMatch:
    values = {"from": match.from_, "to": match.to, "subject_contains": match.subject_contains}
    return mailboxes_pb2.RuleMatch(**{k: v for k, v in values.items() if v is not None})


def _action_pb(action: RuleAction) -> mailboxes_pb2.RuleAction:
    message = mailboxes_pb2.RuleAction(type=action.type)
    if action.folder_id is not None:
        message.folder_id = action.folder_id
    return message


def _pod_of(pod_id: str | None, tenant_id: str | None) -> str | None:
    if pod_id is not None and tenant_id is not None and pod_id != tenant_id:
        raise invalid_argument("tenantId", "names a pod like podId; send one of them.")
    return pod_id or tenant_id


async def _list(call: CallerCall, pod: str | None, limit: int, token: str | None) -> MailboxList:
    response = await call.stubs.mailboxes.ListMailboxes(
        mailboxes_pb2.ListMailboxesRequest(
            pod_id=pod or "", page_size=limit, page_token=token or ""
        ),
        metadata=call.metadata,
        timeout=call.timeout,
    )
    return MailboxList(
        mailboxes=[mailbox_of(m) for m in response.mailboxes],
        next_page_token=response.next_page_token or None,
    )


_PLACEMENT_ERRORS: tuple[Code, ...] = (
    "pod_not_found",
    "pod_busy",
    "domain_not_found",
    "domain_pod_mismatch",
    "domain_busy",
    "account_expired",
    "mailbox_limit_reached",
    "address_taken",
)


@router.post(
    "/v1/agent/mailboxes",
    status_code=201,
    response_model=Mailbox,
    responses=documented(*_PLACEMENT_ERRORS),
    summary="Create a mailbox",
)
async def create_mailbox(call: CallerCall, body: CreateMailboxBody) -> Mailbox:
    """Creates a mailbox in a pod (`podId` or seed 004's `tenantId`; the default pod
    when omitted), `active` when its domain can receive, else `provisioning`."""
    wanted = mailboxes_pb2.Mailbox(
        pod_id=_pod_of(body.pod_id, body.tenant_id) or "",
        address=body.address,
        autonomy_level=_LEVEL_PB[body.autonomy_level] if body.autonomy_level else 0,
    )
    if body.display_name is not None:
        wanted.display_name = body.display_name
    if body.config is not None:
        wanted.config.CopyFrom(_config_pb(body.config)[0])
    created = await call.stubs.mailboxes.CreateMailbox(
        mailboxes_pb2.CreateMailboxRequest(mailbox=wanted),
        metadata=call.metadata,
        timeout=call.timeout,
    )
    return mailbox_of(created)


@router.get(
    "/v1/agent/mailboxes",
    response_model=MailboxList,
    responses=documented("pod_not_found"),
    summary="List mailboxes",
)
async def list_mailboxes(
    call: CallerCall,
    pod_id: Annotated[str | None, Query(alias="podId", description="Only this pod's.")] = None,
    tenant_id: Annotated[
        str | None, Query(alias="tenantId", description="Seed 004's name for podId.")
    ] = None,
    limit: PageLimit = 50,
    page_token: PageToken = None,
) -> MailboxList:
    """Lists the account's mailboxes, oldest first."""
    return await _list(call, _pod_of(pod_id, tenant_id), limit, page_token)


@router.get(
    "/v1/pods/{pod}/mailboxes",
    response_model=MailboxList,
    responses=documented("pod_not_found"),
    tags=["pods"],
    summary="List a pod's mailboxes",
)
async def list_pod_mailboxes(
    call: CallerCall,
    pod: str = Path(description="The pod's ID or clientId."),
    limit: PageLimit = 50,
    page_token: PageToken = None,
) -> MailboxList:
    """Lists one pod's mailboxes, oldest first."""
    return await _list(call, pod, limit, page_token)


@router.get(
    "/v1/agent/mailboxes/{mailbox}",
    response_model=Mailbox,
    responses=documented("mailbox_not_found"),
    summary="Get a mailbox",
)
async def get_mailbox(call: CallerCall, mailbox: str = MailboxRef) -> Mailbox:
    """Gets a mailbox; a deleted one is not found."""
    found = await call.stubs.mailboxes.GetMailbox(
        mailboxes_pb2.GetMailboxRequest(mailbox_id=mailbox),
        metadata=call.metadata,
        timeout=call.timeout,
    )
    return mailbox_of(found)


@router.patch(
    "/v1/agent/mailboxes/{mailbox}",
    response_model=Mailbox,
    responses=documented(
        "mailbox_not_found",
        "catch_all_taken",
        "shared_domain_address",
        "domain_not_found",
        "domain_not_verified",
        "domain_pod_mismatch",
        "domain_busy",
        "address_taken",
    ),
    summary="Update a mailbox",
)
async def update_mailbox(
    call: CallerCall, body: UpdateMailboxBody, mailbox: str = MailboxRef
) -> Mailbox:
    """Changes `displayName` (null clears), `status` (`active` or `paused`), `config`
    (merged key by key; null clears a key), `catchAll`, `address` (custom domains only)."""
    sent = body.model_fields_set
    changes = mailboxes_pb2.Mailbox()
    paths: list[str] = []
    if "display_name" in sent:
        paths.append("display_name")
        if body.display_name is not None:
            changes.display_name = body.display_name
    for field in ("status", "catch_all", "address"):
        if field in sent:
            value = getattr(body, field)
            if value is None:
                raise invalid_argument(_camel(field), "cannot be null.")
            paths.append(field)
            if field == "status":
                changes.status = _STATUS_PB[value]
            else:
                setattr(changes, field, value)
    if "config" in sent:
        if body.config is None:
            raise invalid_argument("config", "cannot be null; send the keys to change.")
        config, keys = _config_pb(body.config)
        changes.config.CopyFrom(config)
        paths += [f"config.{k}" for k in keys]
    if not paths:
        return await get_mailbox(call, mailbox)
    updated = await call.stubs.mailboxes.UpdateMailbox(
        mailboxes_pb2.UpdateMailboxRequest(
            mailbox_id=mailbox, mailbox=changes, update_mask=field_mask_pb2.FieldMask(paths=paths)
        ),
        metadata=call.metadata,
        timeout=call.timeout,
    )
    return mailbox_of(updated)


def _camel(field: str) -> str:
    head, *rest = field.split("_")
    return head + "".join(part.title() for part in rest)


@router.delete(
    "/v1/agent/mailboxes/{mailbox}",
    response_model=Deleted,
    responses=documented("mailbox_not_found", "last_mailbox", "permission_denied"),
    summary="Delete a mailbox",
)
async def delete_mailbox(call: CallerCall, mailbox: str = MailboxRef) -> Deleted:
    """Soft-deletes a mailbox; the account's last live mailbox cannot be deleted."""
    response = await call.stubs.mailboxes.DeleteMailbox(
        mailboxes_pb2.DeleteMailboxRequest(mailbox_id=mailbox),
        metadata=call.metadata,
        timeout=call.timeout,
    )
    return Deleted(id=response.mailbox_id)


@router.post(
    "/v1/agent/mailboxes/{mailbox}/clone",
    status_code=201,
    response_model=Mailbox,
    responses=documented("mailbox_not_found", "permission_denied", *_PLACEMENT_ERRORS),
    summary="Clone a mailbox",
)
async def clone_mailbox(call: CallerCall, body: CloneBody, mailbox: str = MailboxRef) -> Mailbox:
    """A new mailbox with the source's autonomy level, config, folders (empty) and
    rules (remapped to the new folders); not its catch-all, address or display name."""
    request = mailboxes_pb2.CloneMailboxRequest(mailbox_id=mailbox, address=body.address)
    if body.display_name is not None:
        request.display_name = body.display_name
    clone = await call.stubs.mailboxes.CloneMailbox(
        request, metadata=call.metadata, timeout=call.timeout
    )
    return mailbox_of(clone)


@router.get(
    "/v1/agent/mailboxes/{mailbox}/folders",
    response_model=FolderList,
    responses=documented("mailbox_not_found"),
    summary="List a mailbox's folders",
)
async def list_folders(call: CallerCall, mailbox: str = MailboxRef) -> FolderList:
    """Lists the folders, oldest first."""
    response = await call.stubs.mailboxes.ListFolders(
        mailboxes_pb2.ListFoldersRequest(mailbox_id=mailbox),
        metadata=call.metadata,
        timeout=call.timeout,
    )
    return FolderList(folders=[folder_of(f) for f in response.folders])


@router.post(
    "/v1/agent/mailboxes/{mailbox}/folders",
    status_code=201,
    response_model=Folder,
    responses=documented("mailbox_not_found", "folder_exists"),
    summary="Create a folder",
)
async def create_folder(call: CallerCall, body: FolderBody, mailbox: str = MailboxRef) -> Folder:
    """Creates a folder; names are unique in the mailbox."""
    folder = await call.stubs.mailboxes.CreateFolder(
        mailboxes_pb2.CreateFolderRequest(
            mailbox_id=mailbox, folder=mailboxes_pb2.Folder(name=body.name)
        ),
        metadata=call.metadata,
        timeout=call.timeout,
    )
    return folder_of(folder)


@router.delete(
    "/v1/agent/mailboxes/{mailbox}/folders/{folder}",
    response_model=Deleted,
    responses=documented("mailbox_not_found", "folder_not_found", "folder_in_use"),
    summary="Delete a folder",
)
async def delete_folder(
    call: CallerCall, mailbox: str = MailboxRef, folder: str = Path(description="`fld_…`.")
) -> Deleted:
    """Deletes a folder that no rule points at."""
    response = await call.stubs.mailboxes.DeleteFolder(
        mailboxes_pb2.DeleteFolderRequest(mailbox_id=mailbox, folder_id=folder),
        metadata=call.metadata,
        timeout=call.timeout,
    )
    return Deleted(id=response.folder_id)


@router.get(
    "/v1/agent/mailboxes/{mailbox}/rules",
    response_model=RuleList,
    responses=documented("mailbox_not_found"),
    summary="List a mailbox's rules",
)
async def list_rules(call: CallerCall, mailbox: str = MailboxRef) -> RuleList:
    """Lists the rules by priority, then oldest first."""
    response = await call.stubs.mailboxes.ListRules(
        mailboxes_pb2.ListRulesRequest(mailbox_id=mailbox),
        metadata=call.metadata,
        timeout=call.timeout,
    )
    return RuleList(rules=[_rule_of(r) for r in response.rules])


@router.post(
    "/v1/agent/mailboxes/{mailbox}/rules",
    status_code=201,
    response_model=Rule,
    responses=documented("mailbox_not_found"),
    summary="Create a rule",
)
async def create_rule(call: CallerCall, body: CreateRuleBody, mailbox: str = MailboxRef) -> Rule:
    """Creates a rule; `move_to_folder` needs `folderId`, a folder of this mailbox."""
    rule = mailboxes_pb2.Rule(
        name=body.name,
        enabled=body.enabled,
        priority=body.priority,
        match=_match_pb(body.match),
        action=_action_pb(body.action),
    )
    created = await call.stubs.mailboxes.CreateRule(
        mailboxes_pb2.CreateRuleRequest(mailbox_id=mailbox, rule=rule),
        metadata=call.metadata,
        timeout=call.timeout,
    )
    return _rule_of(created)


@router.patch(
    "/v1/agent/mailboxes/{mailbox}/rules/{rule}",
    response_model=Rule,
    responses=documented("mailbox_not_found", "rule_not_found"),
    summary="Update a rule",
)
async def update_rule(
    call: CallerCall,
    body: UpdateRuleBody,
    mailbox: str = MailboxRef,
    rule: str = Path(description="`rule_…`."),
) -> Rule:
    """Changes the fields sent; absent fields are unchanged."""
    changes = mailboxes_pb2.Rule()
    paths: list[str] = []
    for field in sorted(body.model_fields_set):
        value: Any = getattr(body, field)
        if value is None:
            raise invalid_argument(field, "cannot be null.")
        paths.append(field)
        if field == "match":
            changes.match.CopyFrom(_match_pb(value))
        elif field == "action":
            changes.action.CopyFrom(_action_pb(value))
        else:
            setattr(changes, field, value)
    updated = await call.stubs.mailboxes.UpdateRule(
        mailboxes_pb2.UpdateRuleRequest(
            mailbox_id=mailbox,
            rule_id=rule,
            rule=changes,
            update_mask=field_mask_pb2.FieldMask(paths=paths),
        ),
        metadata=call.metadata,
        timeout=call.timeout,
    )
    return _rule_of(updated)


@router.delete(
    "/v1/agent/mailboxes/{mailbox}/rules/{rule}",
    response_model=Deleted,
    responses=documented("mailbox_not_found", "rule_not_found"),
    summary="Delete a rule",
)
async def delete_rule(
    call: CallerCall, mailbox: str = MailboxRef, rule: str = Path(description="`rule_…`.")
) -> Deleted:
    """Deletes a rule."""
    response = await call.stubs.mailboxes.DeleteRule(
        mailboxes_pb2.DeleteRuleRequest(mailbox_id=mailbox, rule_id=rule),
        metadata=call.metadata,
        timeout=call.timeout,
    )
    return Deleted(id=response.rule_id)


@router.get(
    "/v1/billing/status",
    response_model=BillingStatus,
    responses=documented("permission_denied"),
    tags=["account"],
    summary="Plan, state and usage",
)
async def billing_status(call: CallerCall) -> BillingStatus:
    """The plan, the state, and the inboxes, mailboxes and custom domains used
    against the plan's limits (`limit` null: unlimited), asked of each service."""
    stubs, options = call.stubs, {"metadata": call.metadata, "timeout": call.timeout}
    account, inboxes, mailboxes, domains = await asyncio.gather(
        stubs.accounts.GetAccount(pods_pb2.GetAccountRequest(), **options),
        stubs.inboxes.CountInboxes(inboxes_pb2.CountInboxesRequest(), **options),
        stubs.mailboxes.CountMailboxes(mailboxes_pb2.CountMailboxesRequest(), **options),
        stubs.domains.CountDomains(domains_pb2.CountDomainsRequest(), **options),
    )
    plan = _PLANS[account.plan]
    limits = PLAN_LIMITS[plan]
    return BillingStatus(
        plan=plan,  # type: ignore[arg-type]
        state=_STATES[account.state],  # type: ignore[arg-type]
        inboxes=Usage(used=inboxes.inboxes, limit=limits.inboxes),
        mailboxes=Usage(used=mailboxes.mailboxes, limit=limits.mailboxes),
        domains=Usage(used=domains.domains, limit=limits.domains),
    )
