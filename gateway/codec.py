"""The REST codec: proto messages ↔ JSON bodies, driven by the descriptors.

The REST shape of a message is derived, never hand-written (DESIGN §4):

- field names are the fields' JSON names (``json_name`` in the protos settles
  ``createdAt``, ``expiresAt``, a domain's ``domain``…);
- ``google.protobuf.Timestamp`` is an RFC 3339 UTC string;
- an enum is its value's name lower-cased without the enum's prefix
  (``PLAN_TRIAL`` → ``trial``) unless ``(mailplane.rest.v1.rest_name)`` spells
  it; the zero value is ``null``;
- a field with presence (``optional`` scalars, messages) that is unset is
  ``null``; ``next_page_token`` (AIP-158) is ``null`` when empty;
- ``(mailplane.rest.v1.internal)`` fields are neither shown nor accepted,
  ``(mailplane.rest.v1.output_only)`` fields are shown but not accepted;
- a ``(mailplane.rest.v1.json)`` string holds JSON text and is shown as that
  JSON value (an event's ``data``), embedded as it is, never re-parsed.

Requests are decoded strictly: unknown fields, wrong JSON types, integers out of
the field's range, unknown enum names, NUL characters, strings longer than the
field's bound and lists longer than ``services.chassis.inputs.MAX_ITEMS``
(the bounds every service checks too), and ``null`` for a field without presence
answer ``invalid_argument`` naming the field by its JSON path. The same
descriptors give the OpenAPI schema of each message, bounds and
``(mailplane.rest.v1.pattern)`` included.
"""

from __future__ import annotations

import base64
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from google.protobuf import descriptor_pb2, timestamp_pb2
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message
from mailplane.rest.v1 import rest_pb2

from services.chassis import inputs
from services.chassis.errors import MailplaneError, invalid_argument

Json = Any
"""A decoded JSON value: dict, list, str, int, float, bool or None."""

_TIMESTAMP = timestamp_pb2.Timestamp.DESCRIPTOR.full_name
_INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
_FLOATS = (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT)
PAGE_TOKEN_FIELD = "next_page_token"


# Enums ---------------------------------------------------------------------------


@functools.cache
def enum_names(enum: EnumDescriptor) -> dict[int, str]:
    """Returns ``{number: REST name}`` for every value but the zero value.

    Args:
        enum: the enum's descriptor, e.g. ``pods_pb2.Plan.DESCRIPTOR``.
    """
    prefix = _enum_prefix(enum)
    names = {}
    for value in enum.values:
        if value.number == 0:
            continue
        spelled = value.GetOptions().Extensions[rest_pb2.rest_name]
        names[value.number] = spelled or value.name.removeprefix(prefix).lower()
    return names


@functools.cache
def enum_numbers(enum: EnumDescriptor) -> dict[str, int]:
    """Returns ``{REST name: number}``, the inverse of :func:`enum_names`."""
    return {name: number for number, name in enum_names(enum).items()}


def _enum_prefix(enum: EnumDescriptor) -> str:
    """``PodState`` → ``POD_STATE_`` (buf's ENUM_VALUE_PREFIX rule)."""
    snake = "".join(f"_{c}" if c.isupper() and i else c for i, c in enumerate(enum.name))
    return snake.upper() + "_"


# Fields --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Field:
    """How one field is shown and read: its descriptor and REST facts."""

    field: FieldDescriptor
    json_name: str
    output_only: bool
    presence: bool
    raw_json: bool = False


@functools.cache
def _fields(descriptor: Descriptor) -> tuple[_Field, ...]:
    """The fields the REST API shows for ``descriptor``, in declaration order."""
    shown = []
    for field in descriptor.fields:
        options = field.GetOptions()
        if options.Extensions[rest_pb2.internal]:
            continue
        shown.append(
            _Field(
                field=field,
                json_name=field.json_name,
                output_only=options.Extensions[rest_pb2.output_only],
                presence=field.has_presence and not _repeated(field),
                raw_json=options.Extensions[rest_pb2.json],
            )
        )
    return tuple(shown)


