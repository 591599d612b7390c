"""gRPC plumbing shared by every service: the one interceptor that authenticates,
logs and maps errors, and the client side of calls to peer services.

The interceptor wraps every unary method except health and reflection. For each
RPC it reads the caller's credentials from metadata, checks them against the
method's row of the service's authorization table (``auth.Access``; a method
without a row is refused), sets the principal that servicers read with
``auth.current()``, checks the request's fields (``services.chassis.inputs``: no
NUL, bounded strings and lists, timestamps in range; bytes that are not the
request message are ``INVALID_ARGUMENT`` too), turns a ``MailplaneError`` into a
status with ``google.rpc.ErrorInfo`` (AIP-193), its message and details bounded
so the trailers stay small, a database that cannot be reached
(``db.is_unreachable``) into ``unavailable``, anything unexpected into
``INTERNAL`` without leaking it, logs one canonical line: method, code,
duration_ms, account_id, request_id (the caller's only when well formed) and
trace_id (while tracing is on, ``services.chassis.tracing``), and records the
RPC's count and latency (``services.chassis.metrics``).

Channels to peers are plaintext, or TLS once ``configure_channels`` has been
given settings with TLS (``services.chassis.tls``); a process calls it once at
start, before it opens any channel.
"""

from __future__ import annotations

import contextvars
import hmac
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError, Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from services.chassis import auth, db, inputs, metrics, tls, tracing
from services.chassis.config import Settings
from services.chassis.errors import (
    CATALOG,
    CODE_OF_BARE_STATUS,
    ERROR_DOMAIN,
    MailplaneError,
    details_from_metadata,
)
from services.chassis.logs import get_logger

_log = get_logger("mailplane.rpc")
_UNWRAPPED_PREFIXES = ("/grpc.health.", "/grpc.reflection.")

# The caller's credentials, forwarded on calls this RPC makes to other services.
_forwarded: contextvars.ContextVar[tuple[tuple[str, str], ...]] = contextvars.ContextVar(
    "mailplane_forwarded_metadata", default=()
)
_request_id: contextvars.ContextVar[str] = contextvars.ContextVar(
    "mailplane_request_id", default=""
)


def to_status(error: MailplaneError) -> grpc.Status:
    """Returns the gRPC status of a catalog error, with its ErrorInfo attached.

    The message is cut to ``inputs.MAX_MESSAGE`` characters and each detail to
    ``inputs.MAX_DETAIL``: they travel twice in the trailers (``grpc-message`` and
    ``grpc-status-details-bin``), which a peer refuses past its metadata limit.
    """
    grpc_code = grpc.StatusCode[error.entry.grpc_code]
    info = error_details_pb2.ErrorInfo(
        reason=error.code.upper(),
        domain=ERROR_DOMAIN,
        metadata={
            k: inputs.bounded(str(v), inputs.MAX_DETAIL) for k, v in (error.details or {}).items()
        },
    )
    detail = any_pb2.Any()
    detail.Pack(info)
    proto = status_pb2.Status(
        code=getattr(code_pb2, grpc_code.name),
        message=inputs.bounded(error.message, inputs.MAX_MESSAGE),
        details=[detail],
    )
    return rpc_status.to_status(proto)


def from_rpc_error(error: grpc.aio.AioRpcError) -> MailplaneError:
    """Returns the catalog error a failed call stands for.

    A status carrying Mailplane's ErrorInfo maps back to its code, message and
    details; a bare status (a peer down, a deadline passed) maps by its code,
    ``UNAVAILABLE``/``DEADLINE_EXCEEDED`` to ``unavailable``, and anything else to
    ``internal``; ``RESOURCE_EXHAUSTED`` (gRPC's own size limits) to
    ``invalid_argument``. A status whose details disagree with its code (gRPC cut
    the trailers and answered its own code) counts as bare.
    """
    try:
        status = rpc_status.from_call(error)  # type: ignore[arg-type]
    except ValueError:  # "Code in Status proto … doesn't match status code"
        status = None
    if status is not None:
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                code = info.reason.lower()
                if info.domain == ERROR_DOMAIN and code in CATALOG:
                    return MailplaneError(
                        code,  # type: ignore[arg-type]
                        status.message,
                        details_from_metadata(dict(info.metadata)),
                    )
    bare = CODE_OF_BARE_STATUS.get(error.code().name)
    if bare == "unavailable":
        return MailplaneError(
            "unavailable", "A Mailplane service is unavailable; nothing was changed. Retry shortly."
        )
    if bare is not None:
        return MailplaneError(bare, error.details() or bare.replace("_", " "))
    return MailplaneError("internal", "An internal error occurred; it has been logged.")


