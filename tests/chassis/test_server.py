"""The chassis: health follows the database, shutdown reports NOT_SERVING, and
unexpected failures become INTERNAL without leaking what went wrong."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator

import grpc
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.chassis import auth, db
from services.chassis.config import Settings
from services.chassis.errors import MailplaneError
from services.chassis.rpc import ChassisInterceptor, from_rpc_error
from services.chassis.server import GrpcService, Servicer
from services.pods.server import PodsProcess

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def wait_for_status(channel: grpc.aio.Channel, wanted: int, seconds: float = 10.0) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    loop = asyncio.get_running_loop()
    give_up = loop.time() + seconds
    while True:
        reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
        if reply.status == wanted:
            return
        assert loop.time() < give_up, f"health stayed {reply.status}"
        await asyncio.sleep(0.1)


OPERATOR = ((auth.INTERNAL_TOKEN_METADATA, "t"),)


async def never(secret: str) -> auth.Principal:
    raise auth.bad_key()


@pytest_asyncio.fixture
async def probe(pods: PodsProcess, settings: Settings) -> AsyncIterator[tuple[GrpcService, int]]:
    """A bare chassis service on its own one-connection pool; yields it and its port."""
    pool = await db.create_pool(settings.service_dsn("pods"), "pods", 1)
    service = GrpcService(
        name="probe", pool=pool, servicers=[], authenticate=never, internal_token="t"
    )
    port = await service.start("127.0.0.1", 0)
    yield service, port
    await service.stop(0.1)
    await pool.close()


async def test_health_follows_the_database(probe: tuple[GrpcService, int]) -> None:
    service, port = probe
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        await wait_for_status(channel, SERVING)
        await service._pool.close()  # the database stops answering this service
        await wait_for_status(channel, NOT_SERVING)


async def test_graceful_shutdown_reports_not_serving(probe: tuple[GrpcService, int]) -> None:
    service, port = probe
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        await wait_for_status(channel, SERVING)
    await service.stop(0.1)
    # The health servicer itself, after shutdown began: NOT_SERVING for good.
    reply = await service.health.Check(health_pb2.HealthCheckRequest(), None)
    assert reply.status == NOT_SERVING


async def test_service_role_cannot_read_another_schema(
    pods: PodsProcess, settings: Settings
) -> None:
    import asyncpg

    admin = await asyncpg.connect(settings.database_url.get_secret_value())
    try:
        await admin.execute("CREATE SCHEMA IF NOT EXISTS otherservice")
        await admin.execute("CREATE TABLE IF NOT EXISTS otherservice.secrets (x int)")
    finally:
        await admin.close()
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await pods.pool.fetch("SELECT * FROM otherservice.secrets")


async def test_unexpected_errors_become_internal_without_details() -> None:
    async def boom(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        raise RuntimeError("database password is hunter2")

    async def catalog(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        raise MailplaneError("pod_not_empty", "Pod still has 2 inboxes.", {"inboxes": 2})

    access = {"/test.Probe/Boom": auth.OPERATOR_ONLY, "/test.Probe/Catalog": auth.OPERATOR_ONLY}
    server = grpc.aio.server(interceptors=[ChassisInterceptor("test", never, "t", access)])
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "test.Probe",
                {
                    "Boom": grpc.unary_unary_rpc_method_handler(boom),
                    "Catalog": grpc.unary_unary_rpc_method_handler(catalog),
                },
            )
        ]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await channel.unary_unary("/test.Probe/Boom")(b"", metadata=OPERATOR)
            assert err.value.code() == grpc.StatusCode.INTERNAL
            assert "hunter2" not in (err.value.details() or "")
            assert from_rpc_error(err.value).code == "internal"
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await channel.unary_unary("/test.Probe/Catalog")(b"", metadata=OPERATOR)
            mapped = from_rpc_error(err.value)
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert (mapped.code, mapped.details) == ("pod_not_empty", {"inboxes": 2})
    finally:
        await server.stop(0)


async def test_a_method_missing_from_the_authorization_table_is_refused() -> None:
    ran: list[bytes] = []

    async def listed(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        ran.append(request)
        return b"ok"

    access = {"/test.Probe/Listed": auth.OPERATOR_ONLY}
    server = grpc.aio.server(interceptors=[ChassisInterceptor("test", never, "t", access)])
    handler = grpc.unary_unary_rpc_method_handler(listed)
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "test.Probe", {"Listed": handler, "Unlisted": handler}
            )
        ]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            assert await channel.unary_unary("/test.Probe/Listed")(b"1", metadata=OPERATOR) == b"ok"
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await channel.unary_unary("/test.Probe/Unlisted")(b"2", metadata=OPERATOR)
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert from_rpc_error(err.value).code == "permission_denied"
    finally:
        await server.stop(0)
    assert ran == [b"1"]  # the unlisted method's servicer never ran


async def test_a_pooled_query_is_one_statement_and_release_keeps_no_transaction(
    pods: PodsProcess, settings: Settings
) -> None:
    pool = await db.create_pool(settings.service_dsn("pods"), "pods", 1)
    sent: list[str] = []
    try:
        async with pool.acquire() as conn:
            conn.add_query_logger(lambda record: sent.append(record.query))
        for _ in range(3):
            assert await pool.fetchval("SELECT 1") == 1
        # No reset query after each release: a single-statement read is one round trip.
        assert sent == ["SELECT 1"] * 3
        async with pool.acquire() as conn:
            tx = conn.transaction()
            await tx.start()  # released without commit or rollback
        async with pool.acquire() as conn:
            assert not conn.is_in_transaction()
            assert await conn.fetchval("SHOW search_path") == "pods"
    finally:
        await pool.close()


class Proxy:
    """A TCP proxy to the test PostgreSQL (its unix socket) that a test can cut:
    the database becomes unreachable to whoever connects through it, as when
    the server stops, without stopping the server the other tests share."""

    def __init__(self, socket_path: str):
        self._socket_path = socket_path
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.StreamWriter] = set()
        self.port = 0
        #: How many of the next connections are closed at once, as a server that
        #: is starting up or failing over does.
        self.refuse_next = 0
        self.accepted = 0

    async def start(self) -> None:
        """Listens (again, on the same port once it has one)."""
        self._server = await asyncio.start_server(self._link, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        """Stops listening and closes every connection through it."""
        assert self._server is not None
        self._server.close()
        for writer in list(self._links):
            writer.transport.abort()
        await self._server.wait_closed()

    async def _link(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self.refuse_next > 0:
            self.refuse_next -= 1
            client_w.transport.abort()
            return
        server_r, server_w = await asyncio.open_unix_connection(self._socket_path)
        self._links |= {client_w, server_w}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except OSError:
                pass
            finally:
                dst.transport.abort()
                self._links.discard(dst)

        await asyncio.gather(pipe(client_r, server_w), pipe(server_r, client_w))


@pytest_asyncio.fixture
async def proxied(pods: PodsProcess, settings: Settings) -> AsyncIterator[tuple[Proxy, str]]:
    """A proxy to the test database and the pods service's DSN through it."""
    from urllib.parse import parse_qs, urlsplit, urlunsplit

    dsn = settings.service_dsn("pods")
    parts = urlsplit(dsn)
    socket_dir = parse_qs(parts.query)["host"][0]
    proxy = Proxy(f"{socket_dir}/.s.PGSQL.5432")
    await proxy.start()
    credentials = parts.netloc.rsplit("@", 1)[0]
    yield (
        proxy,
        urlunsplit((parts.scheme, f"{credentials}@127.0.0.1:{proxy.port}", parts.path, "", "")),
    )
    await proxy.cut()


