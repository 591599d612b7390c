"""Processes as a deployment runs them: the pods and inboxes services and the
gateway, each its own ``python -m`` process, with TLS between them (mutual, from
``deploy.certs``), ``/metrics`` listeners, a plaintext health-only port, and
traces exported over OTLP/HTTP to a real receiver in this test.

One REST request must be one trace: the gateway's span, the inboxes service's,
the pods service's (the key is authenticated there, a peer call) and the SQL
statements, with the trace ID in the canonical log lines.
"""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from prometheus_client.parser import text_string_to_metric_families

from deploy import certs
from services.chassis.config import Settings
from tests.conftest import REPO_ROOT, Tenant, free_port

START_SECONDS = 30


class Receiver(http.server.ThreadingHTTPServer):
    """An OTLP/HTTP trace receiver: keeps every span posted to ``/v1/traces``."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        super().__init__(("127.0.0.1", free_port()), _Handler)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        request = ExportTraceServiceRequest.FromString(body)
        for resource_spans in request.resource_spans:
            service = next(
                a.value.string_value
                for a in resource_spans.resource.attributes
                if a.key == "service.name"
            )
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.server.spans.append(
                        {
                            "service": service,
                            "name": span.name,
                            "trace_id": span.trace_id.hex(),
                            "kind": span.kind,
                            "attributes": {a.key: a.value.string_value for a in span.attributes},
                        }
                    )
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    """The OTLP receiver, on a thread."""
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


class Deployment:
    """pods, inboxes and the gateway as separate processes, TLS between them."""

    def __init__(self, settings: Settings, folder: Path, otlp: str):
        self.tls = folder / "tls"
        certs.write(self.tls)
        self.ports = {name: free_port() for name in ("pods", "inboxes", "gateway")}
        self.metrics = {name: free_port() for name in self.ports}
        self.health_port = free_port()
        self.logs = {name: folder / f"{name}.log" for name in self.ports}
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("MAILPLANE_")}
        self.env.update(
            MAILPLANE_DATABASE_URL=settings.database_url.get_secret_value(),
            MAILPLANE_DB_ROLE_PASSWORD=settings.db_role_password.get_secret_value(),
            MAILPLANE_INTERNAL_TOKEN=settings.internal_token.get_secret_value(),
            MAILPLANE_CREDENTIAL_HASH_KEY=settings.credential_hash_key.get_secret_value(),
            MAILPLANE_PODS_ADDR=f"localhost:{self.ports['pods']}",
            MAILPLANE_INBOXES_ADDR=f"localhost:{self.ports['inboxes']}",
            # Not started: the calls of this test do not reach them.
            MAILPLANE_DOMAINS_ADDR=f"localhost:{free_port()}",
            MAILPLANE_MAILBOXES_ADDR=f"localhost:{free_port()}",
            MAILPLANE_MESSAGES_ADDR=f"localhost:{free_port()}",
            MAILPLANE_GATEWAY_PORT=str(self.ports["gateway"]),
            MAILPLANE_GRPC_TLS_CERT=str(self.tls / "tls.crt"),
            MAILPLANE_GRPC_TLS_KEY=str(self.tls / "tls.key"),
            MAILPLANE_GRPC_TLS_CA=str(self.tls / "ca.crt"),
            MAILPLANE_GRPC_TLS_CLIENT_AUTH="true",
            MAILPLANE_OTLP_ENDPOINT=otlp,
            MAILPLANE_LOG_FORMAT="json",
        )
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        commands = {
            "pods": ["-m", "services.pods", "serve"],
            "inboxes": ["-m", "services.inboxes", "serve"],
            "gateway": ["-m", "gateway"],
        }
        for name, command in commands.items():
            env = {**self.env, "MAILPLANE_METRICS_PORT": str(self.metrics[name])}
            if name == "inboxes":
                env["MAILPLANE_GRPC_HEALTH_PORT"] = str(self.health_port)
            with self.logs[name].open("wb") as log:
                self.processes.append(
                    subprocess.Popen([sys.executable, *command], cwd=REPO_ROOT, env=env, stderr=log)
                )
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            try:
                ready = httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
                if ready and self.inboxes_health() == "SERVING":
                    return
            except (httpx.HTTPError, grpc.RpcError):
                pass
            time.sleep(0.2)
        raise AssertionError("the deployment did not start: " + self.tail())

    def inboxes_health(self) -> str:
        """The inboxes service's status, asked in plaintext on its health-only port."""
        with grpc.insecure_channel(f"127.0.0.1:{self.health_port}") as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=1
            )
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports['gateway']}"

    def log_lines(self, name: str) -> list[dict[str, Any]]:
        lines = []
        for raw in self.logs[name].read_bytes().splitlines():
            try:
                lines.append(json.loads(raw))
            except ValueError:
                continue  # a line of grpc's C core
        return lines

    def tail(self) -> str:
        return "\n".join(f"{name}: {path.read_text()[-1500:]}" for name, path in self.logs.items())

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()


