"""``python -m benchmarks.suite`` (``make bench``): what users see, in one run.

It starts the suite as ``make run`` does (``python -m deploy.local``: embedded
PostgreSQL, the four services and the gateway as separate processes) with its own
state folder and its own free ports, creates an ``enterprise`` account, and drives it
from separate load processes, so the load never shares the services' event loops:

- ``wrk`` (one thread, 50 connections) for REST, with a Lua script that sets the key
  and makes a unique username, clientId or ``Idempotency-Key`` for every POST;
- ``h2load`` (one thread, 50 connections, one stream each) for gRPC straight to the
  pods service, with a pre-encoded gRPC-framed ``GetPodRequest``;
- a second Python process for the floor: asyncpg single-row INSERTs, 16 in flight,
  into a scratch table in its own schema on the same PostgreSQL.

- mail (DESIGN §7.3 goals), with the ``smtp`` and ``worker`` processes up and the
  worker's DNS on a local zone: SMTP acceptance (``benchmarks.smtp_load``, 20
  sessions, 4 KB) beside an aiosmtpd listener that discards and Postfix's
  ``smtp-sink``; end to end for ``E2E_SECONDS`` (stored with its event, counted in
  the database, beside what the edge accepted in the same window); the thread list
  of an inbox seeded with 10,000 threads, first and deep page, beside the store's
  query straight on asyncpg. ``MAILPLANE_BENCH_ONLY=mail`` runs only these.

Each phase warms up (``WARM_UP_SECONDS``) and is measured for ``PHASE_SECONDS``;
the whole run takes about four minutes. It prints one table (throughput in
requests per second, p50 and p99 latency in milliseconds, error counts) with each
figure beside its peer or floor and their ratio, then stops everything. Speed is
reported, never asserted.

h2load sees HTTP/2 statuses, not ``grpc-status`` trailers, so a gRPC error would count
as a success. The run therefore checks the exact request body with a real gRPC call
first, and counts OK answers by bytes: an error is a trailers-only answer without a
message, so ``data bytes ÷ framed reply size`` is the number of OK replies. The
warm-up is a count-based h2load run that must get exactly one reply per request.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import httpx
from dnslib import MX, QTYPE, RR, TXT, A
from dnslib.server import BaseResolver, DNSLogger, DNSServer
from mailplane.pods.v1 import pods_pb2, pods_pb2_grpc

from deploy import settings as local_settings
from services.chassis.auth import INTERNAL_TOKEN_METADATA
from services.messages.store import MailStore, Reach

#: Seconds each phase is measured, and warmed up before.
PHASE_SECONDS = 10
WARM_UP_SECONDS = 2
#: Concurrent connections of the REST and gRPC load (one request in flight on each).
CONNECTIONS = 50
#: INSERTs in flight for the PostgreSQL floor (one connection each).
FLOOR_IN_FLIGHT = 16
#: Seconds the suite may take to answer ``/readyz`` and write the dev key.
START_TIMEOUT_SECONDS = 90.0
POD_CLIENT_ID = "bench"
#: The SMTP load (DESIGN §7.3 goals): sessions at once, message size in bytes, the
#: load's sender domain, and seconds of the sustained end-to-end phase
#: (``MAILPLANE_BENCH_E2E_SECONDS`` shortens it while iterating).
SMTP_SESSIONS, SMTP_MESSAGE_BYTES = 20, 4096
SENDER_DOMAIN = "load.example.com"
#: The recipients' domain of the send phases: its MX is this machine, where the
#: outbound sink (Postfix's smtp-sink, else an aiosmtpd discard) listens.
SINK_DOMAIN = "sink.bench.test"
#: Inboxes the REST send phase sends from, in turn.
SENDERS = 8
#: About 4 KB of text, the body of every sent message.
SEND_TEXT = "Bench message line of sixty-four characters, repeated to 4 KB.\n" * 64
E2E_SECONDS = int(os.environ.get("MAILPLANE_BENCH_E2E_SECONDS", "60"))
#: Seconds the spool may take to drain after the end-to-end phase.
DRAIN_SECONDS = 120.0
#: Threads seeded in one inbox, and the clients listing them (one request in
#: flight each, through the gateway; the floor runs the store's query with as many).
THREADS, THREAD_CLIENTS = 10_000, 4
#: Seconds after which wrk counts a request as timed out (an error).
WRK_TIMEOUT_SECONDS = 10
WRK = ["wrk", "-t1", "--timeout", f"{WRK_TIMEOUT_SECONDS}s"]

#: The wrk script. Arguments: method, API key, body template with one ``%s`` (empty
#: for no body), a prefix that makes the ``%s`` values unique to this wrk run. Its
#: ``done`` prints the summary as one JSON line (durations in microseconds).
WRK_SCRIPT = r"""
local threads = {}
function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end

function init(args)
  wrk.method = args[1]
  wrk.headers["Authorization"] = "Bearer " .. args[2]
  template = args[3]
  prefix = args[4] .. "t" .. tid .. "-"
  paths = {}
  for path in string.gmatch(args[5] or "", "%S+") do
    table.insert(paths, path)
  end
  counter = 0
  statuses = {}
  if template ~= "" then
    wrk.headers["Content-Type"] = "application/json"
  end
  static = wrk.format()
end

