"""End to end: the real processes started the way ``make run`` starts them, called
over real HTTP, by a reflection-only gRPC client (no .proto files) and by
``mailplane-admin``; Ctrl-C stops everything; a restart keeps data and key."""

from __future__ import annotations

import email
import http.server
import imaplib
import json
import os
import queue
import re
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import dkim
import dns.resolver
import grpc
import httpx
import pytest
from aiosmtpd.controller import Controller
from google.protobuf import descriptor_pool, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from standardwebhooks import Webhook

from tests.conftest import REPO_ROOT, Zone, free_port

START_SECONDS = 90


class Suite:
    """One ``python -m deploy.local`` process and how to reach it."""

    def __init__(self, state: Path, dns_port: int):
        self.state = state
        self.pods_port = free_port()
        self.gateway_port = free_port()
        self.smtp_port = free_port()
        self.imap_port = free_port()
        #: Where the worker delivers outbound mail (a recipient domain's MX port).
        self.outbound_port = free_port()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("MAILPLANE_")}
        self.env.update(
            MAILPLANE_STATE_DIR=str(state),
            MAILPLANE_PODS_ADDR=f"127.0.0.1:{self.pods_port}",
            MAILPLANE_INBOXES_ADDR=f"127.0.0.1:{free_port()}",
            MAILPLANE_DOMAINS_ADDR=f"127.0.0.1:{free_port()}",
            MAILPLANE_MAILBOXES_ADDR=f"127.0.0.1:{free_port()}",
            MAILPLANE_MESSAGES_ADDR=f"127.0.0.1:{free_port()}",
            MAILPLANE_SMTP_INBOUND_ADDR=f"127.0.0.1:{self.smtp_port}",
            MAILPLANE_IMAP_ADDR=f"127.0.0.1:{self.imap_port}",
            MAILPLANE_SUBMISSION_ADDR=f"127.0.0.1:{free_port()}",
            MAILPLANE_SUBMISSIONS_ADDR=f"127.0.0.1:{free_port()}",
            MAILPLANE_GATEWAY_PORT=str(self.gateway_port),
            MAILPLANE_LOG_FORMAT="json",
            MAILPLANE_DNS_NAMESERVERS=f"127.0.0.1:{dns_port}",
            MAILPLANE_OUTBOUND_PORT=str(self.outbound_port),
        )
        self.process: subprocess.Popen[str] | None = None
        self.banner = ""
        #: Where the launcher's stderr (every process's log lines) goes.
        self.stderr: int = subprocess.DEVNULL

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "deploy.local"],
            cwd=REPO_ROOT,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
        )
        assert self.process.stdout is not None
        deadline = time.monotonic() + START_SECONDS
        lines = []
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line and self.process.poll() is not None:
                break
            lines.append(line)
            if line.startswith("Ctrl-C"):
                self.banner = "".join(lines)
                return
        raise AssertionError(f"the suite did not start: {''.join(lines)}")

    def interrupt(self) -> int:
        """Sends Ctrl-C's SIGINT and returns the exit code."""
        assert self.process is not None
        self.process.send_signal(signal.SIGINT)
        return self.process.wait(timeout=60)

    def admin(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(Path(sys.executable).parent / "mailplane-admin"), *args],
            cwd=REPO_ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory, dns_zone: Zone) -> Iterator[Suite]:
    running = Suite(tmp_path_factory.mktemp("state"), dns_zone.port)
    running.start()
    yield running
    if running.process is not None and running.process.poll() is None:
        running.interrupt()


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def reflective_call(
    address: str, method: str, request_json: dict[str, str], key: str
) -> dict[str, object]:
    """Calls ``/package.Service/Method`` knowing nothing but what reflection tells."""
    from google.protobuf import json_format

    service_name, method_name = method.strip("/").split("/")
    with grpc.insecure_channel(address) as channel:
        pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
        descriptor = pool.FindServiceByName(service_name).FindMethodByName(method_name)
        request_class = message_factory.GetMessageClass(descriptor.input_type)
        response_class = message_factory.GetMessageClass(descriptor.output_type)
        call = channel.unary_unary(
            method,
            request_serializer=request_class.SerializeToString,
            response_deserializer=response_class.FromString,
        )
        request = json_format.ParseDict(request_json, request_class())
        response = call(request, metadata=(("authorization", f"Bearer {key}"),), timeout=10)
        return json_format.MessageToDict(response)


