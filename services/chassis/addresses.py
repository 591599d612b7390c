"""Email local parts, shared by inboxes and mailboxes: one validation rule and the
reserved role names (RFC 5321, RFC 5322 dot-atom, RFC 2142). Pure functions."""

from __future__ import annotations

import re

from services.chassis.errors import invalid_argument

MAX_LOCAL_PART = 64
#: RFC 2142 role mailboxes (plus the usual ``noreply`` and ``mailer-daemon``):
#: an agent must not answer for the domain's operator.
RESERVED = frozenset({"postmaster", "abuse", "hostmaster", "webmaster", "noreply", "mailer-daemon"})
_LOCAL_PART = re.compile(r"[a-z0-9](?:[a-z0-9._-]*[a-z0-9])?")


def check_local_part(raw: str, field: str) -> str:
    """Returns ``raw`` stripped and lower-cased if it is a valid, unreserved local part.

    Rules: letters, digits, ``.``, ``-``, ``_``; starts and ends with a letter or
    digit; no ``..`` (RFC 5322 dot-atom); at most 64 characters (RFC 5321); not
    an RFC 2142 role name.

    Raises:
        MailplaneError: ``invalid_argument`` naming ``field``.
    """
    local = raw.strip().lower()
    if not local:
        raise invalid_argument(field, "has an empty local part (before the @).")
    if len(local) > MAX_LOCAL_PART:
        raise invalid_argument(field, f"has a local part longer than {MAX_LOCAL_PART} characters.")
    if not _LOCAL_PART.fullmatch(local) or ".." in local:
        raise invalid_argument(
            field,
            "may contain only letters, digits, '.', '-' and '_' before the @, starting and "
            "ending with a letter or digit, without '..'.",
        )
    if local in RESERVED:
        raise invalid_argument(
            field, f"{local!r} is a reserved role address (RFC 2142); choose another name."
        )
    return local


def is_reserved(local: str) -> bool:
    """Whether ``local`` is a reserved role name."""
    return local in RESERVED


def domain_key(name: str) -> str:
    """A domain name as stored and compared: stripped, no trailing dot, lower case."""
    return name.strip().rstrip(".").lower()