async def test_an_unreachable_database_answers_unavailable_and_the_pool_recovers(
    proxied: tuple[Proxy, str],
) -> None:
    proxy, dsn = proxied
    pool = await db.create_pool(dsn, "pods", 2)

    async def query(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return str(await pool.fetchval("SELECT 1")).encode()

    handler = grpc.method_handlers_generic_handler(
        "test.Probe", {"Query": grpc.unary_unary_rpc_method_handler(query)}
    )
    probe = Servicer(
        lambda _, server: server.add_generic_rpc_handlers([handler]),
        None,
        "test.Probe",
        {"Query": auth.OPERATOR_ONLY},
    )
    service = GrpcService(
        name="probe", pool=pool, servicers=[probe], authenticate=never, internal_token="t"
    )
    port = await service.start("127.0.0.1", 0)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            operator = ((auth.INTERNAL_TOKEN_METADATA, "t"),)
            call = functools.partial(channel.unary_unary("/test.Probe/Query"), metadata=operator)
            assert await call(b"") == b"1"
            await wait_for_status(channel, SERVING)

            await proxy.cut()  # the database goes away: refused, connections gone
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call(b"")
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert from_rpc_error(err.value).code == "unavailable"
            await wait_for_status(channel, NOT_SERVING)

            await proxy.start()  # back: the same pool reconnects, no restart
            await wait_for_status(channel, SERVING)
            assert await call(b"") == b"1"
    finally:
        await service.stop(0.1)
        await pool.close()


async def test_a_connection_refused_while_the_database_starts_is_retried(
    proxied: tuple[Proxy, str],
) -> None:
    proxy, dsn = proxied
    pool = await db.create_pool(dsn, "pods", 1)
    try:
        await pool.expire_connections()  # the next acquire connects anew
        before = proxy.accepted
        proxy.refuse_next = len(db.CONNECT_RETRY_DELAYS)  # every attempt but the last
        assert await pool.fetchval("SELECT 1") == 1
        assert proxy.accepted - before == len(db.CONNECT_RETRY_DELAYS) + 1
    finally:
        await pool.close()


def test_what_counts_as_the_database_unreachable() -> None:
    """503, not 500: the errors a lost or failing-over server raises (issue 11, 15)."""
    import asyncpg

    assert db.is_unreachable(ConnectionResetError())
    assert db.is_unreachable(asyncpg.exceptions.ConnectionDoesNotExistError("closed"))
    assert db.is_unreachable(asyncpg.exceptions.ReadOnlySQLTransactionError("read only"))
    assert db.is_unreachable(asyncpg.InterfaceError("connection is closed"))
    # A connection left mid-operation when its server died (Patroni fail-over test).
    assert db.is_unreachable(
        asyncpg.exceptions.InternalClientError(
            "cannot switch to state 12; another operation (2) is in progress"
        )
    )
    assert not db.is_unreachable(asyncpg.exceptions.UniqueViolationError("duplicate"))
    assert not db.is_unreachable(asyncpg.exceptions.InternalClientError("a bug"))
