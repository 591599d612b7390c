"""``/v1/inboxes…`` and ``/v1/pods/{pod}/inboxes`` (seeds 000, 001, 003; DESIGN §4 Inboxes)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Path, Query, Response
from google.protobuf import field_mask_pb2
from mailplane.inboxes.v1 import inboxes_pb2
from pydantic import Field

from gateway.deps import CallerCall
from gateway.errors import documented
from gateway.routes.common import Deleted, PageLimit, PageToken, RequestBody, Resource, time_of

router = APIRouter(tags=["inboxes"])
InboxRef = Path(description="The inbox's ID, `inb_…`.")


class Inbox(Resource):
    """An email address an agent uses; its pod never changes."""

    id: str = Field(description="The inbox's ID, `inb_…`.")
    pod_id: str = Field(description="The pod it belongs to.")
    email: str = Field(description="`username@domain`, lower case.")
    username: str
    domain: str
    display_name: str | None = Field(description="A label for people; the From name.")
    created_at: datetime
    updated_at: datetime


class ImapCredentials(Resource):
    """How a mail client reads the inbox (IMAPS)."""

    host: str
    port: int
    tls: bool
    username: str
    password: str


class SmtpCredentials(Resource):
    """How a mail client sends from the inbox (SMTP submission)."""

    host: str
    port: int
    starttls: bool
    username: str
    password: str


class Credentials(Resource):
    """IMAP and SMTP logins; shown only in the response that creates or rotates them."""

    imap: ImapCredentials
    smtp: SmtpCredentials


class CreatedInbox(Inbox):
    """The answer of a create: the inbox, whether it already existed, and (on first
    creation only) its credentials."""

    existed: bool = Field(description="True when this account already had the address in this pod.")
    credentials: Credentials | None = Field(
        description="On first creation only; null on an idempotent retry."
    )


class InboxWithCredentials(Inbox):
    """The inbox and its new credentials."""

    credentials: Credentials


class InboxList(Resource):
    """One page of inboxes, oldest first."""

    inboxes: list[Inbox]
    next_page_token: str | None


class CreateInboxBody(RequestBody):
    """A new inbox; every field is optional."""

    username: str | None = Field(
        None,
        min_length=1,
        max_length=64,
        description="Letters, digits, `.`, `-`, `_` (lower-cased); generated from "
        "`displayName` or the pod's name when omitted.",
    )
    domain: str | None = Field(
        None,
        min_length=1,
        max_length=253,
        description="A verified custom domain; omit for the shared domain.",
    )
    display_name: str | None = Field(None, max_length=255)
    pod_id: str | None = Field(
        None, min_length=1, description="Pod ID or clientId; omit for the default pod."
    )


class UpdateInboxBody(RequestBody):
    """Only the display name changes; null clears it."""

    display_name: str | None = Field(None, max_length=255)


def inbox_fields(message: inboxes_pb2.Inbox) -> dict[str, object]:
    """The REST fields of an inbox message."""
    return {
        "id": message.id,
        "pod_id": message.pod_id,
        "email": message.email,
        "username": message.username,
        "domain": message.domain,
        "display_name": message.display_name if message.HasField("display_name") else None,
        "created_at": time_of(message.create_time),
        "updated_at": time_of(message.update_time),
    }


def credentials_of(message: inboxes_pb2.Credentials) -> Credentials:
    """Converts credentials to their REST shape."""
    imap, smtp = message.imap, message.smtp
    return Credentials(
        imap=ImapCredentials(
            host=imap.host,
            port=imap.port,
            tls=imap.tls,
            username=imap.username,
            password=imap.password,
        ),
        smtp=SmtpCredentials(
            host=smtp.host,
            port=smtp.port,
            starttls=smtp.starttls,
            username=smtp.username,
            password=smtp.password,
        ),
    )


async def _list(
    call: CallerCall, pod: str | None, domain: str | None, limit: int, token: str | None
) -> InboxList:
    response = await call.stubs.inboxes.ListInboxes(
        inboxes_pb2.ListInboxesRequest(
            pod_id=pod or "", domain=domain or "", page_size=limit, page_token=token or ""
        ),
        metadata=call.metadata,
        timeout=call.timeout,
    )
    return InboxList(
        inboxes=[Inbox(**inbox_fields(i)) for i in response.inboxes],  # type: ignore[arg-type]
        next_page_token=response.next_page_token or None,
    )


@router.post(
    "/v1/inboxes",
    status_code=201,
    response_model=CreatedInbox,
    responses={
        200: {"model": CreatedInbox, "description": "The address already existed (a retry)."},
        **documented(
            "pod_not_found",
            "pod_busy",
            "domain_not_found",
            "domain_not_verified",
            "domain_pod_mismatch",
            "domain_busy",
            "account_expired",
            "inbox_limit_reached",
            "username_taken",
        ),
    },
    summary="Create an inbox (idempotent on the address)",
)
async def create_inbox(
    call: CallerCall,
    body: CreateInboxBody,
    response: Response,
    strict: Annotated[
        bool, Query(description="Answer 409 `username_taken` instead of `username1`… fallback.")
    ] = False,
) -> CreatedInbox:
    """Creates an inbox. The same address in the same pod answers 200 with
    `existed: true` and no credentials; a username taken otherwise falls back to
    `username1` … `username99` unless `strict=true`."""
    wanted = inboxes_pb2.Inbox(
        username=body.username or "", domain=body.domain or "", pod_id=body.pod_id or ""
    )
    if body.display_name is not None:
        wanted.display_name = body.display_name
    created = await call.stubs.inboxes.CreateInbox(
        inboxes_pb2.CreateInboxRequest(inbox=wanted, strict=strict),
        metadata=call.metadata,
        timeout=call.timeout,
    )
    if created.existed:
        response.status_code = 200
    return CreatedInbox(
        **inbox_fields(created.inbox),  # type: ignore[arg-type]
        existed=created.existed,
        credentials=credentials_of(created.credentials)
        if created.HasField("credentials")
        else None,
    )


@router.get(
    "/v1/inboxes",
    response_model=InboxList,
    responses=documented("pod_not_found"),
    summary="List inboxes",
)
async def list_inboxes(
    call: CallerCall,
    pod_id: Annotated[str | None, Query(alias="podId", description="Only this pod's.")] = None,
    domain: Annotated[str | None, Query(description="Only inboxes on this domain.")] = None,
    limit: PageLimit = 50,
    page_token: PageToken = None,
) -> InboxList:
    """Lists the account's inboxes, oldest first."""
    return await _list(call, pod_id, domain, limit, page_token)


