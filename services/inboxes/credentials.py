"""IMAP/SMTP passwords: generated strong, stored only as argon2id hashes
(argon2-cffi), shown once (DESIGN §4 Inboxes: an improvement on seed 003, which
stores them in plain text)."""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

#: OWASP's argon2id minimum (19 MiB, 2 passes, 1 lane): ~20 ms a hash, so a
#: burst of creates stays affordable on a small machine.
_HASHER = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)
_DUMMY_HASH = _HASHER.hash(secrets.token_urlsafe(24))


@dataclass(frozen=True)
class MailServers:
    """Where mail clients connect: IMAPS (TLS) and SMTP submission (STARTTLS)."""

    imap_host: str
    imap_port: int
    smtp_host: str
    smtp_port: int


def new_password() -> str:
    """Returns a fresh password: 192 random bits, URL-safe base64 (32 characters)."""
    return secrets.token_urlsafe(24)


async def hash_password(password: str) -> str:
    """Returns the argon2id hash (PHC string) of ``password``, computed off the event loop."""
    return await asyncio.to_thread(_HASHER.hash, password)


async def password_matches(password_hash: str | None, password: str) -> bool:
    """Whether ``password`` matches ``password_hash`` (in constant time). With no
    hash, a dummy one is checked so an unknown login takes as long as a wrong one."""

    def check() -> bool:
        try:
            return _HASHER.verify(password_hash or _DUMMY_HASH, password) and bool(password_hash)
        except (VerificationError, InvalidHashError):
            return False

    return await asyncio.to_thread(check)