def test_walkthrough_reflection_admin_and_clean_stop(suite: Suite, dns_zone: Zone) -> None:
    key = (suite.state / "dev-api-key").read_text().strip()
    assert key in suite.banner and suite.url in suite.banner
    # The shared domain's DKIM key, made by the launcher: its record to publish.
    dkim_record = (suite.state / "shared-dkim.txt").read_text()
    assert dkim_record.startswith('mailplane._domainkey.mailplane.test. IN TXT "v=DKIM1; k=rsa; p=')
    assert "mailplane._domainkey.mailplane.test" in suite.banner
    headers = {"Authorization": f"Bearer {key}"}

    created = httpx.post(
        f"{suite.url}/v1/pods", json={"clientId": "acme", "name": "Acme"}, headers=headers
    )
    assert created.status_code == 201, created.text
    pod_id = created.json()["id"]
    listed = httpx.get(f"{suite.url}/v1/pods", headers=headers).json()
    assert [p["clientId"] for p in listed["pods"]] == [None, "acme"]
    assert httpx.get(f"{suite.url}/readyz").json()["status"] == "ready"

    got = reflective_call(
        f"127.0.0.1:{suite.pods_port}",
        "/mailplane.pods.v1.PodService/GetPod",
        {"podId": "acme"},
        key,
    )
    assert got["id"] == pod_id and got["name"] == "Acme"

    made = suite.admin("create-account", "--name", "Globex", "--plan", "starter")
    assert made.returncode == 0, made.stderr
    account = json.loads(made.stdout)
    assert account["accountId"].startswith("acct_") and account["apiKey"].startswith("mp_")
    theirs = {"Authorization": f"Bearer {account['apiKey']}"}
    assert httpx.get(f"{suite.url}/v1/account", headers=theirs).json()["plan"] == "starter"
    assert httpx.get(f"{suite.url}/v1/pods/acme", headers=theirs).status_code == 404
    assert (
        json.loads(suite.admin("set-plan", account["accountId"], "growth").stdout)["plan"]
        == "growth"
    )
    expired = json.loads(suite.admin("set-state", account["accountId"], "expired").stdout)
    assert expired["state"] == "expired"
    missing = suite.admin("set-plan", "acct_missing", "growth")
    assert missing.returncode == 1 and json.loads(missing.stderr)["error"] == "account_not_found"

    # Domains: add one to a pod, read the records, publish them, verify, re-scope.
    made = httpx.post(
        f"{suite.url}/v1/domains",
        json={"domain": "journey.example", "podId": "acme"},
        headers=headers,
    )
    assert made.status_code == 201, made.text
    domain = made.json()
    assert domain["podId"] == pod_id and domain["status"] == "pending"
    for record in domain["records"]:
        dns_zone.publish(record["name"], record["type"], record["value"])
    verified = httpx.post(f"{suite.url}/v1/domains/journey.example/verify", headers=headers).json()
    assert verified["status"] == "verified" and verified["canSend"] and verified["canReceive"]
    blocked = httpx.delete(f"{suite.url}/v1/pods/acme", headers=headers)
    assert blocked.status_code == 409 and blocked.json()["error"] == "pod_has_domains"
    widened = httpx.patch(
        f"{suite.url}/v1/domains/journey.example", json={"podId": None}, headers=headers
    )
    assert widened.json()["podId"] is None
    narrowed = httpx.patch(
        f"{suite.url}/v1/domains/journey.example", json={"podId": "acme"}, headers=headers
    )
    assert narrowed.json()["podId"] == pod_id

    # Inboxes: in a pod on the shared domain, an idempotent retry, the fallback in
    # another pod, one on the verified custom domain, and a pod that is not empty.
    def inbox(body: dict[str, str]) -> httpx.Response:
        return httpx.post(f"{suite.url}/v1/inboxes", json=body, headers=headers)

    scout = inbox({"username": "scout", "podId": "acme"})
    assert scout.status_code == 201 and scout.json()["email"] == "scout@mailplane.test"
    assert scout.json()["credentials"]["imap"]["password"]
    retry = inbox({"username": "scout", "podId": "acme"})
    assert retry.status_code == 200 and retry.json()["existed"] is True
    assert retry.json()["id"] == scout.json()["id"] and retry.json()["credentials"] is None
    fallback = inbox({"username": "scout"})
    assert fallback.status_code == 201 and fallback.json()["username"] == "scout1"
    custom = inbox({"username": "support", "domain": "journey.example", "podId": "acme"})
    assert custom.status_code == 201 and custom.json()["email"] == "support@journey.example"
    elsewhere = inbox({"username": "support", "domain": "journey.example"})
    assert elsewhere.status_code == 409 and elsewhere.json()["error"] == "domain_pod_mismatch"
    not_empty = httpx.delete(f"{suite.url}/v1/pods/acme", headers=headers)
    assert not_empty.status_code == 409 and not_empty.json()["error"] == "pod_not_empty"
    assert not_empty.json()["details"]["inboxes"] == 2

    # Mailboxes: seed 004's journey on our contract, and billing status.
    mailboxes = f"{suite.url}/v1/agent/mailboxes"
    support = httpx.post(
        mailboxes,
        json={"tenantId": "acme", "address": "desk@journey.example", "displayName": "Desk"},
        headers=headers,
    )
    assert support.status_code == 201 and support.json()["status"] == "active", support.text
    desk = f"{mailboxes}/{support.json()['id']}"
    assert (
        httpx.patch(desk, json={"status": "paused"}, headers=headers).json()["status"] == "paused"
    )
    assert (
        httpx.patch(desk, json={"status": "active"}, headers=headers).json()["status"] == "active"
    )
    config = httpx.patch(desk, json={"config": {"inboundRateLimit": 120}}, headers=headers)
    assert config.json()["config"]["inboundRateLimit"] == 120
    clone = httpx.post(f"{desk}/clone", json={"address": "sales@journey.example"}, headers=headers)
    assert clone.status_code == 201 and clone.json()["config"]["inboundRateLimit"] == 120
    assert httpx.delete(desk, headers=headers).json() == {
        "id": support.json()["id"],
        "deleted": True,
    }
    billing = httpx.get(f"{suite.url}/v1/billing/status", headers=headers).json()
    assert billing["plan"] == "growth" and billing["mailboxes"] == {"used": 1, "limit": 10}
    assert billing["inboxes"]["used"] == 3 and billing["domains"]["used"] == 1

    mail_arrives_and_is_announced(suite, headers, dns_zone)

    assert suite.interrupt() == 0
    assert not port_open(suite.pods_port) and not port_open(suite.gateway_port)
    assert not port_open(suite.smtp_port) and not port_open(suite.imap_port)
    assert not (suite.state / "pgdata" / "postmaster.pid").exists()

    suite.start()  # again: the data and the key are kept
    assert (suite.state / "dev-api-key").read_text().strip() == key
    again = httpx.get(f"{suite.url}/v1/pods/acme", headers=headers)
    assert again.status_code == 200 and again.json()["id"] == pod_id


