"""Opaque, authenticated keyset page tokens (AIP-158) and page-size rules (DESIGN §4).

A token is ``<payload>.<mac>``: the URL-safe base64 of a JSON list, the sort key of
the last row of the previous page, and a truncated HMAC-SHA-256 (128 bits,
RFC 2104) under the server's ``MAILPLANE_PAGE_TOKEN_KEY`` of the account, the
listing (the list and its filters, e.g. ``inboxes:<pod>:<domain>``) and the
payload. So a token is accepted only by the account and listing it was given for,
and its values are only ever ones the server wrote: a crafted, tampered or
swapped token is ``invalid_argument`` naming ``pageToken``, never a query with
values of the wrong types. Keyset pagination stays stable when rows are
inserted between pages.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from services.chassis.errors import MailplaneError, invalid_argument

T = TypeVar("T")
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 100
#: Bytes of the HMAC kept in a token (128 bits).
MAC_BYTES = 16


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


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _bad_token() -> MailplaneError:
    return invalid_argument(
        "pageToken", "is not a token this listing gave; omit it to start from the first page."
    )


class PageTokens:
    """Makes and checks the page tokens of one service.

    Args:
        key: the HMAC key (``MAILPLANE_PAGE_TOKEN_KEY``, UTF-8 encoded); every
            process of a deployment must share it, and changing it invalidates
            the tokens in flight (a client then starts from the first page).
    """

    def __init__(self, key: bytes):
        self._key = key

    def _mac(self, account_id: str, listing: str, payload: str) -> bytes:
        message = "\x00".join((account_id, listing, payload)).encode()
        return hmac.new(self._key, message, hashlib.sha256).digest()[:MAC_BYTES]

    def encode(self, account_id: str, listing: str, key: Sequence[Any]) -> str:
        """Returns the token that resumes ``listing`` after the row whose sort key is ``key``.

        Args:
            account_id: the account the listing belongs to.
            listing: a tag naming the list and its filters, e.g. ``"pods"``.
            key: JSON-serialisable sort-key values of the last row served.
        """
        payload = _b64(json.dumps(list(key), separators=(",", ":")).encode())
        return f"{payload}.{_b64(self._mac(account_id, listing, payload))}"

    def decode(self, account_id: str, listing: str, token: str) -> list[Any] | None:
        """Returns the sort key inside ``token``, or ``None`` for an empty token.

        Raises:
            MailplaneError: ``invalid_argument`` naming ``pageToken`` when the token
                is malformed, altered, or was given to another account or listing.
        """
        if not token:
            return None
        payload, _, mac = token.partition(".")
        try:
            valid = hmac.compare_digest(_unb64(mac), self._mac(account_id, listing, payload))
            values = json.loads(_unb64(payload)) if valid else None
        except ValueError:  # binascii.Error and UnicodeDecodeError among them
            values = None
        if not isinstance(values, list) or not values:
            raise _bad_token()
        return values


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