function request()
  if template == "" then
    return static
  end
  counter = counter + 1
  wrk.headers["Idempotency-Key"] = prefix .. counter
  local path = nil
  if #paths > 0 then
    path = paths[counter % #paths + 1]
  end
  return wrk.format(nil, path, nil, string.format(template, prefix .. counter))
end

function response(status, headers, body)
  if status > 299 then
    statuses[status] = (statuses[status] or 0) + 1
  end
end

function done(summary, latency, requests)
  local counts = {}
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("statuses")) do
      counts[status] = (counts[status] or 0) + n
    end
  end
  local non_2xx = {}
  for status, n in pairs(counts) do
    table.insert(non_2xx, string.format('"%d": %d', status, n))
  end
  local e = summary.errors
  io.write(string.format(
    '\n{"requests": %d, "duration_us": %d, "socket_errors": %d, "p50_us": %d, '
      .. '"p99_us": %d, "max_us": %d, "non_2xx": {%s}}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max, table.concat(non_2xx, ", ")))
end
"""


@dataclass(frozen=True)
class Phase:
    """One measured load phase.

    Attributes:
        name: what was measured, e.g. ``REST GET /v1/pods/{pod}``.
        requests: successful answers (2xx; gRPC OK) in the measured window.
        seconds: length of the measured window, in seconds.
        p50_ms: median latency, in milliseconds.
        p99_ms: 99th percentile latency, in milliseconds.
        errors: answers that failed (non-2xx, socket errors or timeouts for REST;
            HTTP/2 failures plus replies without a message for gRPC).
        error_kinds: the errors by kind, e.g. ``HTTP 504 x20``; empty when none.
    """

    name: str
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int
    error_kinds: str = ""

    @property
    def rate(self) -> float:
        """Throughput, in requests per second."""
        return self.requests / self.seconds


@dataclass(frozen=True)
class Suite:
    """The running suite as the load generators see it.

    Attributes:
        state: the launcher's state folder (settings.env, pgdata, dev-api-key).
        base_url: the gateway, ``http://127.0.0.1:<port>``.
        pods_addr: the pods service, ``127.0.0.1:<port>``.
        admin_dsn: the administrative DSN of the embedded PostgreSQL.
        internal_token: the service credential, for operator calls.
        smtp_port: the MX listener's port on 127.0.0.1.
        submission_port: the STARTTLS submission listener's port on 127.0.0.1.
    """

    state: Path
    base_url: str
    pods_addr: str
    admin_dsn: str
    internal_token: str
    smtp_port: int
    submission_port: int


class SenderZone(BaseResolver):  # type: ignore[misc]
    """The DNS the worker checks senders against (``MAILPLANE_DNS_NAMESERVERS``): the
    load's sender domain publishes SPF for 127.0.0.1, every other name has no
    records. The bench measures Mailplane, not a resolver on the network."""

    def __init__(self) -> None:
        self.port = free_port()

    def resolve(self, request: Any, handler: Any) -> Any:
        reply = request.reply()
        name = str(request.q.qname).rstrip(".").lower()
        kind = QTYPE[request.q.qtype]
        if name == SENDER_DOMAIN and kind == "TXT":
            spf = TXT("v=spf1 ip4:127.0.0.1 -all")
            reply.add_answer(RR(request.q.qname, request.q.qtype, rdata=spf, ttl=300))
        elif name == SINK_DOMAIN and kind == "MX":
            mx = MX(f"mx.{SINK_DOMAIN}", 10)
            reply.add_answer(RR(request.q.qname, request.q.qtype, rdata=mx, ttl=300))
        elif name == f"mx.{SINK_DOMAIN}" and kind == "A":
            reply.add_answer(RR(request.q.qname, request.q.qtype, rdata=A("127.0.0.1"), ttl=300))
        return reply


def free_port() -> int:
    """Returns a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running_suite() -> Iterator[Suite]:
    """Starts ``python -m deploy.local`` in a fresh state folder on free ports.

    Yields:
        The suite once ``/readyz`` answers 200 and the dev key is written.

    Raises:
        TimeoutError: not ready within ``START_TIMEOUT_SECONDS`` (its log is printed).
        RuntimeError: the launcher exited early (its log is printed).
    """
    state = Path(tempfile.mkdtemp(prefix="mailplane-bench-"))
    gateway_port = free_port()
    smtp_port = free_port()
    addrs = {
        name: f"127.0.0.1:{free_port()}"
        for name in ("pods", "inboxes", "domains", "mailboxes", "messages")
    }
    zone = SenderZone()
    outbound = smtp_floor("smtp-sink" if shutil.which("smtp-sink") else "aiosmtpd")
    outbound_port = outbound.__enter__()
    submission_port = free_port()
    env = {
        **os.environ,
        "MAILPLANE_STATE_DIR": str(state),
        "MAILPLANE_BIND_HOST": "127.0.0.1",
        "MAILPLANE_GATEWAY_PORT": str(gateway_port),
        **{f"MAILPLANE_{name.upper()}_ADDR": addr for name, addr in addrs.items()},
        "MAILPLANE_SMTP_INBOUND_ADDR": f"127.0.0.1:{smtp_port}",
        "MAILPLANE_SUBMISSION_ADDR": f"127.0.0.1:{submission_port}",
        "MAILPLANE_OUTBOUND_PORT": str(outbound_port),
        # The send phases measure throughput, not the per-sender limits.
        "MAILPLANE_SEND_LIMIT_PER_MINUTE": "0",
        "MAILPLANE_SEND_LIMIT_PER_DAY": "0",
        "MAILPLANE_SUBMISSIONS_ADDR": f"127.0.0.1:{free_port()}",
        "MAILPLANE_IMAP_ADDR": f"127.0.0.1:{free_port()}",
        "MAILPLANE_DNS_NAMESERVERS": f"127.0.0.1:{zone.port}",
    }
    env.pop("MAILPLANE_DATABASE_URL", None)  # always the embedded PostgreSQL of `state`
    log_path = state / "suite.log"
    dns = DNSServer(
        zone, port=zone.port, address="127.0.0.1", logger=DNSLogger(logf=lambda *_: None)
    )
    dns.start_thread()
    base_url = f"http://127.0.0.1:{gateway_port}"
    with log_path.open("wb") as log:
        launcher = subprocess.Popen(
            [sys.executable, "-m", "deploy.local"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_ready(launcher, base_url, state / "dev-api-key", log_path)
        values = local_settings.read_env_file(state / local_settings.SETTINGS_FILE)
        yield Suite(
            state=state,
            base_url=base_url,
            pods_addr=addrs["pods"],
            admin_dsn=values["MAILPLANE_DATABASE_URL"],
            internal_token=values["MAILPLANE_INTERNAL_TOKEN"],
            smtp_port=smtp_port,
            submission_port=submission_port,
        )
    finally:
        outbound.__exit__(None, None, None)
        dns.stop()
        launcher.send_signal(signal.SIGTERM)  # stops the services, then PostgreSQL
        try:
            launcher.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait()
        shutil.rmtree(state, ignore_errors=True)


def _wait_ready(launcher: subprocess.Popen[bytes], base_url: str, key: Path, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while True:
        if launcher.poll() is not None:
            sys.stderr.write(log.read_text())
            raise RuntimeError(f"the launcher exited with {launcher.returncode}")
        try:
            if key.exists() and httpx.get(f"{base_url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            sys.stderr.write(log.read_text())
            raise TimeoutError(f"{base_url}/readyz did not answer 200")
        time.sleep(0.3)


def create_account(suite: Suite) -> str:
    """Creates an ``enterprise`` account (no inbox limit) as the operator does.

    Returns:
        Its API key.
    """
    with grpc.insecure_channel(suite.pods_addr) as channel:
        created = pods_pb2_grpc.AccountServiceStub(channel).CreateAccount(
            pods_pb2.CreateAccountRequest(name="Bench", plan=pods_pb2.PLAN_ENTERPRISE),
            metadata=((INTERNAL_TOKEN_METADATA, suite.internal_token),),
            timeout=10,
        )
    return str(created.api_key)


def run_wrk(
    name: str,
    url: str,
    key: str,
    method: str = "GET",
    template: str = "",
    connections: int = CONNECTIONS,
    paths: tuple[str, ...] = (),
) -> Phase:
    """Warms up, then measures ``url`` with wrk (1 thread, ``connections`` connections).

    Args:
        name: the row's name.
        url: the full URL to call.
        key: the API key sent as ``Authorization: Bearer``.
        method: the HTTP method.
        template: a JSON body with one ``%s``, filled with a value unique to each
            request (e.g. ``{"username": "%s"}``); empty sends no body.
        paths: paths the requests take in turn (the URL's path when empty).

    Returns:
        The measured phase: 2xx answers per second; errors are non-2xx answers plus
        socket errors and timeouts (10 s).
    """
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        script.write(WRK_SCRIPT)
        script.flush()
        run = secrets.token_hex(3)
        summaries = [
            _wrk(
                script.name,
                url,
                seconds,
                method,
                key,
                template,
                f"b{run}{stage}",
                connections,
                " ".join(paths),
            )
            for stage, seconds in (("w", WARM_UP_SECONDS), ("m", PHASE_SECONDS))
        ]
    summary = summaries[-1]
    non_2xx: dict[str, int] = summary["non_2xx"]
    return Phase(
        name=name,
        requests=max(0, summary["requests"] - sum(non_2xx.values())),
        seconds=summary["duration_us"] / 1e6,
        p50_ms=summary["p50_us"] / 1000,
        p99_ms=summary["p99_us"] / 1000,
        errors=sum(non_2xx.values()) + summary["socket_errors"],
        error_kinds=", ".join(
            [f"HTTP {status} x{n}" for status, n in sorted(non_2xx.items())]
            + [f"socket errors/timeouts x{summary['socket_errors']}"]
            * bool(summary["socket_errors"])
        ),
    )


def _wrk(
    script: str,
    url: str,
    seconds: int,
    method: str,
    key: str,
    template: str,
    prefix: str,
    connections: int,
    paths: str = "",
) -> dict[str, Any]:
    out = subprocess.run(
        [
            *WRK,
            f"-c{connections}",
            f"-d{seconds}s",
            "-s",
            script,
            url,
            "--",
            method,
            key,
            template,
            prefix,
            paths,
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    summary: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    # wrk leaves up to CONNECTIONS requests in the services when it stops; let them
    # finish (they take at most the slowest latency seen) so that the next run does
    # not start behind them.
    slowest = summary["max_us"] / 1e6 if summary["requests"] else WRK_TIMEOUT_SECONDS
    time.sleep(slowest + 0.5)
    return summary


def get_pod_body(pod_id: str) -> bytes:
    """Returns ``GetPodRequest(pod_id)`` as one gRPC message frame (a 0 compressed flag,
    the 4-byte big-endian length, the protobuf bytes)."""
    message = pods_pb2.GetPodRequest(pod_id=pod_id).SerializeToString()
    return struct.pack(">BI", 0, len(message)) + message


def check_grpc_body(suite: Suite, key: str, body: bytes) -> int:
    """Sends the exact bytes h2load will send through a real gRPC client.

    Returns:
        The size of the framed reply in bytes (5 + the message), which every OK
        reply of the same call has.

    Raises:
        grpc.RpcError: the call does not answer OK.
    """
    with grpc.insecure_channel(suite.pods_addr) as channel:
        call = channel.unary_unary(
            "/mailplane.pods.v1.PodService/GetPod",
            request_serializer=lambda raw: raw,
            response_deserializer=lambda raw: raw,
        )
        reply: bytes = call(body[5:], metadata=(("authorization", f"Bearer {key}"),), timeout=5)
    return 5 + len(reply)


def run_h2load(name: str, suite: Suite, key: str, body: bytes, reply_size: int) -> Phase:
    """Measures PodService/GetPod with h2load (1 thread, ``CONNECTIONS`` connections,
    one stream each) straight to the pods service.

    The warm-up is a count-based run that must get exactly one framed reply per
    request: h2load only sees HTTP status 200, and a gRPC error is a trailers-only
    answer without one.

    Args:
        name: the row's name.
        suite: the running suite.
        key: the API key sent as ``authorization: Bearer``.
        body: the gRPC-framed request.
        reply_size: bytes of one framed OK reply, to count OK replies by bytes.

    Returns:
        The measured phase; errors are HTTP/2 failures plus replies that carried
        no message.

    Raises:
        RuntimeError: a warm-up request did not get its reply.
    """
    with tempfile.TemporaryDirectory() as folder:
        body_file = Path(folder) / "get_pod.bin"
        body_file.write_bytes(body)
        log_file = Path(folder) / "requests.tsv"
        url = f"http://{suite.pods_addr}/mailplane.pods.v1.PodService/GetPod"
        h2load = ["h2load", "-t1", f"-c{CONNECTIONS}", "-m1", "-d", str(body_file)]
        h2load += ["-H", "content-type: application/grpc", "-H", "te: trailers"]
        h2load += ["-H", f"authorization: Bearer {key}"]
        warm_up = WARM_UP_SECONDS * 1000  # requests: about the warm-up time at ~1,000 req/s
        sanity = _h2load([*h2load, f"-n{warm_up}", url])
        if sanity.ok_replies(reply_size) != warm_up:
            raise RuntimeError(
                f"{warm_up} GetPod requests got {sanity.ok_replies(reply_size)} OK replies:\n"
                + sanity.output
            )
        measured = _h2load([*h2load, f"-D{PHASE_SECONDS}", f"--log-file={log_file}", url])
        durations_us = [int(line.split("\t")[2]) for line in log_file.read_text().splitlines()]
    q = statistics.quantiles(durations_us, n=100)
    ok = measured.ok_replies(reply_size)
    return Phase(
        name=name,
        requests=ok,
        seconds=measured.done / measured.rate,
        p50_ms=q[49] / 1000,
        p99_ms=q[98] / 1000,
        errors=measured.failed + (measured.succeeded - ok),
        error_kinds=", ".join(
            [f"HTTP/2 failures x{measured.failed}"] * bool(measured.failed)
            + [f"no reply message x{measured.succeeded - ok}"] * bool(measured.succeeded - ok)
        ),
    )


@dataclass(frozen=True)
class H2loadSummary:
    """What h2load prints, parsed.

    Attributes:
        output: the whole output.
        rate: requests done per second of the measured window.
        done: requests done.
        succeeded: requests answered with HTTP 2xx.
        failed: requests failed, errored or timed out.
        data_bytes: bytes of DATA frames received.
    """

    output: str
    rate: float
    done: int
    succeeded: int
    failed: int
    data_bytes: int

    def ok_replies(self, reply_size: int) -> int:
        """Returns how many replies of ``reply_size`` bytes the data adds up to."""
        return self.data_bytes // reply_size


def _h2load(command: list[str]) -> H2loadSummary:
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return H2loadSummary(
        output=out,
        rate=float(_field(r"finished in [\d.]+[mu]?s, ([\d.]+) req/s", out)),
        done=int(_field(r"(\d+) done", out)),
        succeeded=int(_field(r"(\d+) succeeded", out)),
        failed=sum(int(_field(rf"(\d+) {kind}", out)) for kind in ("failed", "errored", "timeout")),
        data_bytes=int(_field(r"\((\d+)\) data", out)),
    )


def _field(pattern: str, text: str) -> str:
    match = re.search(pattern, text)
    if match is None:
        raise ValueError(f"no {pattern!r} in the load generator's output:\n{text}")
    return match.group(1)


def run_insert_floor(suite: Suite) -> Phase:
    """Measures single-row INSERTs on the suite's PostgreSQL in a separate process.

    Returns:
        The measured phase (``FLOOR_IN_FLIGHT`` connections, one INSERT each in flight).
    """
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.suite", "insert-floor", suite.admin_dsn],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return Phase(**json.loads(out))


FLOOR_SCHEMA = "bench_floor"
CREATE_FLOOR_TABLE = f"""
CREATE SCHEMA {FLOOR_SCHEMA};
CREATE TABLE {FLOOR_SCHEMA}.inbox (
    id text PRIMARY KEY,
    account_id text NOT NULL,
    email text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now()
)
"""
INSERT_FLOOR_ROW = f"INSERT INTO {FLOOR_SCHEMA}.inbox (id, account_id, email) VALUES ($1, $2, $3)"
DROP_FLOOR_SCHEMA = f"DROP SCHEMA IF EXISTS {FLOOR_SCHEMA} CASCADE"


async def insert_floor(dsn: str) -> Phase:
    """Measures autocommit single-row INSERTs into a scratch table, ``FLOOR_IN_FLIGHT``
    connections each with one INSERT in flight; the table's schema is dropped after.

    Args:
        dsn: an administrative DSN of the database.

    Returns:
        The phase measured after ``WARM_UP_SECONDS`` of warm-up.
    """
    admin = await asyncpg.connect(dsn)
    await admin.execute(DROP_FLOOR_SCHEMA)
    await admin.execute(CREATE_FLOOR_TABLE)
    connections = [await asyncpg.connect(dsn) for _ in range(FLOOR_IN_FLIGHT)]
    loop = asyncio.get_running_loop()
    measure_from = loop.time() + WARM_UP_SECONDS
    stop_at = measure_from + PHASE_SECONDS
    latencies: list[float] = []

    async def insert_rows(worker: int, conn: asyncpg.Connection) -> None:
        n = 0
        while (started := loop.time()) < stop_at:
            n += 1
            row_id = f"r{worker}-{n}"
            await conn.execute(INSERT_FLOOR_ROW, row_id, "acct_bench", f"{row_id}@floor.test")
            if started >= measure_from:
                latencies.append(loop.time() - started)

    try:
        await asyncio.gather(*(insert_rows(i, c) for i, c in enumerate(connections)))
    finally:
        for conn in connections:
            await conn.close()
        await admin.execute(DROP_FLOOR_SCHEMA)
        await admin.close()
    q = statistics.quantiles(latencies, n=100)
    return Phase(
        name=f"asyncpg single-row INSERT ({FLOOR_IN_FLIGHT} in flight)",
        requests=len(latencies),
        seconds=float(PHASE_SECONDS),
        p50_ms=q[49] * 1000,
        p99_ms=q[98] * 1000,
        errors=0,
    )


# --- mail (DESIGN §7.3, §7.4 goals) -------------------------------------------------

#: Received-message events of one inbox: each is committed with its stored message.
COUNT_STORED = """
SELECT count(*) FROM messages.events WHERE inbox_id = $1 AND type LIKE 'message.received%'
"""
COUNT_SPOOLED = "SELECT count(*) FROM messages.spool"


def create_inbox(suite: Suite, key: str, username: str) -> dict[str, Any]:
    """Creates an inbox on the shared domain (its route is claimed with it)."""
    answer = httpx.post(
        f"{suite.base_url}/v1/inboxes",
        json={"username": username},
        headers={"Authorization": f"Bearer {key}"},
    )
    answer.raise_for_status()
    inbox: dict[str, Any] = answer.json()
    return inbox


def _smtp_command(port: int, to: str, seconds: float) -> list[str]:
    return [
        sys.executable,
        *("-m", "benchmarks.smtp_load", "send", "--port", str(port), "--to", to),
        *("--sessions", str(SMTP_SESSIONS), "--size", str(SMTP_MESSAGE_BYTES)),
        *("--seconds", str(seconds), "--warm-up", str(WARM_UP_SECONDS)),
    ]


def _smtp_phase(name: str, figures: dict[str, Any]) -> Phase:
    refused: dict[str, int] = figures["refused"]
    return Phase(
        name=name,
        requests=figures["accepted"],
        seconds=figures["seconds"],
        p50_ms=figures["p50_ms"],
        p99_ms=figures["p99_ms"],
        errors=sum(refused.values()),
        error_kinds=", ".join(f"SMTP {code} x{n}" for code, n in sorted(refused.items())),
    )


def run_smtp(name: str, port: int, to: str) -> Phase:
    """Measures SMTP acceptance on ``127.0.0.1:port`` with ``benchmarks.smtp_load``
    (``SMTP_SESSIONS`` sessions, ``SMTP_MESSAGE_BYTES``-byte messages); latency is
    from the end of DATA to the final reply."""
    out = subprocess.run(
        _smtp_command(port, to, PHASE_SECONDS), check=True, capture_output=True, text=True
    ).stdout
    return _smtp_phase(name, json.loads(out))


@contextmanager
def smtp_floor(kind: str) -> Iterator[int]:
    """A discarding SMTP listener: ``aiosmtpd`` (``benchmarks.smtp_load sink``) or
    Postfix's ``smtp-sink``; yields its port."""
    port = free_port()
    if kind == "aiosmtpd":
        command = [sys.executable, "-m", "benchmarks.smtp_load", "sink", "--port", str(port)]
    else:
        command = ["smtp-sink", "-u", "nobody", f"127.0.0.1:{port}", "1000"]
    sink = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not _listening(port):
            if time.monotonic() > deadline or sink.poll() is not None:
                raise RuntimeError(f"{kind} did not listen on {port}")
            time.sleep(0.05)
        yield port
    finally:
        sink.terminate()
        sink.wait(timeout=10)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass(frozen=True)
class EndToEnd:
    """The sustained phase: accepted at the edge and stored (with its event) by the
    worker over the same window, and the spool left behind."""

    accepted: Phase
    stored: int
    seconds: float
    backlog: int

    @property
    def rate(self) -> float:
        """Messages stored, with their event, per second of the window."""
        return self.stored / self.seconds


def run_end_to_end(suite: Suite, inbox: dict[str, Any]) -> EndToEnd:
    """Sends for ``E2E_SECONDS`` while counting what the worker stores."""

    async def stored() -> int:
        conn = await asyncpg.connect(suite.admin_dsn)
        try:
            return int(await conn.fetchval(COUNT_STORED, inbox["id"]))
        finally:
            await conn.close()

    async def spooled() -> int:
        conn = await asyncpg.connect(suite.admin_dsn)
        try:
            return int(await conn.fetchval(COUNT_SPOOLED))
        finally:
            await conn.close()

    load = subprocess.Popen(
        _smtp_command(suite.smtp_port, inbox["email"], E2E_SECONDS),
        stdout=subprocess.PIPE,
        text=True,
    )
    time.sleep(WARM_UP_SECONDS)
    before = asyncio.run(stored())
    started = time.monotonic()
    time.sleep(E2E_SECONDS)
    after = asyncio.run(stored())
    seconds = time.monotonic() - started
    out, _ = load.communicate(timeout=60)
    backlog = asyncio.run(spooled())
    deadline = time.monotonic() + DRAIN_SECONDS
    while asyncio.run(spooled()) and time.monotonic() < deadline:
        time.sleep(1)
    accepted = _smtp_phase(f"SMTP accept, sustained {E2E_SECONDS} s", json.loads(out))
    return EndToEnd(accepted, after - before, seconds, backlog)


async def seed_threads(suite: Suite, inbox: dict[str, Any], account_id: str) -> None:
    """Writes ``THREADS`` threads of one inbox straight into the messages schema,
    one minute apart."""
    conn = await asyncpg.connect(suite.admin_dsn)
    try:
        await conn.execute(
            """
            INSERT INTO messages.threads (id, account_id, pod_id, owner_id, subject, labels,
                preview, message_count, senders, recipients, last_message_at)
            SELECT 'thr_bench' || lpad(g::text, 8, '0'), $1, $2, $3, 'Quote ' || g,
                '{received,unread}', 'Hello, could you send us a quote?', 1,
                ARRAY['ada@example.com'], ARRAY[$4], now() - g * interval '1 minute'
            FROM generate_series(1, $5::int) g
            """,
            account_id,
            inbox["podId"],
            inbox["id"],
            inbox["email"],
            THREADS,
        )
        await conn.execute("ANALYZE messages.threads")
    finally:
        await conn.close()


def deep_page_token(suite: Suite, key: str, inbox_id: str, depth: int) -> str:
    """The pageToken of the page that starts after ``depth`` threads."""
    token = ""
    for _ in range(depth // 100):
        page = httpx.get(
            f"{suite.base_url}/v1/inboxes/{inbox_id}/threads",
            params={"pageSize": 100, **({"pageToken": token} if token else {})},
            headers={"Authorization": f"Bearer {key}"},
        )
        page.raise_for_status()
        token = page.json()["nextPageToken"]
    return token


def run_thread_floor(suite: Suite, account_id: str, inbox_id: str, deep: bool) -> Phase:
    """Measures the store's thread-list query in a separate process."""
    out = subprocess.run(
        [
            sys.executable,
            *("-m", "benchmarks.suite", "thread-floor", suite.admin_dsn, account_id, inbox_id),
            *(["--deep"] if deep else []),
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return Phase(**json.loads(out))


async def thread_floor(dsn: str, account_id: str, inbox_id: str, deep: bool) -> Phase:
    """``MailStore.list_threads`` straight on asyncpg (no gRPC, no gateway), with
    ``THREAD_CLIENTS`` calls in flight, for the default page size (50).

    Args:
        deep: start after half the threads, as a deep pageToken does.
    """
    pool = await asyncpg.create_pool(
        dsn,
        min_size=THREAD_CLIENTS,
        max_size=THREAD_CLIENTS,
        server_settings={"search_path": "messages"},
    )
    store = MailStore(pool)
    reach = Reach(owner_ids=(inbox_id,))
    resume = None
    if deep:
        row = await pool.fetchrow(
            "SELECT last_message_at, id FROM threads WHERE owner_id = $1"
            " ORDER BY last_message_at DESC, id DESC OFFSET $2 LIMIT 1",
            inbox_id,
            THREADS // 2,
        )
        resume = [row["last_message_at"].isoformat(), row["id"]]
    loop = asyncio.get_running_loop()
    measure_from = loop.time() + WARM_UP_SECONDS
    stop_at = measure_from + PHASE_SECONDS
    latencies: list[float] = []

    async def client() -> None:
        while (started := loop.time()) < stop_at:
            t0 = time.perf_counter()
            page = await store.list_threads(
                account_id, reach, [], ["spam", "trash"], None, resume, 50
            )
            assert len(page.items) == 50
            if started >= measure_from:
                latencies.append(time.perf_counter() - t0)

    try:
        await asyncio.gather(*(client() for _ in range(THREAD_CLIENTS)))
    finally:
        await pool.close()
    q = statistics.quantiles(latencies, n=100)
    return Phase(
        name=f"store query, {'deep page' if deep else 'first page'} ({THREAD_CLIENTS} in flight)",
        requests=len(latencies),
        seconds=float(PHASE_SECONDS),
        p50_ms=q[49] * 1000,
        p99_ms=q[98] * 1000,
        errors=0,
    )


def _row(phase: Phase, beside: str = "") -> str:
    if phase.errors:
        beside = f"{beside}; errors: {phase.error_kinds}"
    return (
        f"{phase.name:<42} {phase.rate:>8,.0f} {phase.p50_ms:>8.1f} {phase.p99_ms:>8.1f} "
        f"{phase.errors:>6}  {beside}"
    ).rstrip()


def table(
    rest_get: Phase,
    grpc_get: Phase,
    create_inbox: Phase,
    create_pod: Phase,
    floor: Phase,
    load_average: float,
) -> str:
    """Returns the report: one row per phase, each beside its peer or floor.

    Args:
        rest_get: REST GET /v1/pods/{pod}.
        grpc_get: PodService/GetPod straight to the pods service.
        create_inbox: REST POST /v1/inboxes with new addresses.
        create_pod: REST POST /v1/pods.
        floor: asyncpg single-row INSERTs on the same PostgreSQL.
        load_average: the machine's 1-minute load average before the run (other
            work on the machine lowers every figure).
    """
    header = f"{'phase':<42} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}  beside"
    return "\n".join(
        [
            f"\nMailplane bench: {CONNECTIONS} connections (REST: wrk; gRPC: h2load), "
            f"{WARM_UP_SECONDS} s warm-up + {PHASE_SECONDS} s per phase, one run; "
            f"{os.cpu_count()} CPUs, load average {load_average:.1f} before it",
            "req/s counts 2xx (gRPC: OK) answers; p50/p99 are over every answer",
            header,
            "-" * len(header),
            _row(rest_get, f"gRPC ÷ REST = {grpc_get.rate / rest_get.rate:.2f}x (gateway cost)"),
            _row(grpc_get, "peer of the REST GET"),
            _row(create_inbox, f"÷ INSERT floor = {create_inbox.rate / floor.rate:.3f}"),
            _row(create_pod, f"÷ INSERT floor = {create_pod.rate / floor.rate:.3f}"),
            _row(floor, "floor of the creates, same PostgreSQL"),
            "",
        ]
    )


@dataclass(frozen=True)
class MailFigures:
    """The mail phases of one run."""

    accept: Phase
    aiosmtpd_floor: Phase
    postfix_sink: Phase | None
    end_to_end: EndToEnd
    threads_first: Phase
    threads_deep: Phase
    floor_first: Phase
    floor_deep: Phase


def mail_table(mail: MailFigures) -> str:
    """Returns the mail report: each figure beside its goal and its floor or peer."""
    accept, e2e = mail.accept, mail.end_to_end
    header = f"{'phase':<42} {'msg/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}  beside"
    peer = mail.postfix_sink
    rows = [
        f"\nMail: {SMTP_SESSIONS} SMTP sessions (one connection each, reused), "
        f"{SMTP_MESSAGE_BYTES} B messages, latency = end of DATA → final reply; "
        f"thread lists: {THREAD_CLIENTS} clients, {THREADS:,} threads in one inbox",
        header,
        "-" * len(header),
        _row(
            accept,
            f"goal ≥ 400/s, p99 ≤ 100 ms; ÷ aiosmtpd discard = "
            f"{accept.rate / mail.aiosmtpd_floor.rate:.2f}"
            + (f"; ÷ smtp-sink = {accept.rate / peer.rate:.2f}" if peer else ""),
        ),
        _row(mail.aiosmtpd_floor, "floor: the edge's library and loop, no database"),
        *([_row(peer, "peer: Postfix's protocol-only sink (C)")] if peer else []),
        _row(
            e2e.accepted,
            f"same window: stored with event {e2e.rate:,.0f}/s (goal ≥ 300/s), "
            f"stored ÷ accepted = {e2e.rate / e2e.accepted.rate:.2f}, "
            f"spool left {e2e.backlog:,}",
        ),
        _row(
            mail.threads_first,
            f"goal p99 ≤ 50 ms; p99 ÷ store query = "
            f"{mail.threads_first.p99_ms / mail.floor_first.p99_ms:.1f}x",
        ),
        _row(mail.floor_first, "floor of the first page"),
        _row(
            mail.threads_deep,
            f"goal p99 ≤ 50 ms; p99 ÷ store query = "
            f"{mail.threads_deep.p99_ms / mail.floor_deep.p99_ms:.1f}x",
        ),
        _row(mail.floor_deep, "floor of the deep page"),
        "",
    ]
    return "\n".join(rows)


def run_mail(suite: Suite, key: str) -> MailFigures:
    """Measures the mail phases on the running suite (the worker ingests meanwhile)."""
    loaded = create_inbox(suite, key, "load")
    accept = run_smtp("SMTP accept → spool (250 after commit)", suite.smtp_port, loaded["email"])
    _drain(suite)
    with smtp_floor("aiosmtpd") as port:
        aiosmtpd_floor = run_smtp("aiosmtpd discard (no database)", port, loaded["email"])
    postfix_sink = None
    if shutil.which("smtp-sink"):
        with smtp_floor("smtp-sink") as port:
            postfix_sink = run_smtp("Postfix smtp-sink", port, loaded["email"])
    end_to_end = run_end_to_end(suite, loaded)
    listed = create_inbox(suite, key, "threads")
    account_id = httpx.get(
        f"{suite.base_url}/v1/account", headers={"Authorization": f"Bearer {key}"}
    ).json()["id"]
    asyncio.run(seed_threads(suite, listed, account_id))
    url = f"{suite.base_url}/v1/inboxes/{listed['id']}/threads"
    threads_first = run_wrk(
        "REST GET /v1/inboxes/{id}/threads", url, key, connections=THREAD_CLIENTS
    )
    token = deep_page_token(suite, key, listed["id"], THREADS // 2)
    threads_deep = run_wrk(
        f"  … pageToken after {THREADS // 2:,}",
        f"{url}?pageToken={token}",
        key,
        connections=THREAD_CLIENTS,
    )
    return MailFigures(
        accept=accept,
        aiosmtpd_floor=aiosmtpd_floor,
        postfix_sink=postfix_sink,
        end_to_end=end_to_end,
        threads_first=threads_first,
        threads_deep=threads_deep,
        floor_first=run_thread_floor(suite, account_id, listed["id"], deep=False),
        floor_deep=run_thread_floor(suite, account_id, listed["id"], deep=True),
    )


#: Deliveries to the sink that got their 250 in a window, and their p99 from queued
#: to 250 in seconds.
DELIVERED_IN = """
SELECT count(*) AS n,
       coalesce(percentile_cont(0.99) WITHIN GROUP (
           ORDER BY extract(epoch FROM d.updated_at - m.created_at)), 0) AS p99
FROM messages.deliveries d JOIN messages.messages m ON m.id = d.message_id
WHERE d.domain = $1 AND d.state = 'sent' AND d.updated_at >= $2 AND d.updated_at < $3
"""


@dataclass(frozen=True)
class Sending:
    """The send phases: REST sends accepted, what the worker delivered (DKIM-signed,
    to the sink) in the same window with its p99 from queued to 250, and SMTP
    submission beside its floor."""

    accepted: Phase
    delivered: int
    delivered_seconds: float
    queue_to_250_p99_ms: float
    submission: Phase
    submission_floor: Phase


def run_sending(suite: Suite, key: str) -> Sending:
    """Sends 4 KB messages over REST for a phase while the worker signs and delivers
    them to the sink; then submits over SMTP (STARTTLS + AUTH) beside a floor."""
    # Eight senders in turn: one inbox's sends are serialized by its IMAP UID
    # counter (a row locked from the insert to the commit, so UIDs follow commit
    # order, RFC 3501 §2.3.1.1), which is not the per-message cost measured here.
    senders = [create_inbox(suite, key, f"sender{i}") for i in range(SENDERS)]
    inbox = senders[0]
    template = json.dumps({"to": [f"r%s@{SINK_DOMAIN}"], "subject": "Bench", "text": SEND_TEXT})
    accepted = run_wrk(
        f"REST POST /v1/inboxes/{{id}}/messages, {SENDERS} inboxes",
        f"{suite.base_url}/v1/inboxes/{inbox['id']}/messages",
        key,
        "POST",
        template,
        paths=tuple(f"/v1/inboxes/{s['id']}/messages" for s in senders),
    )
    ended = time.time()

    async def delivered() -> tuple[int, float]:
        conn = await asyncpg.connect(suite.admin_dsn)
        try:
            # The measured window: the wrk phase's last PHASE_SECONDS.
            row = await conn.fetchrow(
                DELIVERED_IN,
                SINK_DOMAIN,
                datetime.fromtimestamp(ended - PHASE_SECONDS, UTC),
                datetime.fromtimestamp(ended, UTC),
            )
            return int(row["n"]), float(row["p99"])
        finally:
            await conn.close()

    count, p99 = asyncio.run(delivered())
    cafile = suite.state / "tls" / "cert.pem"
    smtp = inbox["credentials"]["smtp"]
    submission = run_submission(
        "SMTP submission (STARTTLS, AUTH once)",
        suite.submission_port,
        smtp["username"],
        smtp["password"],
        cafile,
    )
    floor_port = free_port()
    floor = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "benchmarks.submission_load",
            "floor",
            str(floor_port),
            str(cafile),
            str(suite.state / "tls" / "key.pem"),
        ]
    )
    try:
        deadline = time.monotonic() + 10
        while not _listening(floor_port) and time.monotonic() < deadline:
            time.sleep(0.05)
        submission_floor = run_submission(
            "aiosmtpd TLS + AUTH, discard", floor_port, "any@example.com", "any", cafile
        )
    finally:
        floor.terminate()
        floor.wait(timeout=10)
    return Sending(accepted, count, PHASE_SECONDS, p99 * 1000, submission, submission_floor)


def run_submission(name: str, port: int, user: str, password: str, cafile: Path) -> Phase:
    """Measures authenticated submission with ``benchmarks.submission_load``."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.submission_load",
            "127.0.0.1",
            str(port),
            user,
            password,
            str(cafile),
            str(PHASE_SECONDS),
            f"submitted@{SINK_DOMAIN}",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    figures = json.loads(out.strip().splitlines()[-1])
    return Phase(
        name=name,
        requests=figures["messages"],
        seconds=figures["seconds"],
        p50_ms=figures["p50_ms"],
        p99_ms=figures["p99_ms"],
        errors=figures["errors"],
        error_kinds=", ".join(f"{k} x{n}" for k, n in sorted(figures["error_kinds"].items())),
    )


def sending_table(sending: Sending) -> str:
    """The send report: each figure beside its goal and its floor."""
    header = f"{'phase':<42} {'msg/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}  beside"
    delivered_rate = sending.delivered / sending.delivered_seconds
    rows = [
        f"\nSending: REST {CONNECTIONS} connections, 4 KB text to {SINK_DOMAIN} (its MX: the "
        "local sink); the worker signs (DKIM, by the domains service) and delivers meanwhile",
        header,
        "-" * len(header),
        _row(
            sending.accepted,
            f"goal ≥ 500/s; same window: delivered DKIM-signed {delivered_rate:,.0f}/s "
            f"(goal ≥ 200/s), p99 queued → 250 {sending.queue_to_250_p99_ms:,.0f} ms "
            "(goal ≤ 1,000 ms)",
        ),
        _row(
            sending.submission,
            "goal ≥ 100/s; ÷ floor = "
            f"{sending.submission.rate / sending.submission_floor.rate:.2f}",
        ),
        _row(sending.submission_floor, "floor: the listener's library, TLS and AUTH, no work"),
        "",
    ]
    return "\n".join(rows)


def _drain(suite: Suite) -> None:
    async def spooled() -> int:
        conn = await asyncpg.connect(suite.admin_dsn)
        try:
            return int(await conn.fetchval(COUNT_SPOOLED))
        finally:
            await conn.close()

    deadline = time.monotonic() + DRAIN_SECONDS
    while asyncio.run(spooled()) and time.monotonic() < deadline:
        time.sleep(1)


def run() -> None:
    """Starts the suite, measures every phase, prints the table, stops the suite."""
    load_average = os.getloadavg()[0]
    only_mail = os.environ.get("MAILPLANE_BENCH_ONLY") == "mail"
    with running_suite() as suite:
        key = create_account(suite)
        mail = run_mail(suite, key)
        sending = run_sending(suite, key)
        if only_mail:
            sys.stdout.write(mail_table(mail))
            sys.stdout.write(sending_table(sending))
            return
        pod = httpx.post(
            f"{suite.base_url}/v1/pods",
            json={"clientId": POD_CLIENT_ID},
            headers={"Authorization": f"Bearer {key}"},
        )
        pod.raise_for_status()
        body = get_pod_body(POD_CLIENT_ID)
        reply_size = check_grpc_body(suite, key, body)
        rest_get = run_wrk(
            "REST GET /v1/pods/{pod}", f"{suite.base_url}/v1/pods/{POD_CLIENT_ID}", key
        )
        grpc_get = run_h2load("gRPC PodService/GetPod (direct)", suite, key, body, reply_size)
        created = run_wrk(
            "REST POST /v1/inboxes (new address)",
            f"{suite.base_url}/v1/inboxes",
            key,
            "POST",
            '{"username": "%s"}',
        )
        create_pod = run_wrk(
            "REST POST /v1/pods", f"{suite.base_url}/v1/pods", key, "POST", '{"clientId": "%s"}'
        )
        floor = run_insert_floor(suite)
    sys.stdout.write(table(rest_get, grpc_get, created, create_pod, floor, load_average))
    sys.stdout.write(mail_table(mail))
    sys.stdout.write(sending_table(sending))


def main() -> None:
    """``python -m benchmarks.suite [insert-floor DSN]``: the whole bench, or (as the
    bench's own separate process) only the INSERT floor, printed as JSON."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.suite")
    commands = parser.add_subparsers(dest="command")
    floor = commands.add_parser("insert-floor", help="measure the INSERT floor; print JSON")
    floor.add_argument("dsn")
    threads = commands.add_parser("thread-floor", help="measure the thread query; print JSON")
    threads.add_argument("dsn")
    threads.add_argument("account_id")
    threads.add_argument("inbox_id")
    threads.add_argument("--deep", action="store_true")
    args = parser.parse_args()
    if args.command == "thread-floor":
        phase = asyncio.run(thread_floor(args.dsn, args.account_id, args.inbox_id, args.deep))
        sys.stdout.write(json.dumps(phase.__dict__) + "\n")
    elif args.command == "insert-floor":
        phase = asyncio.run(insert_floor(args.dsn))
        sys.stdout.write(json.dumps(phase.__dict__) + "\n")
    else:
        run()


if __name__ == "__main__":
    main()