@pytest.fixture(scope="module")
def deployment(
    settings: Settings, services: Any, receiver: Receiver, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    """The three processes, started once for this module (the database is the
    session's, migrated by the in-process ``services``)."""
    running = Deployment(settings, tmp_path_factory.mktemp("deployment"), receiver.endpoint)
    try:
        running.start()
        yield running
    finally:
        running.stop()


def metric(url: str, name: str, **labels: str) -> float | None:
    """The value of sample ``name`` with these labels at ``url``'s ``/metrics``."""
    text = httpx.get(f"{url}/metrics", timeout=5).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


def test_one_request_is_one_trace_from_the_gateway_to_sql(
    deployment: Deployment, receiver: Receiver, tenant: Tenant
) -> None:
    request_id = f"trace-{time.monotonic_ns()}"
    answer = httpx.get(
        f"{deployment.url}/v1/inboxes",
        headers={**tenant.headers, "X-Request-Id": request_id},
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    (line,) = [
        x
        for x in deployment.log_lines("gateway")
        if x.get("event") == "http" and x.get("request_id") == request_id
    ]
    trace_id = line["trace_id"]
    assert trace_id and len(trace_id) == 32

    def spans() -> list[dict[str, Any]]:
        return [s for s in receiver.spans if s["trace_id"] == trace_id]

    def seen() -> set[str]:
        return {s["service"] + " " + s["name"] for s in spans()}

    wanted = {
        "mailplane-inboxes /mailplane.inboxes.v1.InboxService/ListInboxes",
        "mailplane-pods /mailplane.pods.v1.ApiKeyService/AuthenticateApiKey",
    }
    deadline = time.monotonic() + 15  # spans are exported in batches, every second
    while time.monotonic() < deadline and not (
        wanted <= seen()
        and "mailplane-gateway" in {s["service"] for s in spans()}
        and {s["service"] for s in spans() if s["attributes"].get("db.system") == "postgresql"}
        >= {"mailplane-pods", "mailplane-inboxes"}
    ):
        time.sleep(0.2)
    assert wanted <= seen(), seen()
    services = {s["service"] for s in spans()}
    assert "mailplane-gateway" in services, seen()
    sql = {s["service"] for s in spans() if s["attributes"].get("db.system") == "postgresql"}
    assert sql >= {"mailplane-pods", "mailplane-inboxes"}, seen()
    # The services' canonical lines carry the same request and trace IDs.
    (rpc,) = [
        x
        for x in deployment.log_lines("inboxes")
        if x.get("event") == "rpc" and x.get("request_id") == request_id
    ]
    assert rpc["trace_id"] == trace_id
    # Health probes are not traced.
    assert not any("Health" in s["name"] for s in receiver.spans if s["trace_id"] == trace_id)


def test_every_process_serves_metrics_of_its_requests(
    deployment: Deployment, tenant: Tenant
) -> None:
    answer = httpx.get(f"{deployment.url}/v1/inboxes", headers=tenant.headers, timeout=10)
    assert answer.status_code == 200
    gateway = f"http://127.0.0.1:{deployment.metrics['gateway']}"
    inboxes = f"http://127.0.0.1:{deployment.metrics['inboxes']}"
    pods = f"http://127.0.0.1:{deployment.metrics['pods']}"
    counted = metric(
        gateway, "mailplane_http_requests_total", method="GET", route="/v1/inboxes", status="200"
    )
    assert counted is not None and counted >= 1
    listed = metric(
        inboxes,
        "mailplane_rpc_requests_total",
        service="inboxes",
        method="/mailplane.inboxes.v1.InboxService/ListInboxes",
        code="OK",
    )
    assert listed is not None and listed >= 1
    assert metric(inboxes, "mailplane_rpc_duration_seconds_bucket", service="inboxes") is not None
    assert metric(inboxes, "mailplane_db_pool_connections", pool="inboxes", state="max") == 4
    authenticated = metric(
        pods,
        "mailplane_rpc_requests_total",
        method="/mailplane.pods.v1.ApiKeyService/AuthenticateApiKey",
    )
    assert authenticated is not None and authenticated >= 1


def test_services_speak_only_mutual_tls_and_health_answers_in_plaintext(
    deployment: Deployment,
) -> None:
    address = f"localhost:{deployment.ports['inboxes']}"
    request = health_pb2.HealthCheckRequest()

    def check(channel: grpc.Channel) -> str:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(request, timeout=3)
        except grpc.RpcError as error:
            return str(error.code().name)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))

    tls = deployment.tls
    ca = (tls / "ca.crt").read_bytes()
    with grpc.insecure_channel(address) as plaintext:
        assert check(plaintext) == "UNAVAILABLE"
    with grpc.secure_channel(address, grpc.ssl_channel_credentials(ca)) as no_client_cert:
        assert check(no_client_cert) == "UNAVAILABLE"
    mutual = grpc.ssl_channel_credentials(
        ca, (tls / "tls.key").read_bytes(), (tls / "tls.crt").read_bytes()
    )
    with grpc.secure_channel(address, mutual) as channel:
        assert check(channel) == "SERVING"
    assert deployment.inboxes_health() == "SERVING"
