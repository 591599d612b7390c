"""The error catalog of DESIGN §4: the single source of every error's code, HTTP
status and gRPC status.

Domain code raises ``MailplaneError`` with a catalog code; the chassis interceptor
turns it into a gRPC status carrying a ``google.rpc.ErrorInfo`` whose ``reason`` is
the code in upper case (AIP-193) and whose metadata carries the details; the
gateway maps the reason back to the HTTP status and the JSON error body. This
module imports no transport library, so services can raise from ``service.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

ERROR_DOMAIN = "mailplane.dev"

Code = Literal[
    "invalid_argument",
    "unauthenticated",
    "permission_denied",
    "account_expired",
    "inbox_limit_reached",
    "mailbox_limit_reached",
    "domain_limit_reached",
    "not_found",
    "account_not_found",
    "pod_not_found",
    "domain_not_found",
    "inbox_not_found",
    "mailbox_not_found",
    "api_key_not_found",
    "folder_not_found",
    "rule_not_found",
    "message_not_found",
    "thread_not_found",
    "draft_not_found",
    "attachment_not_found",
    "webhook_not_found",
    "client_id_taken",
    "domain_exists",
    "domain_claimed",
    "username_taken",
    "address_taken",
    "catch_all_taken",
    "folder_exists",
    "api_key_limit_reached",
    "default_pod",
    "pod_not_empty",
    "pod_has_domains",
    "domain_not_verified",
    "domain_pod_mismatch",
    "domain_in_use",
    "last_mailbox",
    "shared_domain_address",
    "folder_in_use",
    "mailbox_paused",
    "domain_not_sendable",
    "idempotency_key_in_use",
    "idempotency_key_reused",
    "recipient_suppressed",
    "send_rate_limited",
    "message_too_large",
    "pod_busy",
    "domain_busy",
    "method_not_allowed",
    "unavailable",
    "internal",
]


@dataclass(frozen=True)
class CatalogEntry:
    """How one error code travels: its HTTP status and its gRPC status name."""

    http_status: int
    grpc_code: str  # a ``grpc.StatusCode`` member name


def _entries(http_status: int, grpc_code: str, *codes: Code) -> dict[str, CatalogEntry]:
    return {code: CatalogEntry(http_status, grpc_code) for code in codes}


CATALOG: dict[str, CatalogEntry] = {
    **_entries(400, "INVALID_ARGUMENT", "invalid_argument"),
    **_entries(401, "UNAUTHENTICATED", "unauthenticated"),
    **_entries(403, "PERMISSION_DENIED", "permission_denied"),
    **_entries(403, "FAILED_PRECONDITION", "account_expired"),
    **_entries(
        403,
        "RESOURCE_EXHAUSTED",
        "inbox_limit_reached",
        "mailbox_limit_reached",
        "domain_limit_reached",
    ),
    **_entries(
        404,
        "NOT_FOUND",
        "not_found",
        "account_not_found",
        "pod_not_found",
        "domain_not_found",
        "inbox_not_found",
        "mailbox_not_found",
        "api_key_not_found",
        "folder_not_found",
        "rule_not_found",
        "message_not_found",
        "thread_not_found",
        "draft_not_found",
        "attachment_not_found",
        "webhook_not_found",
    ),
    **_entries(405, "UNIMPLEMENTED", "method_not_allowed"),
    **_entries(
        409,
        "ALREADY_EXISTS",
        "client_id_taken",
        "domain_exists",
        "domain_claimed",
        "username_taken",
        "address_taken",
        "catch_all_taken",
        "folder_exists",
    ),
    **_entries(409, "RESOURCE_EXHAUSTED", "api_key_limit_reached"),
    **_entries(
        409,
        "FAILED_PRECONDITION",
        "default_pod",
        "pod_not_empty",
        "pod_has_domains",
        "domain_not_verified",
        "domain_pod_mismatch",
        "domain_in_use",
        "last_mailbox",
        "shared_domain_address",
        "folder_in_use",
        "mailbox_paused",
        "domain_not_sendable",
    ),
    **_entries(409, "ABORTED", "pod_busy", "domain_busy", "idempotency_key_in_use"),
    **_entries(413, "INVALID_ARGUMENT", "message_too_large"),
    **_entries(422, "FAILED_PRECONDITION", "idempotency_key_reused", "recipient_suppressed"),
    **_entries(429, "RESOURCE_EXHAUSTED", "send_rate_limited"),
    **_entries(503, "UNAVAILABLE", "unavailable"),
    **_entries(500, "INTERNAL", "internal"),
}

#: The code of a bare gRPC status that carries no ErrorInfo (a peer down, a
#: deadline passed, a bug in a library): keyed by ``grpc.StatusCode`` name.
CODE_OF_BARE_STATUS: dict[str, Code] = {
    "INVALID_ARGUMENT": "invalid_argument",
    "UNAUTHENTICATED": "unauthenticated",
    "PERMISSION_DENIED": "permission_denied",
    "NOT_FOUND": "not_found",
    "UNAVAILABLE": "unavailable",
    "DEADLINE_EXCEEDED": "unavailable",
    "CANCELLED": "unavailable",
    # gRPC's own size limits (a message or metadata too large): only a request
    # past the bounds the edges check can reach them, so it is the caller's to fix.
    "RESOURCE_EXHAUSTED": "invalid_argument",
}


class MailplaneError(Exception):
    """An error from the catalog, raised by domain code.

    Args:
        code: the catalog code, e.g. ``"pod_not_empty"``.
        message: a sentence a person can act on: what is wrong and what to do.
        details: extra facts for the caller, e.g. ``{"inboxes": 3}``; values are
            ints or strings (they travel as ErrorInfo metadata strings).
    """

    def __init__(self, code: Code, message: str, details: Mapping[str, int | str] | None = None):
        if code not in CATALOG:
            raise ValueError(f"unknown error code {code}")
        super().__init__(message)
        self.code: Code = code
        self.message = message
        self.details = dict(details) if details is not None else None

    @property
    def entry(self) -> CatalogEntry:
        """The code's HTTP and gRPC mapping."""
        return CATALOG[self.code]

    def __repr__(self) -> str:
        return f"MailplaneError({self.code!r}, {self.message!r}, {self.details!r})"


def invalid_argument(field: str, problem: str) -> MailplaneError:
    """Returns the ``invalid_argument`` error for ``field``.

    Args:
        field: the field as the caller named it (``clientId``).
        problem: what is wrong and how to fix it, completing "`field` …".
    """
    return MailplaneError("invalid_argument", f"`{field}` {problem}", {"field": field})


def details_from_metadata(metadata: dict[str, str]) -> dict[str, int | str] | None:
    """Turns ErrorInfo metadata back into details: digit strings become ints."""
    if not metadata:
        return None
    return {k: int(v) if v.isdigit() else v for k, v in metadata.items()}
