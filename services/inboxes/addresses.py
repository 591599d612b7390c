"""Usernames: validation, generation and the fallback order (seed 003; DESIGN §4
Inboxes). Pure functions, no I/O."""

from __future__ import annotations

import re
import secrets
import string
import unicodedata

from services.chassis.addresses import MAX_LOCAL_PART, check_local_part, is_reserved
from services.chassis.errors import MailplaneError, invalid_argument

MAX_USERNAME = MAX_LOCAL_PART
#: Fallback suffixes after the requested username: ``username1`` … ``username99``.
FALLBACKS = 99
_RANDOM_ALPHABET = string.ascii_lowercase + string.digits


def check_username(raw: str) -> str:
    """Returns ``raw`` lower-cased if it is a valid, unreserved username (the rule
    of ``chassis.addresses.check_local_part``). Raises ``invalid_argument``
    naming ``username``."""
    if not raw.strip():
        raise invalid_argument("username", "is empty; omit it to have one generated.")
    return check_local_part(raw, "username")


def generated_username(*sources: str | None) -> str:
    """Returns a username made from the first source that yields a valid one
    (e.g. the display name, then the pod's name), else ``inbox-`` and 8 random
    characters. ``"Support Bot"`` → ``support.bot``."""
    for source in sources:
        if not source:
            continue
        ascii_text = unicodedata.normalize("NFKD", source).encode("ascii", "ignore").decode()
        slug = re.sub(r"[^a-z0-9]+", ".", ascii_text.lower()).strip(".")[: MAX_USERNAME - 2]
        slug = slug.rstrip(".")
        if slug and not is_reserved(slug):
            return slug
    return "inbox-" + "".join(secrets.choice(_RANDOM_ALPHABET) for _ in range(8))


def candidates(username: str, strict: bool) -> list[str]:
    """Returns the usernames to try in order: ``username``, then (unless strict)
    ``username1`` … ``username99``, each cut to fit 64 characters."""
    if strict:
        return [username]
    return [username] + [
        f"{username[: MAX_USERNAME - len(str(n))]}{n}" for n in range(1, FALLBACKS + 1)
    ]


def username_taken(email: str, strict: bool) -> MailplaneError:
    """Returns the ``username_taken`` error for ``email`` (strict, or every fallback taken)."""
    if strict:
        message = f"{email} is taken; choose another username or retry without strict=true."
    else:
        message = f"{email} and its fallbacks 1-{FALLBACKS} are all taken; choose another username."
    return MailplaneError("username_taken", message, {"email": email})
