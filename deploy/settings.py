"""Settings for the tools that run from a checkout: the launcher and the CLI.

The local launcher keeps its generated secrets in ``.mailplane/settings.env``
(``MAILPLANE_INTERNAL_TOKEN``, ``MAILPLANE_DB_ROLE_PASSWORD``,
``MAILPLANE_DKIM_ENCRYPTION_KEY``, ``MAILPLANE_CREDENTIAL_HASH_KEY``,
``MAILPLANE_WEBHOOK_SECRET_KEY``, ``MAILPLANE_PAGE_TOKEN_KEY``, and the embedded database's
``MAILPLANE_DATABASE_URL``); ``mailplane-admin`` reads the same file, so run from
the checkout it needs no flags or variables. Variables set in the environment win
over the file.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from cryptography.fernet import Fernet

from services.chassis import config
from services.chassis.config import Settings

SETTINGS_FILE = "settings.env"


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
