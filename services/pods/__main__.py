"""``python -m services.pods serve|migrate``: run or migrate the pods service."""

from __future__ import annotations

import argparse
import asyncio

from services.chassis import db, logs
from services.chassis.config import Settings
from services.chassis.server import run_until_signal
from services.pods.server import MIGRATIONS, NAME, build


async def _serve(settings: Settings) -> None:
    process = await build(settings)
    await run_until_signal(process.grpc, settings.bind_host, settings.port_of(NAME), process.close)


async def _migrate(settings: Settings) -> None:
    applied = await db.migrate(
        settings.database_url.get_secret_value(),
        NAME,
        settings.db_role_password.get_secret_value(),
        MIGRATIONS,
    )
    logs.get_logger("mailplane.migrate").info("migrated", service=NAME, applied=applied)


def main() -> None:
    """Parses the command and runs it with settings from the environment."""
    parser = argparse.ArgumentParser(prog="python -m services.pods")
    parser.add_argument("command", choices=["serve", "migrate"])
    command = parser.parse_args().command
    settings = Settings()
    logs.configure(settings.log_level, settings.log_format)
    asyncio.run(_serve(settings) if command == "serve" else _migrate(settings))


if __name__ == "__main__":
    main()
