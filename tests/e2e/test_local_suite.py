"""End to end: the real processes started the way ``make run`` starts them, called
over real HTTP, by a reflection-only gRPC client (no .proto files) and by
``mailplane-admin``; Ctrl-C stops everything; a restart keeps data and key."""

from __future__ import annotations

import email
import email.policy
import http.server
import imaplib
import json
import os
import queue
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

import grpc
import httpx
import pytest
from google.protobuf import descriptor_pool, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from standardwebhooks import Webhook

from tests.conftest import REPO_ROOT, Zone, free_port

START_SECONDS = 90


class Suite:
    """One ``python -m deploy.local`` process and how to reach it."""

    def __init__(self, state: Path, dns_port: int, outbound_port: int = 25):
        self.state = state
        self.pods_port = free_port()
        self.gateway_port = free_port()
        self.smtp_port = free_port()
        self.imap_port = free_port()
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
            MAILPLANE_OUTBOUND_PORT=str(outbound_port),
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


class _Sink:
    """A loopback MX (aiosmtpd) that keeps every message it is given."""

    def __init__(self) -> None:
        self.received: queue.Queue[tuple[str, list[str], bytes]] = queue.Queue()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.received.put((envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        return "250 2.0.0 OK"

    def next(self, timeout: float = 30) -> tuple[str, list[str], bytes]:
        return self.received.get(timeout=timeout)


@pytest.fixture(scope="module")
def sink(dns_zone: Zone) -> Iterator[tuple[_Sink, int]]:
    """The sink, reached as example.com's MX through the loopback DNS server."""
    from aiosmtpd.controller import Controller

    handler, port = _Sink(), free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    dns_zone.publish("example.com", "MX", "10 mx.sink.test")
    dns_zone.publish("mx.sink.test", "A", "127.0.0.1")
    yield handler, port
    controller.stop()


@pytest.fixture(scope="module")
def suite(
    tmp_path_factory: pytest.TempPathFactory, dns_zone: Zone, sink: tuple[_Sink, int]
) -> Iterator[Suite]:
    running = Suite(tmp_path_factory.mktemp("state"), dns_zone.port, outbound_port=sink[1])
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


def test_walkthrough_reflection_admin_and_clean_stop(
    suite: Suite, dns_zone: Zone, sink: tuple[_Sink, int]
) -> None:
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

    inbox, received = mail_arrives_and_is_announced(suite, headers)
    mail_leaves_signed_and_threaded(suite, headers, inbox, received, sink, dns_zone)

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


def mail_arrives_and_is_announced(
    suite: Suite, headers: dict[str, str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """DESIGN §7: a message sent with a real SMTP client to an inbox's address is
    listed, threaded, raises message.received on /v1/events and on a signed webhook."""
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
        return inbox, messages[0]
    finally:
        receiver.shutdown()


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


def _published_dkim(suite: Suite) -> tuple[str, str]:
    """The shared domain's DKIM record as the launcher wrote it: (name, TXT value)."""
    line = (suite.state / "shared-dkim.txt").read_text()
    name = line.split()[0].rstrip(".")
    value = "".join(part for part in line.split('"')[1::2])
    return name, value


def _wait_for(check: Any, what: str, seconds: float = 30) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def mail_leaves_signed_and_threaded(
    suite: Suite,
    headers: dict[str, str],
    inbox: dict[str, Any],
    received: dict[str, Any],
    sink: tuple[_Sink, int],
    dns_zone: Zone,
) -> None:
    """Issue 13's journey through ``make run``: the agent replies through the API
    and the reply reaches a loopback MX DKIM-signed and threaded; a mail client
    submits with the handed-out credentials; a paused mailbox holds a scheduled
    message and releases it on resume, delivered once; the stats count it."""
    import dkim

    box, _ = sink
    name, value = _published_dkim(suite)
    dns_zone.publish(name, "TXT", value)

    def dns(query: bytes, timeout: float = 5) -> bytes:
        return value.encode() if query.decode().rstrip(".") == name else b""

    reply = httpx.post(
        f"{suite.url}/v1/messages/{received['id']}/reply",
        json={"text": "Thanks, signed in."},
        headers={**headers, "Idempotency-Key": "e2e-reply"},
    )
    assert reply.status_code == 202, reply.text
    mail_from, rcpts, raw = box.next()
    assert rcpts == ["ada@example.com"] and "+bounce-" in mail_from
    assert dkim.verify(raw, dnsfunc=dns)
    sent = email.message_from_bytes(raw, policy=email.policy.default)
    assert sent["In-Reply-To"] == received["messageId"]
    assert sent["Subject"] == f"Re: {received['subject']}"
    assert "d=mailplane.test" in sent["DKIM-Signature"].replace(" ", "")
    listing = f"{suite.url}/v1/messages/{reply.json()['id']}"
    _wait_for(lambda: httpx.get(listing, headers=headers).json()["status"] == "sent", "sent")

    # A mail client sends with the credentials as handed out (STARTTLS, AUTH).
    smtp = inbox["credentials"]["smtp"]
    context = ssl.create_default_context(cafile=str(suite.state / "tls" / "cert.pem"))
    note = EmailMessage()
    note["From"], note["To"], note["Subject"] = inbox["email"], "bob@example.com", "Submitted"
    note.set_content("From a mail client.")
    with smtplib.SMTP(smtp["host"], smtp["port"], timeout=10) as client:
        client.starttls(context=context)
        client.login(smtp["username"], smtp["password"])
        client.send_message(note)
    _, rcpts, raw = box.next()
    assert rcpts == ["bob@example.com"] and dkim.verify(raw, dnsfunc=dns)

    # A paused mailbox holds a scheduled message and releases it on resume.
    mailbox = httpx.post(
        f"{suite.url}/v1/agent/mailboxes",
        json={"address": "support@mailplane.test"},
        headers=headers,
    ).json()
    base = f"{suite.url}/v1/agent/mailboxes/{mailbox['id']}"
    draft = httpx.post(
        f"{base}/drafts", json={"to": ["carol@example.com"], "text": "Later."}, headers=headers
    ).json()
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3))
    scheduled = httpx.post(
        f"{suite.url}/v1/drafts/{draft['id']}/send", json={"sendAt": when}, headers=headers
    )
    assert scheduled.status_code == 202 and scheduled.json()["status"] == "scheduled"
    assert httpx.patch(base, json={"status": "paused"}, headers=headers).status_code == 200
    refused = httpx.post(
        f"{base}/messages",
        json={"to": ["carol@example.com"], "text": "x"},
        headers={**headers, "Idempotency-Key": "e2e-paused"},
    )
    assert refused.status_code == 409 and refused.json()["error"] == "mailbox_paused"
    message = f"{suite.url}/v1/messages/{scheduled.json()['id']}"
    assert httpx.get(message, headers=headers).json()["status"] == "held"
    time.sleep(4)  # past its sendAt: held, so nothing goes out
    assert box.received.empty()
    assert httpx.patch(base, json={"status": "active"}, headers=headers).status_code == 200
    _, rcpts, _ = box.next()
    assert rcpts == ["carol@example.com"]
    _wait_for(lambda: httpx.get(message, headers=headers).json()["status"] == "sent", "sent")
    time.sleep(1)
    assert box.received.empty()  # exactly once
    stats = httpx.get(f"{base}/stats", params={"period": "24h"}, headers=headers).json()
    assert stats["sends"] == {"total": 1, "period": 1}
    assert stats["deliverability"]["delivered"] == 1 and stats["deliverability"]["bounced"] == 0