class _Receiver(http.server.BaseHTTPRequestHandler):
    """A webhook receiver: keeps each delivery's headers and body."""

    received: queue.Queue[tuple[dict[str, str], bytes]] = queue.Queue()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.put(({k.lower(): v for k, v in self.headers.items()}, body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        return None


def mail_arrives_and_is_announced(suite: Suite, headers: dict[str, str], dns_zone: Zone) -> None:
    """DESIGN §7: a message sent with a real SMTP client to an inbox's address is
    listed, threaded, raises message.received on /v1/events and on a signed webhook;
    the agent's reply leaves, signed."""
    receiver = http.server.HTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    try:
        hook = httpx.post(
            f"{suite.url}/v1/webhooks",
            json={
                "url": f"http://127.0.0.1:{receiver.server_port}/hooks",
                "eventTypes": ["message.received", "message.received.unauthenticated"],
            },
            headers=headers,
        )
        assert hook.status_code == 201, hook.text
        inbox = httpx.post(
            f"{suite.url}/v1/inboxes", json={"username": "agent"}, headers=headers
        ).json()
        mail = EmailMessage()
        mail["From"] = "Ada <ada@example.com>"
        mail["To"] = inbox["email"]
        mail["Subject"] = "Your code is 123456"
        mail.set_content("Use 123456 to sign in.")
        with smtplib.SMTP("127.0.0.1", suite.smtp_port, timeout=10) as smtp:
            smtp.send_message(mail)
        listing = f"{suite.url}/v1/inboxes/{inbox['id']}/messages"
        deadline = time.monotonic() + 30
        messages: list[dict[str, object]] = []
        while not messages and time.monotonic() < deadline:
            messages = httpx.get(listing, headers=headers).json()["messages"]
            time.sleep(0.1)
        assert [m["subject"] for m in messages] == ["Your code is 123456"]
        thread = httpx.get(f"{suite.url}/v1/threads/{messages[0]['threadId']}", headers=headers)
        assert thread.json()["messages"][0]["text"].strip() == "Use 123456 to sign in."
        events = httpx.get(
            f"{suite.url}/v1/events", params={"inboxId": inbox["id"]}, headers=headers
        ).json()["events"]
        assert [e["type"] for e in events] == ["message.received.unauthenticated"]
        sent_headers, body = _Receiver.received.get(timeout=30)
        Webhook(hook.json()["secret"]).verify(body, sent_headers)  # raises if not signed
        assert sent_headers["webhook-id"] == events[0]["id"]
        assert json.loads(body)["data"]["message"]["subject"] == "Your code is 123456"
        read_over_imap(suite, inbox, messages[0]["id"], headers)
        the_reply_leaves_signed(suite, messages[0], headers, dns_zone)
    finally:
        receiver.shutdown()


class _Sink:
    """An MX that keeps what it is given (aiosmtpd handler)."""

    def __init__(self) -> None:
        self.received: queue.Queue[tuple[str, bytes]] = queue.Queue()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.received.put((envelope.mail_from, envelope.original_content))
        return "250 2.0.0 Ok"


def the_reply_leaves_signed(
    suite: Suite, received: dict[str, Any], headers: dict[str, str], dns_zone: Zone
) -> None:
    """DESIGN §7.5: the agent replies through the API; the worker signs it through
    the domains service and delivers it to the sender's MX (a sink on loopback,
    reached through the DNS zone) with its threading headers and a DKIM signature
    that verifies against the record the launcher wrote."""
    line = (suite.state / "shared-dkim.txt").read_text()
    dns_zone.publish(line.split()[0].rstrip("."), "TXT", "".join(re.findall(r'"([^"]*)"', line)))
    dns_zone.publish("example.com", "MX", "10 mx.example.com")
    dns_zone.publish("mx.example.com", "A", "127.0.0.1")
    sink = _Sink()
    controller = Controller(sink, hostname="127.0.0.1", port=suite.outbound_port)
    controller.start()
    try:
        answer = httpx.post(
            f"{suite.url}/v1/messages/{received['id']}/reply",
            json={"text": "Thanks, signed in."},
            headers={**headers, "Idempotency-Key": "reply-1"},
        )
        assert answer.status_code == 202, answer.text
        mail_from, raw = sink.received.get(timeout=30)
    finally:
        controller.stop()
    reply = email.message_from_bytes(raw)
    assert reply["In-Reply-To"] == received["messageId"]
    assert reply["Subject"] == "Re: Your code is 123456"
    assert mail_from.endswith("@" + received["to"][0].rpartition("@")[2])  # VERP, ours
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers, resolver.port = ["127.0.0.1"], dns_zone.port

    def txt(name: bytes, timeout: int = 5) -> bytes:
        return b"".join(b"".join(r.strings) for r in resolver.resolve(name.decode(), "TXT"))

    assert dkim.verify(raw, dnsfunc=txt)
    sent = f"{suite.url}/v1/messages/{answer.json()['id']}"
    deadline = time.monotonic() + 30
    while httpx.get(sent, headers=headers).json()["status"] != "sent":
        assert time.monotonic() < deadline, "the reply was not recorded sent"
        time.sleep(0.1)


def read_over_imap(
    suite: Suite, inbox: dict[str, Any], message_id: str, headers: dict[str, str]
) -> None:
    """DESIGN §7.1: the credentials from the create response log in to the
    launched IMAP listener as handed out; the message is there, and marking it
    seen over IMAP removes the ``unread`` label over REST."""
    imap = inbox["credentials"]["imap"]
    assert (imap["host"], imap["port"], imap["tls"]) == ("127.0.0.1", suite.imap_port, True)
    context = ssl.create_default_context(cafile=str(suite.state / "tls" / "cert.pem"))
    with imaplib.IMAP4_SSL(imap["host"], imap["port"], ssl_context=context, timeout=10) as client:
        client.login(imap["username"], imap["password"])
        assert client.select("INBOX") == ("OK", [b"1"])
        _, fetched = client.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)] FLAGS)")
        assert b"Subject: Your code is 123456" in fetched[0][1]
        assert client.store("1", "+FLAGS", "(\\Seen)")[0] == "OK"
    labels = httpx.get(f"{suite.url}/v1/messages/{message_id}", headers=headers).json()["labels"]
    assert "unread" not in labels and "received" in labels
