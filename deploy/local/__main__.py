"""``python -m deploy.local`` (``make run``): the whole suite on one machine.

1. Secrets: ``.mailplane/settings.env`` is made on first start (service credential,
   database role password, DKIM encryption key, credential hash key, page-token
   key, webhook secret key, the shared domain's DKIM private key) and kept.
   Webhooks may target loopback and private addresses
   (``MAILPLANE_WEBHOOK_ALLOW_PRIVATE=true``), so a receiver on this machine works.
   A self-signed certificate for the TLS listeners (submission, IMAP) is made in
   ``.mailplane/`` (``MAILPLANE_TLS_CERT``, ``MAILPLANE_TLS_KEY``), and the
   credentials inboxes hand out name the local IMAP and submission listeners
   (``MAILPLANE_IMAP_HOST``/``PORT`` from ``MAILPLANE_IMAP_ADDR``), so they work as
   handed out.
2. Database: ``MAILPLANE_DATABASE_URL`` if set, else an embedded PostgreSQL
   (pgserver) under ``.mailplane/pgdata``, with a ``mailplane`` database.
3. Every service's migrations, each into its own schema under its own role.
4. The services and the gateway as child processes, each with the same settings,
   supervised: one that exits is logged and started again after a pause that
   doubles from ``RESTART_DELAY_SECONDS`` to ``RESTART_DELAY_MAX_SECONDS`` (back to
   the start once it has stayed up ``STABLE_SECONDS``), while the others keep
   serving.
5. Metrics: with ``MAILPLANE_METRICS_PORT=N`` set, each child serves ``/metrics`` on a
   port of its own, ``N``, ``N+1`` … in the order of the banner's list (0, the
   default: none).
6. The development account, created once; its key is kept in
   ``.mailplane/dev-api-key`` and printed with the URL.
6. The shared domain's DKIM key (a secret of step 1): the TXT record to publish at
   ``mailplane._domainkey.<shared domain>`` is logged at start and written to
   ``.mailplane/shared-dkim.txt`` as a zone-file line.

Each child writes to its own pipe and the launcher relays whole lines to its
stderr, one write a line, so the lines of five processes never run together
(a log line larger than a pipe's atomic write would, on a shared stream).

Ctrl-C (or SIGTERM) stops every child gracefully, then the embedded database.
Running it again keeps the data and the key.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc
from mailplane.pods.v1 import pods_pb2, pods_pb2_grpc

from deploy import settings as local_settings
from deploy.tls import ensure_dev_certificate
from services.chassis import config, db, logs
from services.chassis.auth import INTERNAL_TOKEN_METADATA
from services.chassis.config import Settings
from services.chassis.rpc import open_channel
from services.domains import server as domains_server
from services.inboxes import server as inboxes_server
from services.mailboxes import server as mailboxes_server
from services.messages import server as messages_server
from services.pods import server as pods_server

_log = logs.get_logger("mailplane.launcher")

#: Each service: its name, its migrations folder, its ``python -m`` module.
SERVICES = (
    ("pods", pods_server.MIGRATIONS, "services.pods"),
    ("inboxes", inboxes_server.MIGRATIONS, "services.inboxes"),
    ("domains", domains_server.MIGRATIONS, "services.domains"),
    ("mailboxes", mailboxes_server.MIGRATIONS, "services.mailboxes"),
    ("messages", messages_server.MIGRATIONS, "services.messages"),
)
#: The messages service's other processes (DESIGN §7.1): ``python -m services.messages …``.
MAIL_PROCESSES = ("smtp", "imap", "worker")
DEV_KEY_FILE = "dev-api-key"
#: Settings of a development machine, unless the environment or the file says otherwise:
#: webhooks may target a receiver on this machine (refused in production, DESIGN §7.6).
DEVELOPMENT = {"MAILPLANE_WEBHOOK_ALLOW_PRIVATE": "true"}
START_TIMEOUT_SECONDS = 60.0
#: Pause before the first restart of a child that exited, in seconds; it doubles
#: with each restart up to ``RESTART_DELAY_MAX_SECONDS``.
RESTART_DELAY_SECONDS = 0.5
RESTART_DELAY_MAX_SECONDS = 10.0
#: A child up this long, in seconds, counts as healthy: its next restart waits
#: ``RESTART_DELAY_SECONDS`` again.
STABLE_SECONDS = 30.0
#: Seconds a child has to stop after SIGTERM before it is killed.
STOP_GRACE_SECONDS = 15.0
#: The longest line relayed whole, in bytes; a longer one is relayed in pieces.
LINE_LIMIT_BYTES = 1 << 20


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


def _stop_embedded(server: Any) -> None:
    """Stops the embedded PostgreSQL, even one started again behind pgserver's
    back (an operator's ``pg_ctl start``), which pgserver's own cleanup skips as
    it only stops the postmaster it started."""
    import pgserver

    server.cleanup()
    if (server.pgdata / "postmaster.pid").exists():
        with contextlib.suppress(subprocess.CalledProcessError):
            pg_ctl: Any = pgserver.pg_ctl  # type: ignore[attr-defined]  # made at import
            pg_ctl(["-w", "stop"], pgdata=server.pgdata, user=server.system_user)


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


async def _wait_tcp(address: str, deadline: float) -> None:
    """Waits until ``host:port`` accepts a TCP connection."""
    loop = asyncio.get_running_loop()
    host, port = address.rsplit(":", 1)
    while True:
        try:
            _, writer = await asyncio.open_connection(host, int(port))
        except OSError:
            if loop.time() > deadline:
                raise TimeoutError(f"{address} did not accept connections") from None
            await asyncio.sleep(0.2)
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return


def _mail_client_settings(state: Path, env: dict[str, str]) -> dict[str, str]:
    """The development certificate and the IMAP and submission endpoints that credentials name,
    unless the environment or the file sets them (DESIGN §7.1)."""
    imap_addr = env.get("MAILPLANE_IMAP_ADDR", Settings.model_fields["imap_addr"].default)
    imap_host, imap_port = imap_addr.rsplit(":", 1)
    submission = env.get(
        "MAILPLANE_SUBMISSION_ADDR", Settings.model_fields["submission_addr"].default
    )
    smtp_host, smtp_port = submission.rsplit(":", 1)
    cert, key = ensure_dev_certificate(state / "tls", [imap_host])
    wanted = {
        "MAILPLANE_TLS_CERT": str(cert.resolve()),
        "MAILPLANE_TLS_KEY": str(key.resolve()),
        "MAILPLANE_IMAP_HOST": imap_host,
        "MAILPLANE_IMAP_PORT": imap_port,
        "MAILPLANE_SMTP_HOST": smtp_host,
        "MAILPLANE_SMTP_PORT": smtp_port,
    }
    return {k: v for k, v in wanted.items() if k not in env}


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


async def _relay(stream: asyncio.StreamReader, out: BinaryIO) -> None:
    """Copies ``stream`` to ``out`` a whole line at a time until end of file.

    Every relay runs on the launcher's one event loop and writes each line with
    one call, so no two lines ever share a line of ``out``.
    """
    while True:
        try:
            line = await stream.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:  # end of file
            line = exc.partial + b"\n" if exc.partial else b""
        except asyncio.LimitOverrunError as exc:  # a line beyond LINE_LIMIT_BYTES
            line = await stream.readexactly(exc.consumed) + b"\n"
        if not line:
            return
        out.write(line)
        out.flush()


class Child:
    """One supervised child process: ``python <args>``.

    ``supervise()`` runs it, relays its output and starts it again whenever it
    exits, until ``stop()``.

    Args:
        name: how the launcher's log lines name it (``pods``, ``gateway``).
        args: the interpreter's arguments (``-m``, ``services.pods``, ``serve``).
        env: its environment.
        out: where its output lines are relayed (the launcher's stderr).
    """

    def __init__(self, name: str, args: Sequence[str], env: dict[str, str], out: BinaryIO):
        self.name = name
        self._args = args
        self.env = env
        self._out = out
        self.process: asyncio.subprocess.Process | None = None
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Starts supervising (the first process is spawned at once)."""
        self._task = asyncio.create_task(self.supervise())

    async def supervise(self) -> None:
        """Runs the child until ``stop()``, restarting it with backoff when it exits."""
        loop = asyncio.get_running_loop()
        delay = RESTART_DELAY_SECONDS
        while not self._stopping.is_set():
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                *self._args,
                env=self.env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                limit=LINE_LIMIT_BYTES,
                # Its own session: a terminal's Ctrl-C reaches the launcher only,
                # which stops the children in order.
                start_new_session=True,
            )
            started = loop.time()
            assert self.process.stdout is not None
            await _relay(self.process.stdout, self._out)
            code = await self.process.wait()
            if self._stopping.is_set():
                return
            if loop.time() - started >= STABLE_SECONDS:
                delay = RESTART_DELAY_SECONDS
            _log.warning("child_exited", process=self.name, code=code, restart_in_seconds=delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
            delay = min(delay * 2, RESTART_DELAY_MAX_SECONDS)
            if not self._stopping.is_set():
                _log.info("child_restarting", process=self.name)

    def signal(self, sig: int) -> None:
        """Sends ``sig`` to the running process, if any (it is not restarted
        unless it exits)."""
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(sig)

    async def stop(self) -> None:
        """Stops supervising and the process: SIGTERM, then SIGKILL after
        ``STOP_GRACE_SECONDS``; returns once it has exited and its output is relayed."""
        self._stopping.set()
        self.signal(signal.SIGTERM)
        if self._task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._task), STOP_GRACE_SECONDS)
        except TimeoutError:
            self.signal(signal.SIGKILL)
            await self._task