def forwarded_metadata() -> tuple[tuple[str, str], ...]:
    """Returns the caller's credentials and request ID, to forward to a peer."""
    request_id = _request_id.get()
    return (*_forwarded.get(), *((("x-request-id", request_id),) if request_id else ()))


Handler = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


class _Undecodable:
    """Stands in for a request whose bytes did not parse, so the interceptor can
    answer INVALID_ARGUMENT (grpc.aio itself answers UNKNOWN)."""


_UNDECODABLE = _Undecodable()


def _tolerant(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """Returns ``deserialize`` answering ``_UNDECODABLE`` instead of raising DecodeError."""
    if deserialize is None:
        return None

    def run(data: bytes) -> Any:
        try:
            return deserialize(data)
        except DecodeError:
            return _UNDECODABLE

    return run


class ChassisInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Authenticates, maps errors and logs every unary RPC of a service.

    Args:
        service: the service's name, logged with each line.
        authenticate: resolves an API-key secret to a ``Principal`` (a ``KeyCache``).
        internal_token: the service credential, compared in constant time.
        access: the authorization table: each method's full name
            (``/mailplane.pods.v1.PodService/GetPod``) → who may call it.
    """

    def __init__(
        self,
        service: str,
        authenticate: Callable[[str], Awaitable[auth.Principal]],
        internal_token: str,
        access: Mapping[str, auth.Access],
    ):
        self._service = service
        self._access = dict(access)
        self._authenticate = authenticate
        self._internal_token = internal_token.encode()
        #: The wrapped handler of each method, built on its first call: the
        #: servicers' handlers never change while the server runs.
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method: str = handler_call_details.method  # type: ignore[attr-defined]
        known = self._wrapped.get(method)
        if known is not None:
            return known
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None or method.startswith(_UNWRAPPED_PREFIXES):
            return handler
        self._wrapped[method] = self._wrap(method, handler)
        return self._wrapped[method]

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """Returns ``handler`` with authentication, error mapping and the log line."""
        inner: Handler = handler.unary_unary
        access = self._access.get(method)

        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            metadata = {
                k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)
            }
            request_id = inputs.request_id(metadata.get("x-request-id"))
            outcome, account_id = "OK", None
            tokens: list[Any] = [_request_id.set(request_id)]
            try:
                principal = await self._principal(metadata)
                account_id = principal.account_id if principal else None
                if request is _UNDECODABLE:
                    raise inputs.undecodable()
                auth.authorize(access, principal, request)
                if isinstance(request, Message):  # not a raw-bytes handler
                    inputs.check_request(request)
                tokens.append(_forwarded.set(self._to_forward(metadata)))
                principal_token = auth.set_principal(principal)
                try:
                    return await inner(request, context)
                finally:
                    auth.reset_principal(principal_token)
            except MailplaneError as error:
                outcome = error.entry.grpc_code
                await context.abort_with_status(to_status(error))
            except grpc.aio.AbortError:
                outcome = "ABORTED_BY_HANDLER"
                raise
            except Exception as exc:
                if db.is_unreachable(exc):  # an outage, not a bug: 503, no stack trace
                    outcome, failure = "UNAVAILABLE", db.unavailable(self._service)
                    _log.warning(
                        "database_unreachable",
                        method=method,
                        request_id=request_id,
                        error=type(exc).__name__,
                    )
                else:
                    outcome = "INTERNAL"
                    failure = MailplaneError(
                        "internal", "An internal error occurred; it has been logged."
                    )
                    _log.exception("rpc_failed", method=method, request_id=request_id)
                await context.abort_with_status(to_status(failure))
            finally:
                seconds = time.perf_counter() - started
                metrics.observe_rpc(self._service, method, outcome, seconds)
                _log.info(
                    "rpc",
                    service=self._service,
                    method=method,
                    code=outcome,
                    duration_ms=round(seconds * 1000, 2),
                    account_id=account_id,
                    request_id=request_id,
                    trace_id=tracing.trace_id(),
                )
                for token in reversed(tokens):
                    token.var.reset(token)

        return grpc.unary_unary_rpc_method_handler(
            wrapped,
            request_deserializer=_tolerant(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )

    async def _principal(self, metadata: dict[str, str]) -> auth.Principal | None:
        internal = metadata.get(auth.INTERNAL_TOKEN_METADATA)
        if internal is not None:
            if hmac.compare_digest(internal.encode(), self._internal_token):
                return auth.OPERATOR
            raise MailplaneError("unauthenticated", "The service credential is wrong.")
        header = metadata.get("authorization")
        if header is None:
            return None
        scheme, _, secret = header.partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            raise auth.bad_key()
        return await self._authenticate(secret.strip())

    @staticmethod
    def _to_forward(metadata: dict[str, str]) -> tuple[tuple[str, str], ...]:
        header = metadata.get("authorization")
        return (("authorization", header),) if header else ()


async def call_peer(
    method: Callable[..., Any], request: Any, *, deadline: float, metadata: Any = None
) -> Any:
    """Calls a peer service, forwarding the caller's credentials by default.

    Args:
        method: a stub's method, e.g. ``pods_stub.GetPod``.
        request: its request message.
        deadline: the deadline, in seconds.
        metadata: metadata to send instead of the caller's (the service
            credential, for work no caller started).

    Raises:
        MailplaneError: the peer's catalog error, or ``unavailable`` when the peer
            is down or the deadline passed.
    """
    try:
        return await method(
            request,
            metadata=metadata if metadata is not None else forwarded_metadata(),
            timeout=deadline,
        )
    except grpc.aio.AioRpcError as error:
        raise from_rpc_error(error) from None


def pods_key_resolver(
    channel: grpc.aio.Channel, internal_token: str, timeout: float
) -> auth.Resolver:
    """Returns a resolver that authenticates secrets through the pods service's
    ``AuthenticateApiKey``, with the service credential (for a ``KeyCache``)."""
    from mailplane.pods.v1 import pods_pb2, pods_pb2_grpc

    stub = pods_pb2_grpc.ApiKeyServiceStub(channel)
    metadata = ((auth.INTERNAL_TOKEN_METADATA, internal_token),)
    scope_names = {
        pods_pb2.SCOPE_TYPE_ACCOUNT: "account",
        pods_pb2.SCOPE_TYPE_POD: "pod",
        pods_pb2.SCOPE_TYPE_INBOX: "inbox",
        pods_pb2.SCOPE_TYPE_MAILBOX: "mailbox",
    }

    async def resolve(secret: str) -> auth.Principal:
        reply = await call_peer(
            stub.AuthenticateApiKey,
            pods_pb2.AuthenticateApiKeyRequest(secret=secret),
            deadline=timeout,
            metadata=metadata,
        )
        return auth.Principal(
            account_id=reply.account_id,
            api_key_id=reply.api_key_id,
            scope_type=scope_names.get(reply.scope.type, "account"),
            scope_ids=tuple(reply.scope.ids),
            permissions=frozenset(reply.permissions),
        )

    return resolve


#: The credentials of channels to peers (``None``: plaintext); see ``configure_channels``.
_channel_credentials: list[grpc.ChannelCredentials | None] = [None]
#: The largest gRPC message, in bytes: a 25 MB mail (MAILPLANE_MAX_MESSAGE_BYTES)
#: with its attachments base64-free in protobuf, plus headroom; gRPC's default is 4 MB.
MAX_MESSAGE_BYTES = 40 * 1024 * 1024


def configure_channels(settings: Settings) -> None:
    """Makes the channels this process opens from now on use the TLS of
    ``settings`` (plaintext when it configures none). Called once at start.

    Raises:
        OSError: a configured certificate file cannot be read.
    """
    _channel_credentials[0] = tls.channel_credentials(settings)


def open_channel(
    address: str, credentials: grpc.ChannelCredentials | None = None
) -> grpc.aio.Channel:
    """Opens the process's one channel to a peer service at ``host:port``.

    Args:
        address: ``host:port``; with TLS, the peer's certificate must name ``host``.
        credentials: TLS credentials; by default the process's
            (``configure_channels``), plaintext when it has none.
    """
    options = [
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.enable_retries", 1),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ]
    credentials = credentials or _channel_credentials[0]
    if credentials is None:
        return grpc.aio.insecure_channel(address, options=options)
    return grpc.aio.secure_channel(address, credentials, options=options)
