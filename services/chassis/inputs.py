"""What any request may hold, checked at the edges before a service reads it.

Every string field of a request is at most ``(mailplane.rest.v1.max_length)``
characters (255 when the proto says nothing: IDs, names, addresses, domains, page
tokens) and holds no NUL (PostgreSQL text cannot store one: asyncpg raises
``CharacterNotInRepertoireError``); a repeated field holds at most
:data:`MAX_ITEMS` values; a ``google.protobuf.Timestamp`` lies within 0001-01-01 and
9999-12-31 with nanos in 0-999,999,999 (its documented range). The chassis
interceptor applies :func:`check_request` to every RPC, naming a bad field by its
JSON path (``pod.name``, ``apiKey.expiresAt``); the gateway's codec applies
:func:`check_text` to each value it decodes, naming it as the REST request does.

Request IDs follow the gateway's rule: 1-128 of ``A-Z a-z 0-9 . _ : -``, else a new
one. Errors never echo unbounded input: the bounds above hold before any service
code runs, and the chassis cuts every error message and detail
(:data:`MAX_MESSAGE`, :data:`MAX_DETAIL`) before it travels in trailers.
"""

from __future__ import annotations

import functools
import re
import secrets
from typing import Any

from google.protobuf import timestamp_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from mailplane.rest.v1 import rest_pb2

from services.chassis.errors import MailplaneError, invalid_argument

#: The most characters of a string field without ``(mailplane.rest.v1.max_length)``.
DEFAULT_MAX_LENGTH = 255
#: The most values of a repeated field (a key's scope IDs, its permissions).
MAX_ITEMS = 100
#: ``google.protobuf.Timestamp``'s range: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z.
MIN_TIMESTAMP_SECONDS = -62_135_596_800
MAX_TIMESTAMP_SECONDS = 253_402_300_799
#: A request ID a caller may choose (``X-Request-Id``, metadata ``x-request-id``).
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_TIMESTAMP = timestamp_pb2.Timestamp.DESCRIPTOR.full_name


@functools.cache
def max_length(field: FieldDescriptor) -> int:
    """Returns the most characters ``field`` (a string field) may hold in a request."""
    return field.GetOptions().Extensions[rest_pb2.max_length] or DEFAULT_MAX_LENGTH


def check_text(value: str, limit: int, path: str) -> str:
    """Returns ``value`` if it has no NUL and at most ``limit`` characters.

    Args:
        value: the text a caller sent.
        limit: the most characters allowed (see :func:`max_length`).
        path: the field as the caller named it, for the error.

    Raises:
        MailplaneError: ``invalid_argument`` naming ``path``; the message never
            repeats the value.
    """
    if len(value) > limit:
        raise invalid_argument(path, f"is {len(value)} characters long; the most is {limit}.")
    if "\x00" in value:
        raise invalid_argument(path, "may not contain NUL characters.")
    return value


def check_request(message: Message, where: str = "") -> None:
    """Checks every set field of a request message, recursively.

    Args:
        message: the decoded request (any protobuf message).
        where: the JSON path of ``message`` within the request ("" at the top).

    Raises:
        MailplaneError: ``invalid_argument`` naming the first bad field by its
            JSON path: a string too long or holding NUL, a repeated field with
            more than :data:`MAX_ITEMS` values, a Timestamp out of range.
    """
    for field, value in message.ListFields():
        path = f"{where}.{field.json_name}" if where else field.json_name
        if field.is_repeated:
            if len(value) > MAX_ITEMS:
                raise invalid_argument(path, f"has {len(value)} values; the most is {MAX_ITEMS}.")
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                items: Any = value.items()
                for key, item in items:
                    _check_value(field.message_type.fields_by_name["key"], key, path)
                    _check_value(field.message_type.fields_by_name["value"], item, path)
                continue
            for i, item in enumerate(value):
                _check_value(field, item, f"{path}[{i}]")
        else:
            _check_value(field, value, path)


def _check_value(field: FieldDescriptor, value: Any, path: str) -> None:
    if field.type == FieldDescriptor.TYPE_STRING:
        check_text(value, max_length(field), path)
    elif field.type == FieldDescriptor.TYPE_MESSAGE:
        if field.message_type.full_name == _TIMESTAMP:
            check_timestamp(value, path)
        else:
            check_request(value, path)


def check_timestamp(value: timestamp_pb2.Timestamp, path: str) -> None:
    """Checks a Timestamp against its documented range.

    Raises:
        MailplaneError: ``invalid_argument`` naming ``path``.
    """
    if not (
        MIN_TIMESTAMP_SECONDS <= value.seconds <= MAX_TIMESTAMP_SECONDS
        and 0 <= value.nanos <= 999_999_999
    ):
        raise invalid_argument(
            path, "must be a time from 0001-01-01 to 9999-12-31 with nanos of 0-999999999."
        )


def undecodable() -> MailplaneError:
    """The error for request bytes that are not the method's protobuf message."""
    return MailplaneError(
        "invalid_argument",
        "The request is not a valid protobuf message of this method's request type.",
        {"field": "request"},
    )


def request_id(sent: str | None) -> str:
    """Returns the caller's request ID if it is 1-128 of ``A-Z a-z 0-9 . _ : -``,
    else a new random one (32 hex digits), so nothing else reaches logs or peers."""
    if sent is not None and REQUEST_ID.fullmatch(sent):
        return sent
    return secrets.token_hex(16)


#: The most characters of an error message and of each ErrorInfo metadata value:
#: the status travels in trailers, which peers cap (8-16 KiB).
MAX_MESSAGE = 512
MAX_DETAIL = 256


def bounded(text: str, limit: int) -> str:
    """Returns ``text`` cut to ``limit`` characters (the cut marked with ``…``)."""
    return text if len(text) <= limit else text[: limit - 1] + "…"
