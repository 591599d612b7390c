"""The REST contract through the real gateway over real HTTP: every pods, account and
key route, status code and error body (DESIGN §4)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from gateway.app import create_app
from services.chassis.config import Settings
from tests.conftest import Tenant, free_port

POD_FIELDS = {"id", "clientId", "name", "isDefault", "createdAt", "updatedAt"}
ERROR_FIELDS = {"error", "message", "statusCode", "details"}


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """Asserts the catalog error body; returns it."""
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert set(body) == ERROR_FIELDS
    assert body["error"] == code and body["statusCode"] == status and body["message"]
    return body


async def test_create_get_update_list_delete_a_pod(http: httpx.AsyncClient, tenant: Tenant) -> None:
    h = tenant.headers
    created = await http.post("/v1/pods", json={"clientId": "acme", "name": "Acme"}, headers=h)
    assert created.status_code == 201
    pod = created.json()
    assert set(pod) == POD_FIELDS
    assert pod["clientId"] == "acme" and pod["isDefault"] is False and pod["id"].startswith("pod_")
    assert pod["createdAt"].endswith("Z")
    assert (await http.get(f"/v1/pods/{pod['id']}", headers=h)).json() == pod
    assert (await http.get("/v1/pods/acme", headers=h)).json() == pod

    patched = (await http.patch("/v1/pods/acme", json={"name": "Acme Inc"}, headers=h)).json()
    assert patched["name"] == "Acme Inc" and patched["clientId"] == "acme"
    cleared = (await http.patch(f"/v1/pods/{pod['id']}", json={"clientId": None}, headers=h)).json()
    assert cleared["clientId"] is None and cleared["name"] == "Acme Inc"
    unchanged = (await http.patch(f"/v1/pods/{pod['id']}", json={}, headers=h)).json()
    assert unchanged["name"] == "Acme Inc"

    listing = (await http.get("/v1/pods", headers=h)).json()
    assert set(listing) == {"pods", "nextPageToken"} and listing["nextPageToken"] is None
    assert listing["pods"][0]["isDefault"] is True
    assert [p["id"] for p in listing["pods"]][1:] == [pod["id"]]

    deleted = await http.delete(f"/v1/pods/{pod['id']}", headers=h)
    assert deleted.status_code == 200 and deleted.json() == {"id": pod["id"], "deleted": True}
    assert_error(await http.get(f"/v1/pods/{pod['id']}", headers=h), 404, "pod_not_found")


async def test_create_pod_with_no_body_makes_an_unnamed_pod(
    http: httpx.AsyncClient, tenant: Tenant
) -> None:
    created = await http.post("/v1/pods", headers=tenant.headers)
    assert created.status_code == 201
    assert created.json()["clientId"] is None and created.json()["name"] is None


async def test_pages_follow_next_page_token(http: httpx.AsyncClient, tenant: Tenant) -> None:
    for i in range(4):
        await http.post("/v1/pods", json={"clientId": f"c{i}"}, headers=tenant.headers)
    ids: list[str] = []
    params: dict[str, Any] = {"limit": 2}
    while True:
        page = (await http.get("/v1/pods", params=params, headers=tenant.headers)).json()
        assert len(page["pods"]) <= 2
        ids += [p["id"] for p in page["pods"]]
        if page["nextPageToken"] is None:
            break
        params = {"limit": 2, "pageToken": page["nextPageToken"]}
    assert len(ids) == len(set(ids)) == 5


async def test_duplicate_client_id_answers_409(http: httpx.AsyncClient, tenant: Tenant) -> None:
    await http.post("/v1/pods", json={"clientId": "dup"}, headers=tenant.headers)
    body = assert_error(
        await http.post("/v1/pods", json={"clientId": "dup"}, headers=tenant.headers),
        409,
        "client_id_taken",
    )
    assert "dup" in body["message"]


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"clientId": "x" * 256}, "clientId"),
        ({"name": "n" * 256}, "name"),
        ({"clientId": 5}, "clientId"),
        ({"name": ["a"]}, "name"),
        ({"clientId": "pod_01JD5B6Q8Z3Y7X2W1V0T9S8R7Q"}, "clientId"),
        ({"clientId": ""}, "clientId"),
        ({"client_id": "snake"}, "client_id"),
        ({"color": "red"}, "color"),
    ],
)
async def test_bad_pod_fields_answer_400_naming_the_field(
    http: httpx.AsyncClient, tenant: Tenant, payload: dict[str, Any], field: str
) -> None:
    body = assert_error(
        await http.post("/v1/pods", json=payload, headers=tenant.headers), 400, "invalid_argument"
    )
    assert body["details"] == {"field": field} and f"`{field}`" in body["message"]
    listing = (await http.get("/v1/pods", headers=tenant.headers)).json()
    assert len(listing["pods"]) == 1  # nothing was created


@pytest.mark.parametrize("raw", [b"{bad", b"[1, 2]", b'"text"', b"null x"])
async def test_malformed_bodies_answer_400(
    http: httpx.AsyncClient, tenant: Tenant, raw: bytes
) -> None:
    response = await http.post(
        "/v1/pods", content=raw, headers={**tenant.headers, "content-type": "application/json"}
    )
    assert_error(response, 400, "invalid_argument")


async def test_bad_patch_bodies_answer_400(http: httpx.AsyncClient, tenant: Tenant) -> None:
    await http.post("/v1/pods", json={"clientId": "p"}, headers=tenant.headers)
    for payload, field in (({"name": 1}, "name"), ({"isDefault": True}, "isDefault")):
        body = assert_error(
            await http.patch("/v1/pods/p", json=payload, headers=tenant.headers),
            400,
            "invalid_argument",
        )
        assert body["details"] == {"field": field}


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 101}, "limit"),
        ({"limit": "x"}, "limit"),
        ({"pageToken": "zzz"}, "pageToken"),
    ],
)
async def test_bad_list_parameters_answer_400(
    http: httpx.AsyncClient, tenant: Tenant, params: dict[str, Any], field: str
) -> None:
    body = assert_error(
        await http.get("/v1/pods", params=params, headers=tenant.headers), 400, "invalid_argument"
    )
    assert body["details"] == {"field": field}


async def test_default_pod_cannot_be_deleted(http: httpx.AsyncClient, tenant: Tenant) -> None:
    assert_error(
        await http.delete(f"/v1/pods/{tenant.default_pod_id}", headers=tenant.headers),
        409,
        "default_pod",
    )


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer mp_wrong"},
        {"Authorization": "Basic dXNlcg=="},
        {"X-API-Key": "nope"},
        {"Authorization": "Bearer mp_\u00e9abc".encode()},  # raw UTF-8 bytes
        # Well-formed with a right checksum, but no such key: refused by the pods service.
        {"Authorization": "Bearer mp_00000000000000000000000000000000026BYXP"},
    ],
)
async def test_missing_or_bad_keys_answer_401(
    http: httpx.AsyncClient, headers: dict[str, str | bytes]
) -> None:
    for method, path in (
        ("GET", "/v1/pods"),
        ("POST", "/v1/pods"),
        ("GET", "/v1/account"),
        ("GET", "/v1/api-keys"),
    ):
        assert_error(await http.request(method, path, headers=headers), 401, "unauthenticated")


async def test_a_control_character_in_a_header_is_refused_by_the_http_parser(
    http: httpx.AsyncClient,
) -> None:
    # RFC 9110 §5.5 forbids control characters in field values: httptools refuses the
    # request as malformed HTTP (400) before any route or key lookup.
    response = await http.get("/v1/pods", headers={"X-API-Key": "\u0001"})
    assert response.status_code == 400


async def test_x_api_key_header_works(http: httpx.AsyncClient, tenant: Tenant) -> None:
    response = await http.get("/v1/pods", headers={"X-API-Key": tenant.key})
    assert response.status_code == 200 and len(response.json()["pods"]) == 1


async def test_pod_routes_never_reach_another_account(
    http: httpx.AsyncClient, tenant: Tenant, other_tenant: Tenant
) -> None:
    theirs = (
        await http.post("/v1/pods", json={"clientId": "theirs"}, headers=other_tenant.headers)
    ).json()
    for ref in (theirs["id"], "theirs", other_tenant.default_pod_id):
        for method, body in (("GET", None), ("PATCH", {"name": "x"}), ("DELETE", None)):
            response = await http.request(
                method, f"/v1/pods/{ref}", json=body, headers=tenant.headers
            )
            assert_error(response, 404, "pod_not_found")
    mine = (await http.get("/v1/pods", headers=tenant.headers)).json()["pods"]
    assert [p["id"] for p in mine] == [tenant.default_pod_id]
    still = await http.get(f"/v1/pods/{theirs['id']}", headers=other_tenant.headers)
    assert still.status_code == 200 and still.json()["name"] is None


async def test_concurrent_creates_with_one_client_id_yield_exactly_one_pod(
    http: httpx.AsyncClient, tenant: Tenant
) -> None:
    responses = await asyncio.gather(
        *(
            http.post("/v1/pods", json={"clientId": "race"}, headers=tenant.headers)
            for _ in range(20)
        )
    )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [201] + [409] * 19
    for r in responses:
        if r.status_code == 409:
            assert r.json()["error"] == "client_id_taken"
    pods = (await http.get("/v1/pods", headers=tenant.headers)).json()["pods"]
    assert [p["clientId"] for p in pods].count("race") == 1


async def test_account_route(http: httpx.AsyncClient, tenant: Tenant) -> None:
    response = await http.get("/v1/account", headers=tenant.headers)
    assert response.status_code == 200
    assert response.json() == {
        "id": tenant.account_id,
        "name": "Test account",
        "plan": "trial",
        "state": "active",
        "createdAt": response.json()["createdAt"],
    }


async def test_api_key_routes(http: httpx.AsyncClient, tenant: Tenant) -> None:
    created = await http.post("/v1/api-keys", json={"name": "ci"}, headers=tenant.headers)
    assert created.status_code == 201
    key = created.json()
    assert set(key) == {
        "id",
        "name",
        "prefix",
        "last4",
        "scope",
        "permissions",
        "createdAt",
        "expiresAt",
        "lastUsedAt",
        "key",
    }
    assert key["scope"] == {"type": "account", "ids": []}
    assert key["permissions"] == ["read", "write"] and key["expiresAt"] is None
    assert key["key"].startswith("mp_") and key["key"].endswith(key["last4"])
    listing = (await http.get("/v1/api-keys", headers=tenant.headers)).json()
    assert set(listing) == {"apiKeys", "nextPageToken"}
    assert [k["name"] for k in listing["apiKeys"]] == ["Default key", "ci"]
    assert all("key" not in k for k in listing["apiKeys"])
    assert key["key"] not in str(listing)
    new_key = {"Authorization": f"Bearer {key['key']}"}
    assert (await http.get("/v1/pods", headers=new_key)).status_code == 200
    deleted = await http.delete(f"/v1/api-keys/{key['id']}", headers=tenant.headers)
    assert deleted.json() == {"id": key["id"], "deleted": True}
    assert_error(
        await http.delete(f"/v1/api-keys/{key['id']}", headers=tenant.headers),
        404,
        "api_key_not_found",
    )
    for payload, field in (({}, "name"), ({"name": ""}, "name"), ({"name": 3}, "name")):
        body = assert_error(
            await http.post("/v1/api-keys", json=payload, headers=tenant.headers),
            400,
            "invalid_argument",
        )
        assert body["details"] == {"field": field}


async def test_another_accounts_key_id_is_not_found(
    http: httpx.AsyncClient, tenant: Tenant, other_tenant: Tenant
) -> None:
    theirs = (
        await http.post("/v1/api-keys", json={"name": "x"}, headers=other_tenant.headers)
    ).json()
    assert_error(
        await http.delete(f"/v1/api-keys/{theirs['id']}", headers=tenant.headers),
        404,
        "api_key_not_found",
    )
    keys = (await http.get("/v1/api-keys", headers=tenant.headers)).json()["apiKeys"]
    assert theirs["id"] not in [k["id"] for k in keys]


async def test_health_readiness_docs_and_unknown_routes(http: httpx.AsyncClient) -> None:
    assert (await http.get("/healthz")).json() == {"status": "ok"}
    ready = await http.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["services"] == {
        "pods": "SERVING",
        "inboxes": "SERVING",
        "domains": "SERVING",
        "mailboxes": "SERVING",
        "messages": "SERVING",
    }
    assert (await http.get("/docs")).status_code == 200
    assert_error(await http.get("/v1/nothing"), 404, "not_found")
    assert_error(await http.put("/v1/pods"), 405, "method_not_allowed")


async def test_openapi_documents_every_route_field_and_error(http: httpx.AsyncClient) -> None:
    spec = (await http.get("/openapi.json")).json()
    assert spec["openapi"].startswith("3.1")
    paths = spec["paths"]
    for path, methods in {
        "/v1/pods": {"get", "post"},
        "/v1/pods/{pod}": {"get", "patch", "delete"},
        "/v1/account": {"get"},
        "/v1/api-keys": {"get", "post"},
        "/v1/api-keys/{key_id}": {"delete"},
    }.items():
        assert methods <= set(paths[path]), path
    assert set(spec["components"]["schemas"]["Pod"]["properties"]) == POD_FIELDS
    delete = paths["/v1/pods/{pod}"]["delete"]["responses"]
    assert {"200", "400", "401", "404", "409", "503"} <= set(delete)
    assert "pod_not_empty" in delete["409"]["description"]
    assert set(spec["components"]["schemas"]["ErrorBody"]["properties"]) == ERROR_FIELDS


async def test_a_service_that_is_down_answers_503_unavailable(
    settings: Settings, tenant: Tenant
) -> None:
    dead = settings.model_copy(
        update={"pods_addr": f"127.0.0.1:{free_port()}", "peer_deadline_seconds": 1.0}
    )
    app = create_app(dead)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://gateway") as client,
    ):
        assert_error(await client.get("/v1/pods", headers=tenant.headers), 503, "unavailable")
        assert_error(
            await client.post("/v1/pods", json={"clientId": "x"}, headers=tenant.headers),
            503,
            "unavailable",
        )
        ready = await client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["services"]["pods"] != "SERVING"


async def test_every_operation_is_typed_documented_and_never_422(http: httpx.AsyncClient) -> None:
    spec = (await http.get("/openapi.json")).json()
    schemas = spec["components"]["schemas"]
    assert "HTTPValidationError" not in schemas
    ids = []
    for path, methods in spec["paths"].items():
        for method, operation in methods.items():
            where = (method, path)
            ids.append(operation["operationId"])
            assert operation["operationId"][0].islower(), where
            assert "_" not in operation["operationId"], where
            if "422" in operation["responses"]:  # only the catalog's 422s, never FastAPI's
                unprocessable = operation["responses"]["422"]
                assert "recipient_suppressed" in unprocessable["description"], where
            if not path.startswith("/v1/"):
                continue
            success = [s for s in operation["responses"] if s.startswith("2")]
            assert success, where
            for status in success:
                (media_type, content), *_ = operation["responses"][status]["content"].items()
                if media_type != "application/json":  # a download: raw bytes
                    assert content["schema"] == {"type": "string", "format": "binary"}, where
                    continue
                ref = content["schema"]["$ref"].split("/")[-1]
                assert schemas[ref]["properties"], where
                if "example" in content:  # the example has exactly the schema's fields
                    assert set(content["example"]) == set(schemas[ref]["properties"]), where
            errors = {s: r for s, r in operation["responses"].items() if s[0] in "45"}
            assert {"400", "401", "503"} <= set(errors), where
            assert all("`" in r["description"] for r in errors.values()), where
            if method in ("post", "patch") and "requestBody" in operation:
                ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
                assert schemas[ref.split("/")[-1]]["properties"], where
    assert len(ids) == len(set(ids))
    assert {"createInbox", "getPod", "updateMailbox", "getBillingStatus"} <= set(ids)
    # Output-only fields are not in request schemas; internal ones are nowhere.
    assert "isDefault" not in schemas["PodInput"]["properties"]
    assert "accountId" not in schemas["Pod"]["properties"]
    assert schemas["Mailbox"]["properties"]["autonomyLevel"]["anyOf"][0]["enum"] == [
        "L1",
        "L2",
        "L3",
    ]


async def test_nul_invalid_utf8_and_deep_json_answer_400_not_500(
    http: httpx.AsyncClient, tenant: Tenant
) -> None:
    h = {**tenant.headers, "content-type": "application/json"}
    for response in (
        await http.get("/v1/pods/a%00b", headers=tenant.headers),
        await http.post("/v1/pods", json={"name": "a\u0000b"}, headers=tenant.headers),
        await http.post("/v1/pods", content=b'{"name": "\xff"}', headers=h),
        await http.post("/v1/pods", content=b"[" * 5000 + b"]" * 5000, headers=h),
    ):
        assert_error(response, 400, "invalid_argument")


async def test_request_ids_are_echoed_only_when_short_and_printable(
    http: httpx.AsyncClient,
) -> None:
    kept = await http.get("/healthz", headers={"X-Request-Id": "trace-42.a:b"})
    assert kept.headers["x-request-id"] == "trace-42.a:b"
    for bad in ("x" * 200, "a b", "é"):
        replaced = await http.get("/healthz", headers={"X-Request-Id": bad.encode()})
        assert replaced.headers["x-request-id"] != bad
        assert len(replaced.headers["x-request-id"]) == 32


async def test_405_names_the_allowed_methods(http: httpx.AsyncClient) -> None:
    response = await http.put("/v1/pods")
    assert_error(response, 405, "method_not_allowed")
    allowed = set(response.headers["allow"].replace(" ", "").split(","))
    assert allowed - {"HEAD"} == {"GET", "POST"}