@functools.cache
def _inputs(descriptor: Descriptor) -> dict[str, _Field]:
    """``{json name: field}`` of the fields a request body may set."""
    return {f.json_name: f for f in _fields(descriptor) if not f.output_only}


def _repeated(field: FieldDescriptor) -> bool:
    return bool(field.is_repeated) and not _is_map(field)


def _is_map(field: FieldDescriptor) -> bool:
    """A ``map<string, string>`` field: a JSON object of strings over REST."""
    return bool(
        field.is_repeated
        and field.type == FieldDescriptor.TYPE_MESSAGE
        and field.message_type.GetOptions().map_entry
    )


def json_name_of(descriptor: Descriptor, field_name: str) -> str:
    """Returns the JSON name of ``descriptor``'s field ``field_name`` (a proto name)."""
    return str(descriptor.fields_by_name[field_name].json_name)


def proto_name_of(descriptor: Descriptor, json_name: str) -> str | None:
    """Returns the proto name of the input field called ``json_name``, or None."""
    found = _inputs(descriptor).get(json_name)
    return found.field.name if found is not None else None


# Encoding ------------------------------------------------------------------------


def timestamp_text(ts: timestamp_pb2.Timestamp) -> str:
    """An RFC 3339 UTC string, e.g. ``2026-03-01T12:00:00.123456Z``."""
    return str(ts.ToJsonString())


def encode(message: Message) -> dict[str, Json]:
    """Returns the REST body of ``message``: every shown field present.

    Args:
        message: any Mailplane message.

    Returns:
        A JSON-ready dict (str keys; str, int, float, bool, None, list, dict values).
    """
    return _encoder(message.DESCRIPTOR)(message)


@functools.cache
def _encoder(descriptor: Descriptor) -> Callable[[Message], dict[str, Json]]:
    """Compiles the encoder of one message type (built once, then a loop of closures)."""
    steps: list[tuple[str, Callable[[Message], Json]]] = [
        (f.json_name, _value_encoder(f)) for f in _fields(descriptor)
    ]

    def run(message: Message) -> dict[str, Json]:
        return {name: step(message) for name, step in steps}

    return run


def _value_encoder(spec: _Field) -> Callable[[Message], Json]:
    field, name = spec.field, spec.field.name
    if spec.raw_json:
        return lambda m: orjson.Fragment(getattr(m, name) or "null")
    if _is_map(field):
        return lambda m: dict(getattr(m, name))
    one = _single_encoder(field)
    if _repeated(field):
        return lambda m: [one(v) for v in getattr(m, name)]
    if spec.presence:
        return lambda m: one(getattr(m, name)) if m.HasField(name) else None
    if name == PAGE_TOKEN_FIELD:
        return lambda m: getattr(m, name) or None
    return lambda m: one(getattr(m, name))


def _single_encoder(field: FieldDescriptor) -> Callable[[Any], Json]:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        if field.message_type.full_name == _TIMESTAMP:
            return timestamp_text
        return lambda v: _encoder(field.message_type)(v)
    if field.type == FieldDescriptor.TYPE_ENUM:
        names = enum_names(field.enum_type)
        return names.get
    if field.type == FieldDescriptor.TYPE_BYTES:
        return lambda v: base64.b64encode(v).decode()
    return lambda v: v


# Decoding ------------------------------------------------------------------------


def decode(body: Json, into: Message, where: str = "") -> None:
    """Sets ``into``'s fields from a REST body, strictly.

    Args:
        body: the decoded JSON; must be an object.
        into: the message to fill (fields not in ``body`` are left as they are).
        where: the JSON path of ``body`` within the request, for error messages.

    Raises:
        MailplaneError: ``invalid_argument`` naming the first bad field by its
            JSON path (``config.inboundRateLimit``), with ``details.field``.
    """
    if not isinstance(body, dict):
        raise invalid_argument(where or "body", "must be a JSON object.")
    inputs = _inputs(into.DESCRIPTOR)
    for key, value in body.items():
        path = f"{where}.{key}" if where else key
        spec = inputs.get(key)
        if spec is None:
            raise invalid_argument(path, "is not a field of this request; remove it.")
        _set(into, spec, value, path)


