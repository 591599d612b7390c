"""REST operations as data: each is a path bound to one RPC, mounted mechanically.

An :class:`Operation` says which RPC a method and path call and how the HTTP
request fills the RPC's request message, in the spirit of ``google.api.http``
(AIP-127): path variables and query parameters bind to request fields, the body
binds to one field (or the whole request), a PATCH body also yields the
``FieldMask`` of exactly the fields it sent. The response message is rendered by
:mod:`gateway.codec`. The same table yields the OpenAPI document (operation IDs,
typed request and response schemas, the route's error codes, examples).

Each request costs one RPC over the process's one channel to the service, with
the caller's key and request ID as metadata and the peer deadline (plus, for an
operation that waits on purpose, its wait).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
import orjson
from google.protobuf import field_mask_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from starlette.requests import Request
from starlette.responses import Response

from gateway import codec
from gateway.caller import Caller, caller_of
from services.chassis.errors import Code, MailplaneError, invalid_argument

Json = codec.Json
PAGE_LIMIT_DEFAULT = 50
PAGE_LIMIT_MAX = 100
#: AIP-158's request fields of a paged list.
_PAGE_SIZE, _PAGE_TOKEN = "page_size", "page_token"


@dataclass(frozen=True)
class Operation:
    """One REST operation bound to one unary RPC.

    Attributes:
        method: the HTTP method, upper case.
        path: the route, with ``{variables}`` (``/v1/pods/{pod}``).
        rpc: the RPC's descriptor, e.g.
            ``pods_pb2.DESCRIPTOR.services_by_name["PodService"].methods_by_name["GetPod"]``.
        operation_id: the stable camelCase OpenAPI ``operationId`` (``getPod``).
        summary: a short title for the docs.
        tag: the OpenAPI tag grouping the operation.
        path_fields: path variable → request field (proto name).
        query_fields: query parameter → request field (proto name).
        header_fields: HTTP header → request field (proto name), each required
            (``Idempotency-Key`` → ``idempotency_key``).
        paged: takes ``limit`` and ``pageToken`` into ``page_size``/``page_token``.
        body: the request field the JSON body fills; ``"*"`` for the request
            itself; None for no body.
        body_required: a missing or empty body is refused (else it is ``{}``).
        mask: the request's ``FieldMask`` field, filled from the body's keys.
        merge: message fields a PATCH merges key by key (``config``).
        body_defaults: REST defaults of body fields the caller may omit.
        aliases: another name → the name it stands for, in body and query
            (seed 004's ``tenantId`` for ``podId``); both given and different is a 400.
        prepare: reshapes the body before decoding, for REST conveniences the
            proto spells differently (a key's ``podId`` → its scope).
        status: the HTTP status of success.
        status_of: the status decided by the response (an idempotent retry's 200).
        lift: a response field whose fields are shown at the top level, beside
            the response's other fields (``CreateInboxResponse.inbox``).
        deleted: the answer is ``{"id": <the response's first field>, "deleted": true}``
            plus the response's other fields.
        media: the answer is not JSON but bytes: returns them and their media type
            from the response (``message/rfc822`` of a raw message).
        media_type: the media type the docs show for ``media`` answers.
        waits: seconds the RPC may wait on purpose, beyond the peer deadline, given
            its request (a long-poll's ``wait``, a test delivery's endpoint): the
            call's deadline is the peer deadline plus this.
        errors: the catalog codes the operation may answer, for the docs.
        example: an example of the success body, for the docs.
    """

    method: str
    path: str
    rpc: MethodDescriptor
    operation_id: str
    summary: str
    tag: str
    path_fields: Mapping[str, str] = field(default_factory=dict)
    query_fields: Mapping[str, str] = field(default_factory=dict)
    header_fields: Mapping[str, str] = field(default_factory=dict)
    paged: bool = False
    body: str | None = None
    body_required: bool = False
    mask: str | None = None
    merge: frozenset[str] = frozenset()
    body_defaults: Mapping[str, Json] = field(default_factory=dict)
    aliases: Mapping[str, str] = field(default_factory=dict)
    prepare: Callable[[dict[str, Json]], dict[str, Json]] | None = None
    status: int = 200
    status_of: Callable[[Any], int] | None = None
    lift: str | None = None
    deleted: bool = False
    media: Callable[[Any], tuple[bytes, str]] | None = None
    media_type: str = "application/octet-stream"
    waits: Callable[[Any], float] | None = None
    errors: tuple[Code, ...] = ()
    example: Json = None

    @functools.cached_property
    def request_class(self) -> type[Message]:
        """The RPC's request message class."""
        return GetMessageClass(self.rpc.input_type)

    @property
    def body_descriptor(self) -> Descriptor | None:
        """The message type the body fills, or None without a body."""
        if self.body is None:
            return None
        if self.body == "*":
            return self.rpc.input_type
        return self.rpc.input_type.fields_by_name[self.body].message_type

    def render(self, response: Message) -> dict[str, Json]:
        """The REST body of a response message."""
        body = codec.encode(response)
        if self.deleted:  # the first field is the ID; others (a thread's `purged`) follow
            first = response.DESCRIPTOR.fields[0]
            return {"id": body.pop(first.json_name), "deleted": True, **body}
        if self.lift is not None:
            lifted = body.pop(codec.json_name_of(response.DESCRIPTOR, self.lift))
            body = {**lifted, **body}
        return body

    def build(self, request: Request, raw_body: bytes) -> Message:
        """Fills the RPC's request message from the HTTP request.

        Raises:
            MailplaneError: ``invalid_argument`` naming the bad parameter or field.
        """
        message = self.request_class()
        descriptor = message.DESCRIPTOR
        if self.body is not None:
            self._fill_body(message, raw_body)
        query = self._query(request)
        for parameter, name in self.query_fields.items():
            if parameter in query:
                _set_query(message, descriptor.fields_by_name[name], request, query, parameter)
        if self.paged:
            setattr(message, _PAGE_SIZE, _page_limit(query.get("limit")))
            setattr(message, _PAGE_TOKEN, query.get("pageToken", ""))
        for header, name in self.header_fields.items():  # a header wins over the body
            setattr(message, name, request.headers.get(header, ""))
        for variable, name in self.path_fields.items():  # last: the path wins over the body
            field_ = descriptor.fields_by_name[name]
            setattr(
                message, name, codec.text_value(field_, request.path_params[variable], variable)
            )
        return message

    def _query(self, request: Request) -> dict[str, str]:
        """The query parameters, aliases resolved to the names they stand for."""
        query = dict(request.query_params)
        self._resolve_aliases(query)
        return query

    def _resolve_aliases(self, values: dict[str, Any]) -> None:
        for alias, meant in self.aliases.items():
            if alias in values:
                value = values.pop(alias)
                if meant in values and values[meant] != value:
                    raise invalid_argument(
                        alias, f"names the same thing as {meant}; send one of them."
                    )
                values[meant] = value

    def _fill_body(self, message: Message, raw_body: bytes) -> None:
        body = _parse_body(raw_body, required=self.body_required)
        self._resolve_aliases(body)
        if self.prepare is not None:
            body = self.prepare(body)
        body = {**self.body_defaults, **body}
        target = message if self.body == "*" else getattr(message, self.body or "")
        codec.decode(body, target)
        if self.mask is not None:
            descriptor = self.body_descriptor
            assert descriptor is not None
            paths = codec.mask_paths(body, descriptor, self.merge)
            getattr(message, self.mask).CopyFrom(field_mask_pb2.FieldMask(paths=paths))


def _set_query(
    message: Message,
    field_: FieldDescriptor,
    request: Request,
    query: Mapping[str, str],
    parameter: str,
) -> None:
    """Sets one request field from a query parameter: a repeated field takes every
    occurrence and comma-separated values (``?labels=a,b&labels=c``); a
    ``Timestamp`` takes RFC 3339; anything else one scalar.

    Raises:
        MailplaneError: ``invalid_argument`` naming the parameter.
    """
    name = field_.name
    if field_.is_repeated:
        values = [
            part
            for raw in (request.query_params.getlist(parameter) or [query[parameter]])
            for part in raw.split(",")
            if part
        ]
        getattr(message, name).extend(codec.text_value(field_, v, parameter) for v in values)
    elif field_.type == FieldDescriptor.TYPE_MESSAGE:
        getattr(message, name).CopyFrom(codec.timestamp_value(query[parameter], parameter))
    else:
        setattr(message, name, codec.text_value(field_, query[parameter], parameter))


def pod_listing(listing: Operation, resources: str) -> Operation:
    """The ``/v1/pods/{pod}/<resources>`` form of a list operation (seed 001's per-pod
    lists): the same RPC with the pod from the path instead of ``?podId=``.

    Args:
        listing: the account-wide list (``listInboxes``), whose ``podId`` query
            parameter binds ``pod_id``.
        resources: the path's last segment and the operation ID's noun (``inboxes``).
    """
    return dataclasses.replace(
        listing,
        path=f"/v1/pods/{{pod}}/{resources}",
        operation_id=f"listPod{resources.title()}",
        summary=f"List a pod's {resources}",
        tag="pods",
        path_fields={"pod": "pod_id"},
        query_fields={},
        aliases={},
    )


def _parse_body(raw: bytes, *, required: bool) -> dict[str, Json]:
    if not raw.strip():
        if required:
            raise codec.not_json("is required: send a JSON object.")
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise codec.not_json() from None
    if not isinstance(body, dict):
        raise codec.not_json("must be a JSON object.")
    return body


def _page_limit(raw: str | None) -> int:
    """``?limit=`` (1-100, default 50; DESIGN §4 Lists)."""
    if raw is None:
        return PAGE_LIMIT_DEFAULT
    try:
        limit = int(raw)
    except ValueError:
        raise invalid_argument("limit", "must be an integer from 1 to 100.") from None
    if not 1 <= limit <= PAGE_LIMIT_MAX:
        raise invalid_argument("limit", "must be an integer from 1 to 100.")
    return limit


Invoke = Callable[..., Awaitable[Message]]
Endpoint = Callable[[Request], Awaitable[Response]]


def json_response(body: Json, status: int = 200) -> Response:
    """A JSON response rendered by orjson."""
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def endpoint(operation: Operation) -> Endpoint:
    """The ASGI endpoint of one operation.

    Its RPC's multicallable is made once, when the app starts, on the service's
    one channel (``app.state.calls[operation_id]``; see ``gateway.app``).
    """
    operation_id = operation.operation_id

    async def handle(request: Request) -> Response:
        caller: Caller = caller_of(request)
        raw = await request.body() if operation.body is not None else b""
        message = operation.build(request, raw)
        invoke = request.app.state.calls[operation_id]
        timeout = caller.timeout + (operation.waits(message) if operation.waits else 0.0)
        response = await invoke(message, metadata=caller.metadata, timeout=timeout)
        status = operation.status_of(response) if operation.status_of else operation.status
        if operation.media is not None:
            content, media_type = operation.media(response)
            return Response(content, status_code=status, media_type=media_type)
        return json_response(operation.render(response), status)

    return handle


def multicallable(channel: grpc.aio.Channel, rpc: MethodDescriptor) -> Invoke:
    """The unary multicallable of ``rpc`` on ``channel`` (made once per process)."""
    response_class = GetMessageClass(rpc.output_type)
    return channel.unary_unary(
        f"/{rpc.containing_service.full_name}/{rpc.name}",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=response_class.FromString,
    )


def rpc_of(file: Any, service: str, method: str) -> MethodDescriptor:
    """The descriptor of ``service.method`` in a generated module's ``DESCRIPTOR``."""
    found: MethodDescriptor = file.DESCRIPTOR.services_by_name[service].methods_by_name[method]
    return found


__all__ = ["MailplaneError", "Operation", "endpoint", "json_response", "multicallable", "rpc_of"]