@router.get(
    "/v1/pods/{pod}/inboxes",
    response_model=InboxList,
    responses=documented("pod_not_found"),
    tags=["pods"],
    summary="List a pod's inboxes",
)
async def list_pod_inboxes(
    call: CallerCall,
    pod: str = Path(description="The pod's ID or clientId."),
    limit: PageLimit = 50,
    page_token: PageToken = None,
) -> InboxList:
    """Lists one pod's inboxes, oldest first."""
    return await _list(call, pod, None, limit, page_token)


@router.get(
    "/v1/inboxes/{inbox}",
    response_model=Inbox,
    responses=documented("inbox_not_found"),
    summary="Get an inbox",
)
async def get_inbox(call: CallerCall, inbox: str = InboxRef) -> Inbox:
    """Gets an inbox; credentials are never shown again."""
    found = await call.stubs.inboxes.GetInbox(
        inboxes_pb2.GetInboxRequest(inbox_id=inbox), metadata=call.metadata, timeout=call.timeout
    )
    return Inbox(**inbox_fields(found))  # type: ignore[arg-type]


@router.patch(
    "/v1/inboxes/{inbox}",
    response_model=Inbox,
    responses=documented("inbox_not_found"),
    summary="Update an inbox's display name",
)
async def update_inbox(call: CallerCall, body: UpdateInboxBody, inbox: str = InboxRef) -> Inbox:
    """Sets or (with null) clears the display name; an absent field is unchanged."""
    if "display_name" not in body.model_fields_set:
        return await get_inbox(call, inbox)
    changes = inboxes_pb2.Inbox()
    if body.display_name is not None:
        changes.display_name = body.display_name
    updated = await call.stubs.inboxes.UpdateInbox(
        inboxes_pb2.UpdateInboxRequest(
            inbox_id=inbox,
            inbox=changes,
            update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
        ),
        metadata=call.metadata,
        timeout=call.timeout,
    )
    return Inbox(**inbox_fields(updated))  # type: ignore[arg-type]


@router.delete(
    "/v1/inboxes/{inbox}",
    response_model=Deleted,
    responses=documented("inbox_not_found"),
    summary="Delete an inbox",
)
async def delete_inbox(call: CallerCall, inbox: str = InboxRef) -> Deleted:
    """Deletes an inbox and its credentials."""
    response = await call.stubs.inboxes.DeleteInbox(
        inboxes_pb2.DeleteInboxRequest(inbox_id=inbox), metadata=call.metadata, timeout=call.timeout
    )
    return Deleted(id=response.inbox_id)


@router.post(
    "/v1/inboxes/{inbox}/rotate-credentials",
    response_model=InboxWithCredentials,
    responses=documented("inbox_not_found"),
    summary="Rotate an inbox's credentials",
)
async def rotate_credentials(call: CallerCall, inbox: str = InboxRef) -> InboxWithCredentials:
    """Issues a new password, shown once; the old one stops working."""
    rotated = await call.stubs.inboxes.RotateInboxCredentials(
        inboxes_pb2.RotateInboxCredentialsRequest(inbox_id=inbox),
        metadata=call.metadata,
        timeout=call.timeout,
    )
    return InboxWithCredentials(
        **inbox_fields(rotated.inbox),  # type: ignore[arg-type]
        credentials=credentials_of(rotated.credentials),
    )
