"""DKIM signing where the private keys live (DESIGN §7.5): the messages service
sends the SHA-256 digest of a canonicalized header block, this module answers the
RSASSA-PKCS1-v1_5 signature (RFC 6376 §3.7, RFC 8017 §8.2) made with OpenSSL
through ``cryptography``. A key never leaves the process.

Loading a key is the slow part (Fernet decryption, PEM parsing and OpenSSL's RSA
key check: milliseconds, against about 0.4 ms for a signature), so loaded keys are
kept per domain ID. A domain's key never changes while the domain exists, and a
deleted and re-created domain has a new ID, so the new key is the one used.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict

from cryptography.fernet import Fernet
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.hazmat.primitives.hashes import SHA256

from services.domains import records

#: The length of a SHA-256 digest, in bytes.
DIGEST_BYTES = 32
#: Loaded custom-domain keys kept per process (each about 2 KB of OpenSSL state).
MAX_CACHED_KEYS = 1024


def sign_digest(key: rsa.RSAPrivateKey, digest: bytes) -> bytes:
    """Signs a SHA-256 digest: RSASSA-PKCS1-v1_5 (RFC 8017 §8.2), as DKIM's
    ``rsa-sha256`` needs (RFC 6376 §3.3.1).

    Args:
        key: the private key.
        digest: 32 bytes.

    Returns:
        The signature, as many bytes as the modulus (256 for RSA-2048).
    """
    return key.sign(digest, padding.PKCS1v15(), Prehashed(SHA256()))


class DkimKeyring:
    """The shared domain's key and the custom domains' keys, loaded once.

    Args:
        shared_key_pem: the shared domain's private key (PEM; ``\\n`` escapes allowed).
        cipher: decrypts the custom domains' stored keys.

    Raises:
        ValueError: ``shared_key_pem`` is not an unencrypted RSA private key.
    """

    def __init__(self, shared_key_pem: str, cipher: Fernet):
        self.shared_key = records.load_dkim_private_key(shared_key_pem)
        self._cipher = cipher
        self._keys: OrderedDict[str, rsa.RSAPrivateKey] = OrderedDict()

    def shared_txt(self) -> str:
        """The shared domain's DKIM key record value (``v=DKIM1; k=rsa; p=…``)."""
        return records.dkim_txt(self.shared_key.public_key())

    def cached(self, domain_id: str) -> rsa.RSAPrivateKey | None:
        """Returns the loaded key of a domain, if this process has it."""
        key = self._keys.get(domain_id)
        if key is not None:
            self._keys.move_to_end(domain_id)
        return key

    async def load(self, domain_id: str, encrypted: bytes) -> rsa.RSAPrivateKey:
        """Decrypts and loads a domain's key (off the event loop) and keeps it,
        dropping the least recently used beyond ``MAX_CACHED_KEYS``.

        Raises:
            cryptography.fernet.InvalidToken: the stored key was encrypted under
                another ``MAILPLANE_DKIM_ENCRYPTION_KEY``.
        """
        key = await asyncio.to_thread(self._decrypt, encrypted)
        self._keys[domain_id] = key
        self._keys.move_to_end(domain_id)
        while len(self._keys) > MAX_CACHED_KEYS:
            self._keys.popitem(last=False)
        return key

    def _decrypt(self, encrypted: bytes) -> rsa.RSAPrivateKey:
        return records.load_dkim_private_key(self._cipher.decrypt(encrypted))