def _set(message: Message, spec: _Field, value: Json, path: str) -> None:
    field, name = spec.field, spec.field.name
    if spec.raw_json:
        setattr(message, name, orjson.dumps(value).decode())
        return
    if value is None:
        if not (spec.presence or field.is_repeated):
            raise invalid_argument(path, "cannot be null.")
        message.ClearField(name)
        return
    if _is_map(field):
        _set_map(getattr(message, name), field, value, path)
        return
    if _repeated(field):
        if not isinstance(value, list):
            raise invalid_argument(path, "must be a list.")
        if len(value) > inputs.MAX_ITEMS:
            raise invalid_argument(
                path, f"has {len(value)} values; the most is {inputs.MAX_ITEMS}."
            )
        target = getattr(message, name)
        del target[:]
        for i, item in enumerate(value):
            if field.type == FieldDescriptor.TYPE_MESSAGE:
                decode(item, target.add(), f"{path}[{i}]")
            else:
                target.append(scalar_value(field, item, f"{path}[{i}]"))
        return
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        if field.message_type.full_name == _TIMESTAMP:
            getattr(message, name).CopyFrom(timestamp_value(value, path))
            return
        sub = getattr(message, name)
        sub.SetInParent()
        decode(value, sub, path)
        return
    if value == "" and not spec.presence:
        # proto3 cannot tell an empty string from an absent one: refuse it rather than
        # let "" silently mean "not sent" (a generated username, the default pod…).
        raise invalid_argument(path, "must not be empty; omit it instead.")
    setattr(message, name, scalar_value(field, value, path))


def _set_map(target: Any, field: FieldDescriptor, value: Json, path: str) -> None:
    """Fills a ``map<string, string>`` from a JSON object of strings."""
    if not isinstance(value, dict):
        raise invalid_argument(path, "must be an object of strings.")
    if len(value) > inputs.MAX_ITEMS:
        raise invalid_argument(path, f"has {len(value)} entries; the most is {inputs.MAX_ITEMS}.")
    value_field = field.message_type.fields_by_name["value"]
    target.clear()
    for key, item in value.items():
        inputs.check_text(key, inputs.DEFAULT_MAX_LENGTH, path)
        target[key] = scalar_value(value_field, item, f"{path}.{key}")


def scalar_value(field: FieldDescriptor, value: Json, path: str) -> Any:
    """Checks a JSON value against a scalar or enum field and returns what to set.

    Raises:
        MailplaneError: ``invalid_argument`` naming ``path``.
    """
    kind = field.type
    if kind == FieldDescriptor.TYPE_ENUM:
        numbers = enum_numbers(field.enum_type)
        if not isinstance(value, str) or value not in numbers:
            raise invalid_argument(path, f"must be one of {', '.join(numbers)}.")
        return numbers[value]
    if kind == FieldDescriptor.TYPE_STRING:
        if not isinstance(value, str):
            raise invalid_argument(path, "must be a string.")
        return inputs.check_text(value, inputs.max_length(field), path)
    if kind == FieldDescriptor.TYPE_BOOL:
        if not isinstance(value, bool):
            raise invalid_argument(path, "must be true or false.")
        return value
    if kind in _INT_RANGES:
        low, high = _INT_RANGES[kind]
        if not isinstance(value, int) or isinstance(value, bool):
            raise invalid_argument(path, "must be an integer.")
        if not low <= value <= high:
            raise invalid_argument(path, f"must be between {low} and {high}.")
        return value
    if kind in _FLOATS:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise invalid_argument(path, "must be a number.")
        return float(value)
    if kind == FieldDescriptor.TYPE_BYTES:
        if not isinstance(value, str):
            raise invalid_argument(path, "must be a base64 string.")
        try:
            return base64.b64decode(value, validate=True)
        except ValueError:
            raise invalid_argument(path, "must be standard base64 (RFC 4648 §4).") from None
    raise invalid_argument(path, "cannot be set over REST.")


