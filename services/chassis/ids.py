"""Prefixed, time-ordered resource IDs (DESIGN §4): ``pod_01JD…``.

The suffix is a ULID (48-bit millisecond timestamp + 80 random bits, Crockford
base32), so IDs sort by creation time and never collide in practice.
"""

from __future__ import annotations

import re

from ulid import ULID

PREFIXES = (
    "acct",
    "pod",
    "dom",
    "inb",
    "mbx",
    "key",
    "fld",
    "rule",
    "msg",
    "thr",
    "att",
    "evt",
    "whk",
    "whd",
    "drf",
)


def new_id(prefix: str) -> str:
    """Returns a new ID, e.g. ``new_id("pod") == "pod_01JD5B6Q…"`` (26 ULID chars)."""
    if prefix not in PREFIXES:
        raise ValueError(f"unknown ID prefix {prefix}")
    return f"{prefix}_{ULID()}"


def looks_like_id(prefix: str, value: str) -> bool:
    """Whether ``value`` has the shape of an ID with ``prefix`` (any letter case)."""
    return _shape(prefix).fullmatch(value) is not None


def _shape(prefix: str) -> re.Pattern[str]:
    return re.compile(rf"{prefix}_[0-9A-HJKMNP-TV-Z]{{26}}", re.IGNORECASE)