async def _run(state: Path) -> int:
    file_values = local_settings.ensure_local_secrets(state)
    admin_dsn, embedded = _database_url(state, file_values)
    if embedded is not None:
        local_settings.set_env_value(state, "MAILPLANE_DATABASE_URL", admin_dsn)
    env = {
        **DEVELOPMENT,
        **file_values,
        **os.environ,
        "MAILPLANE_DATABASE_URL": admin_dsn,
    }
    env.update(_mail_client_settings(state, env))
    os.environ.update(env)
    settings = Settings()
    dkim_name, dkim_value = local_settings.write_shared_dkim_record(state, settings)
    _log.info("shared_dkim_record", name=dkim_name, type="TXT", value=dkim_value)
    out = sys.stderr.buffer
    if settings.log_format == "auto" and sys.stderr.isatty():
        env["MAILPLANE_LOG_FORMAT"] = "console"  # the children write to pipes, not the TTY
    children = [
        *(Child(name, ("-m", module, "serve"), env, out) for name, _, module in SERVICES),
        *(
            Child(f"messages-{process}", ("-m", "services.messages", process), env, out)
            for process in MAIL_PROCESSES
        ),
        Child("gateway", ("-m", "gateway"), env, out),
    ]
    metrics_ports: dict[str, int] = {}
    if settings.metrics_port:
        for offset, child in enumerate(children):
            metrics_ports[child.name] = settings.metrics_port + offset
            child.env = {**env, "MAILPLANE_METRICS_PORT": str(metrics_ports[child.name])}
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
        for child in children:
            child.start()
        deadline = loop.time() + START_TIMEOUT_SECONDS
        base_url = f"http://{settings.bind_host}:{settings.gateway_port}"
        addresses = [getattr(settings, f"{name}_addr") for name, _, _ in SERVICES]
        starting = asyncio.gather(
            *(_wait_serving(address, deadline) for address in addresses),
            _wait_http(f"{base_url}/healthz", deadline),
            _wait_tcp(settings.imap_addr, deadline),
        )
        stopped = asyncio.ensure_future(stop.wait())
        await asyncio.wait((starting, stopped), return_when=asyncio.FIRST_COMPLETED)
        if stop.is_set():
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await starting
            return 0
        stopped.cancel()
        await starting
        key = await _dev_api_key(settings, state)
        sys.stdout.write(
            "\nMailplane is up.\n"
            f"  REST:    {base_url}  (docs: {base_url}/docs)\n"
            f"  gRPC:    pods {settings.pods_addr}, inboxes {settings.inboxes_addr}, "
            f"domains {settings.domains_addr}, mailboxes {settings.mailboxes_addr}, "
            f"messages {settings.messages_addr}\n"
            f"  SMTP:    {settings.smtp_inbound_addr}  (MX: inbound mail for the shared domain "
            f"{settings.shared_domain} and verified custom domains)\n"
            f"  Submit:  {settings.submission_addr} (STARTTLS), {settings.submissions_addr} "
            "(TLS): an inbox's address and password\n"
            f"  IMAP:    {settings.imap_addr}  (implicit TLS; self-signed certificate "
            f"{settings.tls_cert})\n"
            + (
                "  Metrics: "
                + ", ".join(f"{name} :{port}" for name, port in metrics_ports.items())
                + "  (/metrics)\n"
                if metrics_ports
                else ""
            )
            + f"  API key: {key}  (kept in {state / DEV_KEY_FILE})\n"
            f"  DKIM:    publish TXT {dkim_name}  (the record is in "
            f"{state / local_settings.SHARED_DKIM_FILE})\n"
            "Ctrl-C stops everything.\n\n"
        )
        sys.stdout.flush()
        await stop.wait()
        return 0
    finally:
        # The gateway first, so no request reaches a service that is stopping; then
        # the services together; the embedded database last.
        await children[-1].stop()
        await asyncio.gather(*(child.stop() for child in children[:-1]))
        if embedded is not None:
            _stop_embedded(embedded)
        _log.info("stopped")


def main() -> None:
    """Runs the suite until Ctrl-C; exits non-zero if it could not start."""
    settings = config.from_environment()
    logs.configure(settings.log_level, settings.log_format)
    state = local_settings.state_dir()
    sys.exit(asyncio.run(_run(state)))


if __name__ == "__main__":
    main()
