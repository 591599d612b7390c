"""``python -m deploy.migrate``: every service's migrations, each into its own schema
under its own role (``services.chassis.db.migrate``), with ``MAILPLANE_DATABASE_URL``.

The one-shot step of ``compose.yaml``; a Kubernetes deployment runs the same per
service (``python -m services.<svc> migrate``, one Job each).
"""

from __future__ import annotations

import asyncio

from services.chassis import config, db, logs
from services.domains import server as domains_server
from services.inboxes import server as inboxes_server
from services.mailboxes import server as mailboxes_server
from services.messages import server as messages_server
from services.pods import server as pods_server

_log = logs.get_logger("mailplane.migrate")

#: Every service and its migrations folder, in the launcher's order.
MIGRATIONS = (
    ("pods", pods_server.MIGRATIONS),
    ("inboxes", inboxes_server.MIGRATIONS),
    ("domains", domains_server.MIGRATIONS),
    ("mailboxes", mailboxes_server.MIGRATIONS),
    ("messages", messages_server.MIGRATIONS),
)


def main() -> None:
    """Applies every service's new migrations; exits non-zero on the first failure."""
    settings = config.from_environment()
    logs.configure(settings.log_level, settings.log_format)

    async def run() -> None:
        for name, folder in MIGRATIONS:
            applied = await db.migrate(
                settings.database_url.get_secret_value(),
                name,
                settings.db_role_password.get_secret_value(),
                folder,
            )
            _log.info("migrated", service=name, applied=applied)

    asyncio.run(run())


if __name__ == "__main__":
    main()