def timestamp_value(value: Json, path: str) -> timestamp_pb2.Timestamp:
    """Parses an RFC 3339 string with a time zone, e.g. ``2030-01-01T00:00:00Z``.

    Raises:
        MailplaneError: ``invalid_argument`` naming ``path``.
    """
    problem = "must be an RFC 3339 time with a zone, e.g. 2030-01-01T00:00:00Z."
    if not isinstance(value, str):
        raise invalid_argument(path, problem)
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise invalid_argument(path, problem) from None
    if moment.tzinfo is None:
        raise invalid_argument(path, problem)
    ts = timestamp_pb2.Timestamp()
    try:
        ts.FromDatetime(moment)
    except (ValueError, OverflowError):
        raise invalid_argument(path, problem) from None
    return ts


def text_value(field: FieldDescriptor, raw: str, path: str) -> Any:
    """Converts a path or query string to a value of ``field`` (int, bool, enum, str).

    Raises:
        MailplaneError: ``invalid_argument`` naming ``path``.
    """
    kind = field.type
    if kind in _INT_RANGES:
        try:
            number = int(raw)
        except ValueError:
            raise invalid_argument(path, "must be an integer.") from None
        return scalar_value(field, number, path)
    if kind == FieldDescriptor.TYPE_BOOL:
        if raw.lower() not in ("true", "false", "1", "0"):
            raise invalid_argument(path, "must be true or false.")
        return raw.lower() in ("true", "1")
    return scalar_value(field, raw, path)


def mask_paths(
    body: Mapping[str, Json], descriptor: Descriptor, merge: frozenset[str]
) -> list[str]:
    """The ``FieldMask`` paths of a PATCH body: exactly the fields it sent.

    Args:
        body: the PATCH body (already decoded, so every key is a field).
        descriptor: the resource's message type.
        merge: proto names of message fields merged key by key (``config``):
            their paths are ``config.<key>`` for each key sent; other message
            fields are replaced whole.

    Raises:
        MailplaneError: ``invalid_argument`` for ``null`` on a merged field.
    """
    paths = []
    for key, value in body.items():
        name = proto_name_of(descriptor, key)
        if name is None:  # decode() refused it already
            continue
        if name in merge:
            if not isinstance(value, dict):
                raise invalid_argument(key, "cannot be null; send the keys to change.")
            sub = descriptor.fields_by_name[name].message_type
            paths += [f"{name}.{proto_name_of(sub, k)}" for k in value]
        else:
            paths.append(name)
    return paths


# OpenAPI schemas -----------------------------------------------------------------


def schema_ref(descriptor: Descriptor, components: dict[str, Json], *, request: bool) -> Json:
    """Adds the JSON Schema of a message (and of what it holds) to ``components``.

    Args:
        descriptor: the message type.
        components: OpenAPI ``components.schemas``, filled in place.
        request: the request-body shape (input fields only, ``<Name>Input``) or
            the response shape (every shown field, all required, as returned).

    Returns:
        ``{"$ref": "#/components/schemas/<Name>"}``.
    """
    name = descriptor.name + ("Input" if request else "")
    if name not in components:
        components[name] = {}  # recursion guard
        fields = _inputs(descriptor).values() if request else _fields(descriptor)
        properties = {f.json_name: _field_schema(f, components, request=request) for f in fields}
        schema: dict[str, Json] = {
            "type": "object",
            "properties": properties,
            "additionalProperties": False,
        }
        description = comment_of(descriptor.full_name)
        if description:
            schema["description"] = description
        if not request:
            schema["required"] = list(properties)
        components[name] = schema
    return {"$ref": f"#/components/schemas/{name}"}


def _field_schema(spec: _Field, components: dict[str, Json], *, request: bool) -> Json:
    field = spec.field
    if spec.raw_json:
        return {"description": comment_of(f"{field.containing_type.full_name}.{field.name}")}
    if _is_map(field):
        value_schema = _single_schema(
            field.message_type.fields_by_name["value"], components, request=request
        )
        map_schema: dict[str, Json] = {"type": "object", "additionalProperties": value_schema}
        if request:
            map_schema["maxProperties"] = inputs.MAX_ITEMS
        description = comment_of(f"{field.containing_type.full_name}.{field.name}")
        if description:
            map_schema["description"] = description
        return map_schema
    item = _single_schema(field, components, request=request)
    if _repeated(field):
        schema: dict[str, Json] = {"type": "array", "items": item}
        if request:
            schema["maxItems"] = inputs.MAX_ITEMS
    elif spec.presence or field.name == PAGE_TOKEN_FIELD or field.type == FieldDescriptor.TYPE_ENUM:
        schema = {"anyOf": [item, {"type": "null"}]}
    else:
        schema = dict(item)
    description = comment_of(f"{field.containing_type.full_name}.{field.name}")
    if description:
        schema["description"] = description
    if spec.output_only and not request:
        schema["readOnly"] = True
    return schema


