"""``python3 deploy/compose-env.py > .env``: fresh secrets for ``compose.yaml``, one
``NAME=value`` a line (the secret settings of ``services.chassis.config`` and the
PostgreSQL superuser's password). Standard library only, so it runs anywhere."""

import base64
import secrets
import subprocess

values = {
    "POSTGRES_PASSWORD": secrets.token_urlsafe(24),
    "MAILPLANE_DB_ROLE_PASSWORD": secrets.token_urlsafe(24),
    "MAILPLANE_INTERNAL_TOKEN": secrets.token_urlsafe(32),
    "MAILPLANE_CREDENTIAL_HASH_KEY": secrets.token_urlsafe(32),
    "MAILPLANE_PAGE_TOKEN_KEY": secrets.token_urlsafe(32),
    # Fernet keys: urlsafe base64 of 32 random bytes.
    "MAILPLANE_DKIM_ENCRYPTION_KEY": base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
    "MAILPLANE_WEBHOOK_SECRET_KEY": base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
    # The shared domain's DKIM key (RSA-2048, PKCS#8 PEM on one line, newlines as \n).
    "MAILPLANE_SHARED_DKIM_PRIVATE_KEY": subprocess.run(
        ["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        check=True,
        capture_output=True,
        text=True,
    )
    .stdout.strip()
    .replace("\n", "\\n"),
}
print("\n".join(f"{name}={value}" for name, value in values.items()))
