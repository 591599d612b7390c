"""IMAP/SMTP passwords: generated strong, stored only as a keyed hash, shown once
(DESIGN §4 Inboxes: an improvement on seed 003, which stores them in plain text).

The password is a machine secret of 192 random bits, not one a person chose, so a
slow hash buys nothing: NIST SP 800-63B §5.1.1.2 asks for a salted, costly hash for
*memorized* secrets because they are guessable; guessing 2**192 values is not
possible however fast each guess is. New hashes are HMAC-SHA-256 (RFC 2104) of the
password under a server-side key (``MAILPLANE_CREDENTIAL_HASH_KEY``), so a copy of
the table alone cannot even confirm a password; one costs ~1 µs instead of
argon2id's ~20 ms of CPU. The stored form is ``$hmac-sha256$`` + the digest in
unpadded base64 (43 characters), PHC-string-like, so it is told apart from the
argon2id PHC strings (``$argon2id$…``) written before: those keep verifying (with
argon2-cffi) until the inbox's next rotation, which writes a keyed hash.

Changing the key invalidates every keyed hash: rotate each inbox's credentials
after changing it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

#: The prefix of a keyed hash (HMAC-SHA-256), as stored.
KEYED_PREFIX = "$hmac-sha256$"
#: The prefix of an argon2id hash written before keyed hashes (verified only).
LEGACY_PREFIX = "$argon2id$"
#: Verifies legacy argon2id hashes; the parameters are read from each hash.
_LEGACY = PasswordHasher()


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


class CredentialHasher:
    """Hashes and verifies inbox passwords under the server-side key.

    Args:
        key: the HMAC key (``MAILPLANE_CREDENTIAL_HASH_KEY``, UTF-8 encoded);
            at least 32 bytes in production (RFC 2104 §3: no shorter than the
            hash's 32-byte output).
    """

    def __init__(self, key: bytes):
        if not key:
            raise ValueError("the credential hash key is empty; set MAILPLANE_CREDENTIAL_HASH_KEY")
        self._key = key
        #: Checked for an unknown login, so it takes as long as a wrong password.
        self._dummy = self.hash(new_password())

    def hash(self, password: str) -> str:
        """Returns the stored form of ``password``: ``$hmac-sha256$`` + 43 base64
        characters (HMAC-SHA-256 under the key, no padding)."""
        digest = hmac.digest(self._key, password.encode(), hashlib.sha256)
        return KEYED_PREFIX + base64.b64encode(digest).decode().rstrip("=")

    async def matches(self, stored: str | None, password: str) -> bool:
        """Whether ``password`` matches the stored hash, compared in constant time
        (``hmac.compare_digest``). With no hash (an unknown login) a dummy keyed
        hash is checked, so the answer takes as long as for a wrong password.

        Args:
            stored: a keyed hash, a legacy argon2id PHC string, or ``None``.
            password: what the mail client sent.

        Returns:
            ``True`` only for a stored hash of exactly ``password``. A legacy
            argon2id hash is verified off the event loop (~20 ms of CPU).
        """
        if stored is not None and stored.startswith(LEGACY_PREFIX):
            return await asyncio.to_thread(_legacy_matches, stored, password)
        expected = stored if stored is not None else self._dummy
        return hmac.compare_digest(self.hash(password).encode(), expected.encode()) and (
            stored is not None
        )


def _legacy_matches(stored: str, password: str) -> bool:
    try:
        return _LEGACY.verify(stored, password)
    except (VerificationError, InvalidHashError):
        return False
