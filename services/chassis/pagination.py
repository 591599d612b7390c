"""Opaque keyset page tokens (AIP-158) and page-size rules (DESIGN §4).

A token is the URL-safe base64 of a JSON list: the sort key of the last row of
the previous page, preceded by a tag of the list it belongs to, so a token from
one listing is refused by another. Keyset pagination stays stable when rows are
inserted between pages.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from services.chassis.errors import invalid_argument

T = TypeVar("T")
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 100


def page_size(requested: int) -> int:
    """Returns the page size for a request: 0 → 50; 1-100 as given.

    Raises:
        MailplaneError: ``invalid_argument`` naming ``limit`` outside 0-100.
    """
    if requested == 0:
        return DEFAULT_PAGE_SIZE
    if not 1 <= requested <= MAX_PAGE_SIZE:
        raise invalid_argument("limit", "must be between 1 and 100.")
    return requested


def encode(listing: str, key: Sequence[Any]) -> str:
    """Returns the token that resumes ``listing`` after the row whose sort key is ``key``.

    Args:
        listing: a tag naming the list and its filters, e.g. ``"pods"``.
        key: JSON-serialisable sort-key values of the last row served.
    """
    raw = json.dumps([listing, *key], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode(listing: str, token: str) -> list[Any] | None:
    """Returns the sort key inside ``token``, or ``None`` for an empty token.

    Raises:
        MailplaneError: ``invalid_argument`` naming ``pageToken`` when the token
            is malformed or belongs to another listing.
    """
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        values = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        values = None
    if not isinstance(values, list) or not values or values[0] != listing:
        raise invalid_argument(
            "pageToken", "is not a token this listing gave; omit it to start from the first page."
        )
    return values[1:]


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a listing and the sort key that resumes after it (``None`` at the end)."""

    items: list[T]
    next_key: list[object] | None


def page_of(rows: list[T], limit: int, sort_key: Callable[[T], list[object]]) -> Page[T]:
    """Cuts ``limit + 1`` fetched rows into one page and the key that resumes after it.

    Args:
        rows: up to ``limit + 1`` rows in listing order (one more than a page tells
            whether another page follows).
        limit: the page size.
        sort_key: the JSON-serialisable sort key of a row.
    """
    items = rows[:limit]
    return Page(items, sort_key(items[-1]) if len(rows) > limit else None)
