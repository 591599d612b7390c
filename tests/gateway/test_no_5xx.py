"""Property: no request to any REST operation answers a 5xx. Schemathesis reads the
gateway's own ``/openapi.json`` and generates requests for every operation, both
schema-conforming and schema-violating, with a real key of an account (so they get
past authentication into the services and PostgreSQL); a bounded example count
and a fixed seed keep it quick and repeatable. The contract's own bounds are
checked too: the schema refuses what validation refuses."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import jsonschema_rs
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from mailplane.pods.v1 import pods_pb2
from schemathesis.generation import GenerationMode

from tests.conftest import Tenant

#: Generated requests per operation (each mode: schema-conforming and not).
EXAMPLES_PER_OPERATION = 30
SEED = 20_260_301


def _fuzz(document: dict[str, Any], base_url: str, key: str) -> tuple[int, list[str]]:
    """Runs the generated requests (synchronously: Schemathesis's transport is
    ``requests``); returns how many were sent and a line for each 5xx."""
    schema = schemathesis.openapi.from_dict(document)
    headers = {"Authorization": f"Bearer {key}"}
    failures: list[str] = []
    sent = [0]
    with requests.Session() as session:
        for result in schema.get_all_operations():
            operation = result.ok()
            strategy = st.one_of(
                operation.as_strategy(GenerationMode.POSITIVE),
                operation.as_strategy(GenerationMode.NEGATIVE),
            )

            @seed(SEED)
            @settings(
                max_examples=EXAMPLES_PER_OPERATION,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            @given(case=strategy)
            def check(case: Any) -> None:
                sent[0] += 1
                response = case.call(base_url=base_url, session=session, headers=headers)
                if response.status_code >= 500:
                    failures.append(
                        f"{response.status_code} {case.as_curl_command(base_url=base_url)}"
                        f" -> {response.text[:200]}"
                    )

            check()
    return sent[0], failures


async def test_no_generated_request_to_any_operation_answers_5xx(
    http: httpx.AsyncClient, gateway_url: str, make_tenant: Any
) -> None:
    tenant: Tenant = await make_tenant("Schemathesis", plan=pods_pb2.PLAN_GROWTH)
    for client_id in ("alpha", "beta"):  # a few real resources for listings to page over
        await http.post("/v1/pods", json={"clientId": client_id}, headers=tenant.headers)
    document = (await http.get("/openapi.json")).json()
    operations = sum(len(methods) for methods in document["paths"].values())
    sent, failures = await asyncio.to_thread(_fuzz, document, gateway_url, tenant.key)
    print("SENT", sent, operations)
    assert sent >= operations * 10
    assert not failures, "\n".join(failures[:20])


def _validator(document: dict[str, Any], component: str) -> Any:
    schema = {"$ref": f"#/components/schemas/{component}", "components": document["components"]}
    return jsonschema_rs.Draft202012Validator(schema)


@pytest.mark.parametrize(
    ("component", "valid", "invalid"),
    [
        (
            "MailboxInput",
            {"address": "agent@mailplane.test"},
            [{"address": "000"}, {"address": "a@b@c"}, {"address": "x" * 250 + "@a.io"}],
        ),
        (
            "DomainInput",
            {"domain": "mail.example.com"},
            [{"domain": "0"}, {"domain": "example"}, {"domain": "a." + "b" * 260}],
        ),
        ("PodInput", {"clientId": "c" * 255}, [{"clientId": "c" * 256}]),
    ],
)
async def test_the_schema_refuses_what_validation_refuses(
    http: httpx.AsyncClient, component: str, valid: dict[str, Any], invalid: list[dict[str, Any]]
) -> None:
    validator = _validator((await http.get("/openapi.json")).json(), component)
    assert validator.is_valid(valid)
    for body in invalid:
        assert not validator.is_valid(body), body


async def test_every_operation_documents_405_with_allow_and_500(http: httpx.AsyncClient) -> None:
    document = (await http.get("/openapi.json")).json()
    for path, methods in document["paths"].items():
        if not path.startswith("/v1/"):
            continue
        for method, operation in methods.items():
            responses = operation["responses"]
            assert {"400", "401", "405", "500", "503"} <= set(responses), (method, path)
            assert "Allow" in responses["405"]["headers"]
            assert "`internal`" in responses["500"]["description"]
