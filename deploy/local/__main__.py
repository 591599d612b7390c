"""``python -m deploy.local`` (``make run``): the whole suite on one machine.

1. Secrets: ``.mailplane/settings.env`` is made on first start (service credential,
   database role password, DKIM encryption key, credential hash key, page-token
   key) and kept.
2. Database: ``MAILPLANE_DATABASE_URL`` if set, else an embedded PostgreSQL
   (pgserver) under ``.mailplane/pgdata``, with a ``mailplane`` database.
3. Every service's migrations, each into its own schema under its own role.
4. The services and the gateway as child processes, each with the same settings.
5. The development account, created once; its key is kept in
   ``.mailplane/dev-api-key`` and printed with the URL.

Ctrl-C (or SIGTERM) stops every child gracefully, then the embedded database.
Running it again keeps the data and the key.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path
from typing import Any

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc
from mailplane.pods.v1 import pods_pb2, pods_pb2_grpc

from deploy import settings as local_settings
from services.chassis import db, logs
from services.chassis.auth import INTERNAL_TOKEN_METADATA
from services.chassis.config import Settings
from services.chassis.rpc import open_channel
from services.domains import server as domains_server
from services.inboxes import server as inboxes_server
from services.mailboxes import server as mailboxes_server
from services.pods import server as pods_server

_log = logs.get_logger("mailplane.launcher")

#: Each service: its name, its migrations folder, its ``python -m`` module.
SERVICES = (
    ("pods", pods_server.MIGRATIONS, "services.pods"),
    ("inboxes", inboxes_server.MIGRATIONS, "services.inboxes"),
    ("domains", domains_server.MIGRATIONS, "services.domains"),
    ("mailboxes", mailboxes_server.MIGRATIONS, "services.mailboxes"),
)
DEV_KEY_FILE = "dev-api-key"
START_TIMEOUT_SECONDS = 60.0


def _database_url(state: Path, env: dict[str, str]) -> tuple[str, Any]:
    """Returns the administrative DSN and the embedded server (or ``None``)."""
    if "MAILPLANE_DATABASE_URL" in os.environ:
        return os.environ["MAILPLANE_DATABASE_URL"], None
    import pgserver  # imported here: only the embedded case needs it

    server = pgserver.get_server(state / "pgdata", cleanup_mode="stop")
    server.psql("SELECT 1;")
    exists = server.psql("SELECT 1 FROM pg_database WHERE datname = 'mailplane';")
    if "(1 row)" not in exists:
        server.psql("CREATE DATABASE mailplane;")
    uri: str = server.get_uri()
    return uri.replace("/postgres?", "/mailplane?"), server


async def _wait_serving(address: str, deadline: float) -> None:
    loop = asyncio.get_running_loop()
    async with open_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            if loop.time() > deadline:
                raise TimeoutError(f"{address} did not become SERVING")
            await asyncio.sleep(0.2)


async def _wait_http(url: str, deadline: float) -> None:
    loop = asyncio.get_running_loop()
    async with httpx.AsyncClient() as client:
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(url, timeout=1.0)).status_code == 200:
                    return
            if loop.time() > deadline:
                raise TimeoutError(f"{url} did not answer")
            await asyncio.sleep(0.2)


async def _dev_api_key(settings: Settings, state: Path) -> str:
    """Returns the development key, creating the account on first start (or when
    the kept key no longer authenticates, e.g. after the data was wiped)."""
    path = state / DEV_KEY_FILE
    metadata = ((INTERNAL_TOKEN_METADATA, settings.internal_token.get_secret_value()),)
    async with open_channel(settings.pods_addr) as channel:
        if path.exists():
            kept = path.read_text().strip()
            try:
                await pods_pb2_grpc.ApiKeyServiceStub(channel).AuthenticateApiKey(
                    pods_pb2.AuthenticateApiKeyRequest(secret=kept), metadata=metadata, timeout=5
                )
                return kept
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.UNAUTHENTICATED:
                    raise
        created = await pods_pb2_grpc.AccountServiceStub(channel).CreateAccount(
            pods_pb2.CreateAccountRequest(name="Development", plan=pods_pb2.PLAN_GROWTH),
            metadata=metadata,
            timeout=5,
        )
    path.write_text(created.api_key + "\n")
    path.chmod(0o600)
    (state / "dev-account-id").write_text(created.account.id + "\n")
    return created.api_key


async def _spawn(env: dict[str, str], *module_args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(sys.executable, "-m", *module_args, env=env)


async def _run(state: Path) -> int:
    file_values = local_settings.ensure_local_secrets(state)
    admin_dsn, embedded = _database_url(state, file_values)
    if embedded is not None:
        local_settings.set_env_value(state, "MAILPLANE_DATABASE_URL", admin_dsn)
    env = {**file_values, **os.environ, "MAILPLANE_DATABASE_URL": admin_dsn}
    os.environ.update(env)
    settings = Settings()
    children: list[asyncio.subprocess.Process] = []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        for name, migrations, _ in SERVICES:
            applied = await db.migrate(
                admin_dsn, name, settings.db_role_password.get_secret_value(), migrations
            )
            _log.info("migrated", service=name, applied=applied)
        for _, _, module in SERVICES:
            children.append(await _spawn(env, module, "serve"))
        children.append(await _spawn(env, "gateway"))
        deadline = loop.time() + START_TIMEOUT_SECONDS
        for name, _, _ in SERVICES:
            await _wait_serving(getattr(settings, f"{name}_addr"), deadline)
        base_url = f"http://{settings.bind_host}:{settings.gateway_port}"
        await _wait_http(f"{base_url}/healthz", deadline)
        key = await _dev_api_key(settings, state)
        sys.stdout.write(
            "\nMailplane is up.\n"
            f"  REST:    {base_url}  (docs: {base_url}/docs)\n"
            f"  gRPC:    pods {settings.pods_addr}, inboxes {settings.inboxes_addr}, "
            f"domains {settings.domains_addr}, mailboxes {settings.mailboxes_addr}\n"
            f"  API key: {key}  (kept in {state / DEV_KEY_FILE})\n"
            "Ctrl-C stops everything.\n\n"
        )
        sys.stdout.flush()
        while not stop.is_set():
            if any(child.returncode is not None for child in children):
                _log.error("child_exited", codes=[c.returncode for c in children])
                return 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
        return 0
    finally:
        for child in children:
            if child.returncode is None:
                child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                await asyncio.wait_for(child.wait(), 15)
            except TimeoutError:
                child.kill()
                await child.wait()
        if embedded is not None:
            embedded.cleanup()
        _log.info("stopped")


def main() -> None:
    """Runs the suite until Ctrl-C; exits non-zero if a process failed."""
    settings = Settings()
    logs.configure(settings.log_level, settings.log_format)
    state = local_settings.state_dir()
    sys.exit(asyncio.run(_run(state)))


if __name__ == "__main__":
    main()
