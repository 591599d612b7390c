"""``compose.yaml``: what can be checked with no compose plugin and no registry
here. Every command names a real module of the image; the environment is real
settings that production accepts, the secrets exactly the secret settings, with
values from ``deploy/compose-env.py``; and its one-shot migrate step and health
checks (``deploy.migrate``, ``deploy.probe``) are run for real."""

from __future__ import annotations

import asyncio
import importlib.util
import subprocess
import sys
from typing import Any

import pytest
import yaml

from services.chassis.config import OPTIONAL_SECRETS, Settings, secret_settings, setting_name
from tests.conftest import REPO_ROOT, free_port


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((REPO_ROOT / "compose.yaml").read_text())
    return document


def env_file() -> dict[str, str]:
    made = subprocess.run(
        [sys.executable, str(REPO_ROOT / "deploy/compose-env.py")],
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(line.split("=", 1) for line in made.stdout.splitlines())


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ``${NAME:?…}`` and ``${NAME:-default}`` for the forms compose.yaml uses."""
    while "${" in value:
        start = value.index("${")
        end = value.index("}", start)
        name, _, rest = value[start + 2 : end].partition(":")
        default = rest[1:] if rest.startswith("-") else None
        assert name in env or default is not None, name
        value = value[:start] + env.get(name, default or "") + value[end + 1 :]
    return value


def test_every_process_is_a_real_command_of_the_image(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        if name == "postgres":
            continue
        module = service["command"][0]
        assert importlib.util.find_spec(module) is not None, (name, module)
    commands = {" ".join(s.get("command", [])) for s in compose["services"].values()}
    assert {
        "services.pods serve",
        "services.messages smtp",
        "services.messages worker",
        "gateway",
        "deploy.migrate",
    } <= commands


def test_the_environment_is_production_settings_with_exactly_the_secret_settings(
    compose: dict[str, Any],
) -> None:
    env = env_file()
    environment = compose["services"]["gateway"]["environment"]
    values = {k: interpolate(str(v), env) for k, v in environment.items()}
    fields = {setting_name(n): n for n in Settings.model_fields}
    assert set(values) <= set(fields)
    secrets = {setting_name(n) for n in secret_settings() if n not in OPTIONAL_SECRETS}
    assert secrets <= set(values)
    settings = Settings(**{fields[k]: v for k, v in values.items()})  # type: ignore[arg-type]
    assert settings.env == "production" and settings.grpc_tls_client_auth


def test_services_wait_for_the_one_shot_steps_and_have_health_checks(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    for name in ("pods", "inboxes", "domains", "mailboxes", "messages", "gateway"):
        assert services[name]["depends_on"]["migrate"] == {
            "condition": "service_completed_successfully"
        }
        assert services[name]["healthcheck"]["test"][:4] == ["CMD", "python3", "-m", "deploy.probe"]
    assert services["migrate"]["restart"] == "no"


async def test_the_migrate_step_and_the_probe_run_for_real(
    settings: Settings, services: Any, admin_dsn: str
) -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "MAILPLANE_DATABASE_URL": admin_dsn,
        "MAILPLANE_DB_ROLE_PASSWORD": settings.db_role_password.get_secret_value(),
        "MAILPLANE_LOG_FORMAT": "json",
    }
    migrated = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "deploy.migrate"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
    )
    assert migrated.returncode == 0, migrated.stderr[-2000:]
    assert migrated.stderr.count(b'"migrated"') == 5

    async def probe(*args: str) -> int:
        # On a thread: the in-process services answer on this test's event loop.
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "deploy.probe", *args],
            cwd=REPO_ROOT,
            capture_output=True,
        )
        return done.returncode

    assert await probe("grpc", settings.pods_addr) == 0
    assert await probe("grpc", f"127.0.0.1:{free_port()}") == 1
