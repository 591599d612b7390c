"""A bounded fuzz of every unary gRPC method, found by server reflection alone (as
``grpcurl`` finds them): adversarial requests (NUL bytes, huge and non-ASCII
strings, out-of-range numbers and enum values, extreme timestamps, long lists) and
random bytes as the serialized request, from a fixed seed, mixed with plausible
values (the account's own pod, addresses on the shared domain) so that calls get
past validation into the services' rules. Each method is called with an account's
key, or with the service credential where the key is refused (internal RPCs). No
call may answer INTERNAL or UNKNOWN: bad input is a catalog error, never a bug."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import grpc
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from mailplane.pods.v1 import pods_pb2

from services.chassis.config import Settings
from tests.conftest import Services, Tenant

SEED = 20_260_301
#: Generated requests per method and credential, plus as many random byte strings.
REQUESTS_PER_METHOD = 25
RANDOM_BYTES_PER_METHOD = 3
SERVICES = ("pods", "inboxes", "domains", "mailboxes")
_BROKEN = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}

#: Values no service may store or must refuse cleanly.
_ADVERSARIAL = (
    "a\x00b",
    "\x00",
    "x" * 9000,
    "é" * 300,
    "x" * 256,
    "../../etc/passwd",
    "' OR 1=1 --",
    "\ud7ff\ue000\U0010ffff",
    " ",
    "%00",
)
#: Values that get past validation, so the call reaches the rules and the store.
_PLAUSIBLE = (
    "",
    "pod_01JD5B6Q8Z3Y7X2W1V0T9S8R7Q",
    "mbx_" + "Z" * 26,
    "agent@mailplane.test",
    "Agent.Smith@mailplane.test",
    "example.com",
    "mail.example.org",
    "0",
    "active",
    "write",
    "inbox",
    "Support",
)
_INTS = (0, 1, -1, 2**31 - 1, -(2**31), 100, 101, 1_000_001)
_SECONDS = (0, -1, 2**40, -(2**40), 253_402_300_800, 1_900_000_000)


def _value(field: FieldDescriptor, rng: random.Random, depth: int, own: str) -> Any:
    """One value for a singular field (None: leave it unset); ``own`` is an ID of
    the caller's that some string fields get."""
    kind = field.type
    if kind == FieldDescriptor.TYPE_STRING:
        if rng.random() < 0.3:
            return rng.choice(_ADVERSARIAL)
        if rng.random() < 0.2:
            return own
        return rng.choice(_PLAUSIBLE) if rng.random() < 0.8 else rng.randbytes(6).hex()
    if kind == FieldDescriptor.TYPE_BYTES:
        return rng.randbytes(rng.randrange(0, 64))
    if kind == FieldDescriptor.TYPE_BOOL:
        return rng.random() < 0.5
    if kind == FieldDescriptor.TYPE_ENUM:
        return rng.choice([v.number for v in field.enum_type.values] + [-1, 99])
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return rng.choice((0.0, -1.0, 1e308, float("nan")))
    if kind == FieldDescriptor.TYPE_MESSAGE:
        return None if depth > 3 else field.message_type
    wide = field.cpp_type in (FieldDescriptor.CPPTYPE_INT64, FieldDescriptor.CPPTYPE_UINT64)
    value = rng.choice(_INTS + ((2**62, -(2**63)) if wide else ()))
    if field.cpp_type in (FieldDescriptor.CPPTYPE_UINT32, FieldDescriptor.CPPTYPE_UINT64):
        value = abs(value)
    return value


def _fill(message: Message, rng: random.Random, own: str, depth: int = 0) -> None:
    """Sets a random subset of ``message``'s fields to adversarial values."""
    descriptor: Descriptor = message.DESCRIPTOR
    if descriptor.full_name == "google.protobuf.Timestamp":
        message.seconds = rng.choice(_SECONDS)  # type: ignore[attr-defined]
        message.nanos = rng.choice((0, -1, 999_999_999, 10**9))  # type: ignore[attr-defined]
        return
    for field in descriptor.fields:
        if rng.random() < 0.35:
            continue
        if field.is_repeated:
            count = rng.choice((0, 1, 2, 3, 150))
            target = getattr(message, field.name)
            for _ in range(count):
                if field.type == FieldDescriptor.TYPE_MESSAGE:
                    if depth < 3:
                        _fill(target.add(), rng, own, depth + 1)
                else:
                    value = _value(field, rng, depth, own)
                    if value is not None:
                        target.append(value)
            continue
        value = _value(field, rng, depth, own)
        if value is None:
            continue
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            _fill(getattr(message, field.name), rng, own, depth + 1)
            getattr(message, field.name).SetInParent()
        else:
            setattr(message, field.name, value)


def _methods(address: str) -> list[MethodDescriptor]:
    """Every unary method the server at ``address`` lists by reflection, but health
    and reflection's own (grpcio-reflection's client is synchronous: run it in a
    thread, so the in-process servers keep serving)."""
    with grpc.insecure_channel(address) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        pool = descriptor_pool.DescriptorPool(database)
        found = []
        for name in database.get_services():
            if name.startswith("grpc."):
                continue
            for method in pool.FindServiceByName(name).methods:
                if not (method.client_streaming or method.server_streaming):
                    found.append(method)
        return found


async def _credential(
    call: Any, tenant: Tenant, operator_metadata: tuple[tuple[str, str], ...]
) -> tuple[tuple[str, str], ...]:
    """The account's key, unless the method refuses it (internal RPCs): then the
    service credential."""
    try:
        await call(b"", metadata=tenant.metadata, timeout=10)
    except grpc.aio.AioRpcError as error:
        if error.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            return operator_metadata
    return tenant.metadata


async def test_no_generated_grpc_request_answers_internal_or_unknown(
    services: Services, settings: Settings, make_tenant: Any, operator_metadata: Any
) -> None:
    tenant: Tenant = await make_tenant("Fuzzed", plan=pods_pb2.PLAN_GROWTH)
    rng = random.Random(SEED)
    broken: list[str] = []
    calls = 0
    for name in SERVICES:
        methods = await asyncio.to_thread(_methods, getattr(settings, f"{name}_addr"))
        assert methods, name
        async with grpc.aio.insecure_channel(getattr(settings, f"{name}_addr")) as channel:
            for method in methods:
                path = f"/{method.containing_service.full_name}/{method.name}"
                request_class = message_factory.GetMessageClass(method.input_type)
                call = channel.unary_unary(path)  # bytes in, bytes out
                payloads = [
                    rng.randbytes(rng.randrange(1, 48)) for _ in range(RANDOM_BYTES_PER_METHOD)
                ]
                for _ in range(REQUESTS_PER_METHOD):
                    request = request_class()
                    _fill(request, rng, tenant.default_pod_id)
                    payloads.append(request.SerializeToString())
                metadata = await _credential(call, tenant, operator_metadata)
                for payload in payloads:
                    calls += 1
                    try:
                        await call(payload, metadata=metadata, timeout=10)
                    except grpc.aio.AioRpcError as error:
                        if error.code() in _BROKEN:
                            broken.append(f"{path} {error.code().name} {payload[:80]!r}")
    assert calls > 400
    assert not broken, "\n".join(broken)
