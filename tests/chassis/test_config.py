"""Settings outside development (issue 11 finding 5): a secret left unset, or at
its well-known development value, is a refusal to start naming the setting."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys

import pytest
from cryptography.fernet import Fernet
from pydantic import ValidationError

from services.chassis.config import OPTIONAL_SECRETS, Settings, secret_settings, setting_name
from services.domains.records import new_dkim_private_pem
from tests.conftest import REPO_ROOT

#: A value of its own for every secret setting.
PRODUCTION_SECRETS = {
    "database_url": "postgresql://mailplane:s3cret@db.internal:5432/mailplane",
    "db_role_password": secrets.token_urlsafe(16),
    "internal_token": secrets.token_urlsafe(32),
    "dkim_encryption_key": Fernet.generate_key().decode(),
    "shared_dkim_private_key": new_dkim_private_pem().decode(),
    "credential_hash_key": secrets.token_urlsafe(32),
    "page_token_key": secrets.token_urlsafe(32),  # issue 11's signed page tokens
    "webhook_secret_key": Fernet.generate_key().decode(),
}
REQUIRED = [name for name in secret_settings() if name not in OPTIONAL_SECRETS]


@pytest.fixture(autouse=True)
def no_mailplane_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in os.environ:
        if key.startswith("MAILPLANE_"):
            monkeypatch.delenv(key)


def production(**values: str) -> Settings:
    known = {k: v for k, v in values.items() if k in Settings.model_fields}
    return Settings(env="production", **known)  # type: ignore[arg-type]


def test_every_secret_setting_is_required_in_production() -> None:
    assert {"internal_token", "db_role_password", "credential_hash_key", "dkim_encryption_key"} <= (
        set(REQUIRED)
    )
    assert set(REQUIRED) <= set(PRODUCTION_SECRETS)  # a new secret needs a value above
    production(**PRODUCTION_SECRETS)  # every one set: accepted


@pytest.mark.parametrize("name", REQUIRED)
def test_a_missing_secret_is_refused_naming_its_setting(name: str) -> None:
    with pytest.raises(ValidationError, match=setting_name(name)):
        production(**{k: v for k, v in PRODUCTION_SECRETS.items() if k != name})


@pytest.mark.parametrize("name", [n for n in REQUIRED if Settings.model_fields[n].default])
def test_a_secret_at_its_development_default_is_refused(name: str) -> None:
    default = Settings.model_fields[name].default.get_secret_value()
    with pytest.raises(ValidationError, match=setting_name(name)):
        production(**{**PRODUCTION_SECRETS, name: default})


def test_development_needs_no_secrets() -> None:
    assert Settings().internal_token.get_secret_value() == "mailplane-dev-internal-token"


@pytest.mark.parametrize(
    "command",
    [["-m", "services.pods", "serve"], ["-m", "gateway"], ["-m", "deploy.local"]],
    ids=["service", "gateway", "launcher"],
)
def test_a_process_in_production_without_a_secret_exits_naming_it(
    command: list[str], tmp_path: object
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILPLANE_")}
    env.update({setting_name(k): v for k, v in PRODUCTION_SECRETS.items()})
    del env["MAILPLANE_INTERNAL_TOKEN"]
    env.update(MAILPLANE_ENV="production", MAILPLANE_STATE_DIR=str(tmp_path))
    done = subprocess.run(
        [sys.executable, *command],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "refuses to start" in done.stderr and "MAILPLANE_INTERNAL_TOKEN" in done.stderr
    assert "Traceback" not in done.stderr
