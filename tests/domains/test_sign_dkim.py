"""SignDkim (DESIGN §7.5; RFC 6376 §3.7) over gRPC against the real domains service:
the digest's bounds, who may call it, keys that follow a domain's delete and
re-create, and the shared domain's key as the launcher makes and publishes it."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import structlog
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.hazmat.primitives.hashes import SHA256
from mailplane.domains.v1 import domains_pb2, domains_pb2_grpc
from mailplane.pods.v1 import pods_pb2
from pydantic import SecretStr

from deploy import settings as local_settings
from services.chassis.config import Settings
from services.domains import records
from services.domains import server as domains_server
from tests.conftest import Tenant, Zone
from tests.domains.test_domains import publish
from tests.inboxes.test_inboxes import verified_domain
from tests.pods.test_grpc import reason_of

Metadata = tuple[tuple[str, str], ...]
DIGEST = hashlib.sha256(b"a canonicalized header block").digest()


@pytest.fixture
async def stub(
    settings: Settings, domains: domains_server.DomainsProcess
) -> Any:  # a DomainServiceStub over a channel of this test
    async with grpc.aio.insecure_channel(settings.domains_addr) as channel:
        yield domains_pb2_grpc.DomainServiceStub(channel)


@pytest.fixture
async def sender(make_tenant) -> Tenant:  # type: ignore[no-untyped-def]
    return await make_tenant("Sender", pods_pb2.PLAN_ENTERPRISE)  # type: ignore[no-any-return]


def public_key_of(txt: str) -> rsa.RSAPublicKey:
    """The RSA public key of a ``v=DKIM1; k=rsa; p=…`` record."""
    tags = dict(part.strip().split("=", 1) for part in txt.split(";") if part.strip())
    key = serialization.load_der_public_key(base64.b64decode(tags["p"]))
    assert isinstance(key, rsa.RSAPublicKey)
    return key


def signs(txt: str, signature: bytes, digest: bytes = DIGEST) -> bool:
    """Whether ``signature`` is RSASSA-PKCS1-v1_5 over ``digest`` by the record's key."""
    try:
        public_key_of(txt).verify(signature, digest, padding.PKCS1v15(), Prehashed(SHA256()))
    except InvalidSignature:
        return False
    return True


async def test_a_digest_that_is_not_32_bytes_is_invalid_naming_digest(
    stub: Any, tenant: Tenant, settings: Settings, operator_metadata: Metadata
) -> None:
    for digest in (b"", DIGEST[:31], DIGEST + b"\0"):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.SignDkim(
                domains_pb2.SignDkimRequest(
                    account_id=tenant.account_id, domain=settings.shared_domain, digest=digest
                ),
                metadata=operator_metadata,
            )
        code, reason, details = reason_of(raised.value)
        assert (code, reason, details) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_ARGUMENT",
            {"field": "digest"},
        )


async def test_only_the_service_credential_has_signatures_made(
    stub: Any, tenant: Tenant, settings: Settings, operator_metadata: Metadata
) -> None:
    request = domains_pb2.SignDkimRequest(
        account_id=tenant.account_id, domain=settings.shared_domain, digest=DIGEST
    )
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.SignDkim(request, metadata=tenant.metadata)
    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
    reply = await stub.SignDkim(request, metadata=operator_metadata)
    assert reply.selector == "mailplane" and len(reply.signature) == 256
    assert settings.shared_dkim_private_key is not None
    shared = records.load_dkim_private_key(settings.shared_dkim_private_key.get_secret_value())
    assert signs(records.dkim_txt(shared.public_key()), reply.signature)


async def test_a_re_created_domain_signs_with_its_new_key(
    stub: Any,
    http: httpx.AsyncClient,
    sender: Tenant,
    dns_zone: Zone,
    operator_metadata: Metadata,
) -> None:
    async def sign(name: str) -> bytes:
        request = domains_pb2.SignDkimRequest(
            account_id=sender.account_id, domain=name, digest=DIGEST
        )
        return bytes((await stub.SignDkim(request, metadata=operator_metadata)).signature)

    def dkim_value(domain: dict[str, Any]) -> str:
        return next(r["value"] for r in domain["records"] if r["purpose"] == "dkim")

    with structlog.testing.capture_logs() as lines:
        first = await verified_domain(http, sender, dns_zone)
        name = first["domain"]
        assert signs(dkim_value(first), await sign(name))
        assert signs(dkim_value(first), await sign(name.upper()))  # the loaded key, again
        deleted = await http.delete(f"/v1/domains/{first['id']}", headers=sender.headers)
        assert deleted.status_code in (200, 204), deleted.text
        again = await http.post("/v1/domains", json={"domain": name}, headers=sender.headers)
        assert again.status_code == 201, again.text
        assert dkim_value(again.json()) != dkim_value(first)
        publish(dns_zone, again.json())
        verified = await http.post(
            f"/v1/domains/{again.json()['id']}/verify", headers=sender.headers
        )
        assert verified.json()["canSend"] is True, verified.text
        signature = await sign(name)
    assert signs(dkim_value(again.json()), signature)
    assert not signs(dkim_value(first), signature)
    assert "PRIVATE KEY" not in repr(lines)


async def test_the_launcher_makes_the_shared_key_once_and_writes_its_record(
    tmp_path: Path, settings: Settings
) -> None:
    made = local_settings.ensure_local_secrets(tmp_path)
    kept = local_settings.ensure_local_secrets(tmp_path)
    one_line = made["MAILPLANE_SHARED_DKIM_PRIVATE_KEY"]
    assert kept["MAILPLANE_SHARED_DKIM_PRIVATE_KEY"] == one_line and "\n" not in one_line
    local = settings.model_copy(update={"shared_dkim_private_key": SecretStr(one_line)})
    name, value = local_settings.write_shared_dkim_record(tmp_path, local)
    assert name == f"mailplane._domainkey.{settings.shared_domain}"
    key = records.load_dkim_private_key(one_line)
    assert value == records.dkim_txt(key.public_key())
    zone_line = (tmp_path / local_settings.SHARED_DKIM_FILE).read_text()
    assert zone_line.startswith(f"{name}. IN TXT ") and "PRIVATE" not in zone_line
    assert "".join(zone_line.split(" IN TXT ", 1)[1].strip().split('" "')).strip('"') == value


async def test_the_domains_service_refuses_to_start_without_a_usable_shared_key(
    settings: Settings,
) -> None:
    for bad in (None, SecretStr("not a key"), SecretStr("-----BEGIN PRIVATE KEY-----\n")):
        with pytest.raises(ValueError, match="MAILPLANE_SHARED_DKIM_PRIVATE_KEY"):
            await domains_server.build(settings.model_copy(update={"shared_dkim_private_key": bad}))
