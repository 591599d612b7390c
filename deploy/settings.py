"""Settings for the tools that run from a checkout: the launcher and the CLI.

The local launcher keeps its generated secrets in ``.mailplane/settings.env``
(``MAILPLANE_INTERNAL_TOKEN``, ``MAILPLANE_DB_ROLE_PASSWORD``,
``MAILPLANE_DKIM_ENCRYPTION_KEY``, ``MAILPLANE_CREDENTIAL_HASH_KEY``,
``MAILPLANE_WEBHOOK_SECRET_KEY``, ``MAILPLANE_PAGE_TOKEN_KEY``,
``MAILPLANE_SHARED_DKIM_PRIVATE_KEY`` (the shared domain's DKIM key, PEM on one line
with ``\\n`` escapes), and the embedded database's ``MAILPLANE_DATABASE_URL``);
``mailplane-admin`` reads the same file, so run from the checkout it needs no flags
or variables. Variables set in the environment win over the file.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from cryptography.fernet import Fernet

from services.chassis import config
from services.chassis.config import Settings
from services.domains import records

SETTINGS_FILE = "settings.env"
#: The shared domain's DKIM TXT record to publish, written by the launcher.
SHARED_DKIM_FILE = "shared-dkim.txt"


def state_dir() -> Path:
    """Returns the launcher's state folder (``MAILPLANE_STATE_DIR``, default ``.mailplane``)."""
    return Path(os.environ.get("MAILPLANE_STATE_DIR", ".mailplane"))


def load() -> Settings:
    """Returns the settings: the environment, then ``<state dir>/settings.env``."""
    path = state_dir() / SETTINGS_FILE
    return config.from_environment(_env_file=path if path.exists() else None)


#: The secrets the launcher generates once and keeps, and how each is made.
LOCAL_SECRETS = {
    "MAILPLANE_INTERNAL_TOKEN": lambda: secrets.token_urlsafe(32),
    "MAILPLANE_DB_ROLE_PASSWORD": lambda: secrets.token_urlsafe(24),
    "MAILPLANE_DKIM_ENCRYPTION_KEY": lambda: Fernet.generate_key().decode(),
    "MAILPLANE_CREDENTIAL_HASH_KEY": lambda: secrets.token_urlsafe(32),
    "MAILPLANE_WEBHOOK_SECRET_KEY": lambda: Fernet.generate_key().decode(),
    "MAILPLANE_PAGE_TOKEN_KEY": lambda: secrets.token_urlsafe(32),
    # RSA-2048 (about 0.1 s, once); settings.env holds one line a value.
    "MAILPLANE_SHARED_DKIM_PRIVATE_KEY": lambda: (
        records.new_dkim_private_pem().decode().strip().replace("\n", "\\n")
    ),
}


def ensure_local_secrets(folder: Path) -> dict[str, str]:
    """Adds any missing secret to ``settings.env`` (fresh random values, kept across
    runs); returns the file's values."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / SETTINGS_FILE
    values = read_env_file(path) if path.exists() else {}
    for key, make in LOCAL_SECRETS.items():
        if key not in values:
            set_env_value(folder, key, make())
    return read_env_file(path)


def read_env_file(path: Path) -> dict[str, str]:
    """Parses ``KEY=value`` lines."""
    values = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not key.startswith("#"):
            values[key.strip()] = value.strip()
    return values


def set_env_value(folder: Path, key: str, value: str) -> None:
    """Writes ``key=value`` into ``settings.env``, replacing an earlier value."""
    path = folder / SETTINGS_FILE
    values = read_env_file(path) if path.exists() else {}
    values[key] = value
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    path.chmod(0o600)


def write_shared_dkim_record(folder: Path, settings: Settings) -> tuple[str, str]:
    """Writes the DNS record that publishes the shared domain's DKIM public key to
    ``<folder>/shared-dkim.txt`` (a zone-file line) and returns its name and value.

    Args:
        folder: the launcher's state folder.
        settings: settings with ``shared_dkim_private_key`` set.

    Returns:
        ``("mailplane._domainkey.<shared domain>", "v=DKIM1; k=rsa; p=…")``.

    Raises:
        ValueError: the key is unset or not an RSA private key in PEM.
    """
    if settings.shared_dkim_private_key is None:
        raise ValueError("MAILPLANE_SHARED_DKIM_PRIVATE_KEY is unset")
    key = records.load_dkim_private_key(settings.shared_dkim_private_key.get_secret_value())
    name = records.dkim_record_name(settings.shared_domain)
    value = records.dkim_txt(key.public_key())
    # A zone file's TXT strings hold at most 255 characters each (RFC 1035 §3.3.14).
    strings = " ".join(f'"{value[i : i + 255]}"' for i in range(0, len(value), 255))
    (folder / SHARED_DKIM_FILE).write_text(f"{name}. IN TXT {strings}\n")
    return name, value