def _single_schema(field: FieldDescriptor, components: dict[str, Json], *, request: bool) -> Json:
    kind = field.type
    if kind == FieldDescriptor.TYPE_MESSAGE:
        if field.message_type.full_name == _TIMESTAMP:
            return {"type": "string", "format": "date-time"}
        return schema_ref(field.message_type, components, request=request)
    if kind == FieldDescriptor.TYPE_ENUM:
        return {"type": "string", "enum": list(enum_names(field.enum_type).values())}
    if kind == FieldDescriptor.TYPE_BOOL:
        return {"type": "boolean"}
    if kind in _INT_RANGES:
        low, high = _INT_RANGES[kind]
        return {"type": "integer", "minimum": low, "maximum": high}
    if kind in _FLOATS:
        return {"type": "number"}
    if kind == FieldDescriptor.TYPE_BYTES:
        return {"type": "string", "format": "byte"}
    if kind == FieldDescriptor.TYPE_STRING and request:
        schema: dict[str, Json] = {"type": "string", "maxLength": inputs.max_length(field)}
        pattern = field.GetOptions().Extensions[rest_pb2.pattern]
        if pattern:
            schema["pattern"] = pattern
        return schema
    return {"type": "string"}


def field_schema(descriptor: Descriptor, field_name: str) -> Json:
    """The JSON Schema of one scalar field (for path and query parameters)."""
    return _single_schema(descriptor.fields_by_name[field_name], {}, request=True)


# Proto comments, for descriptions -------------------------------------------------

_comments: dict[str, str] | None = None


def load_comments(descriptor_set: bytes) -> None:
    """Reads the leading comments of every element from a ``FileDescriptorSet``.

    ``deploy.protogen`` writes it with ``--include_source_info``; the generated
    modules carry no comments. Elements are keyed by full name
    (``mailplane.pods.v1.Pod.client_id``, ``mailplane.pods.v1.PodService.GetPod``).
    """
    global _comments
    files = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set)
    found: dict[str, str] = {}
    for file in files.file:
        by_path = {
            tuple(loc.path): loc.leading_comments.strip()
            for loc in file.source_code_info.location
            if loc.leading_comments
        }
        _walk_comments(file, by_path, found)
    _comments = found


def _walk_comments(
    file: descriptor_pb2.FileDescriptorProto,
    by_path: dict[tuple[int, ...], str],
    found: dict[str, str],
) -> None:
    package = file.package

    def message(proto: descriptor_pb2.DescriptorProto, prefix: str, path: tuple[int, ...]) -> None:
        name = f"{prefix}.{proto.name}"
        found[name] = by_path.get(path, "")
        for i, field in enumerate(proto.field):
            found[f"{name}.{field.name}"] = by_path.get((*path, 2, i), "")
        for i, nested in enumerate(proto.nested_type):
            message(nested, name, (*path, 3, i))

    for i, proto in enumerate(file.message_type):
        message(proto, package, (4, i))
    for i, service in enumerate(file.service):
        name = f"{package}.{service.name}"
        for j, method in enumerate(service.method):
            found[f"{name}.{method.name}"] = by_path.get((6, i, 2, j), "")


def comment_of(full_name: str) -> str:
    """The proto comment of an element, one paragraph; empty when unknown."""
    if _comments is None:
        return ""
    return " ".join(_comments.get(full_name, "").split())


def not_json(problem: str = "is not valid JSON; send a JSON object.") -> MailplaneError:
    """The error for a body that is not JSON (or not an object)."""
    return invalid_argument("body", problem)
