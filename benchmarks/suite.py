"""``python -m benchmarks.suite`` (``make bench``): what users see, in one run.

It starts the suite as ``make run`` does (``python -m deploy.local``: embedded
PostgreSQL, the four services and the gateway as separate processes) with its own
state folder and its own free ports, creates an ``enterprise`` account, and drives it
from separate load processes, so the load never shares the services' event loops:

- ``wrk`` (one thread, 50 connections) for REST, with a Lua script that sets the key
  and makes a unique username or clientId for every POST;
- ``h2load`` (one thread, 50 connections, one stream each) for gRPC straight to the
  pods service, with a pre-encoded gRPC-framed ``GetPodRequest``;
- a second Python process for the floor: asyncpg single-row INSERTs, 16 in flight,
  into a scratch table in its own schema on the same PostgreSQL.

Each phase warms up (``WARM_UP_SECONDS``) and is measured for ``PHASE_SECONDS``;
the whole run takes about a minute and a half. It prints one table (throughput in
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
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import httpx
from mailplane.pods.v1 import pods_pb2, pods_pb2_grpc

from deploy import settings as local_settings
from services.chassis.auth import INTERNAL_TOKEN_METADATA

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
#: Seconds after which wrk counts a request as timed out (an error).
WRK_TIMEOUT_SECONDS = 10
WRK = ["wrk", "-t1", f"-c{CONNECTIONS}", "--timeout", f"{WRK_TIMEOUT_SECONDS}s"]

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
  return wrk.format(nil, nil, nil, string.format(template, prefix .. counter))
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
    """

    state: Path
    base_url: str
    pods_addr: str
    admin_dsn: str
    internal_token: str


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
    addrs = {
        name: f"127.0.0.1:{free_port()}" for name in ("pods", "inboxes", "domains", "mailboxes")
    }
    env = {
        **os.environ,
        "MAILPLANE_STATE_DIR": str(state),
        "MAILPLANE_BIND_HOST": "127.0.0.1",
        "MAILPLANE_GATEWAY_PORT": str(gateway_port),
        **{f"MAILPLANE_{name.upper()}_ADDR": addr for name, addr in addrs.items()},
    }
    env.pop("MAILPLANE_DATABASE_URL", None)  # always the embedded PostgreSQL of `state`
    log_path = state / "suite.log"
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
        )
    finally:
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


def run_wrk(name: str, url: str, key: str, method: str = "GET", template: str = "") -> Phase:
    """Warms up, then measures ``url`` with wrk (1 thread, ``CONNECTIONS`` connections).

    Args:
        name: the row's name.
        url: the full URL to call.
        key: the API key sent as ``Authorization: Bearer``.
        method: the HTTP method.
        template: a JSON body with one ``%s``, filled with a value unique to each
            request (e.g. ``{"username": "%s"}``); empty sends no body.

    Returns:
        The measured phase: 2xx answers per second; errors are non-2xx answers plus
        socket errors and timeouts (10 s).
    """
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        script.write(WRK_SCRIPT)
        script.flush()
        run = secrets.token_hex(3)
        summaries = [
            _wrk(script.name, url, seconds, method, key, template, f"b{run}{stage}")
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
    script: str, url: str, seconds: int, method: str, key: str, template: str, prefix: str
) -> dict[str, Any]:
    out = subprocess.run(
        [*WRK, f"-d{seconds}s", "-s", script, url, "--", method, key, template, prefix],
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


def run() -> None:
    """Starts the suite, measures every phase, prints the table, stops the suite."""
    load_average = os.getloadavg()[0]
    with running_suite() as suite:
        key = create_account(suite)
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
        create_inbox = run_wrk(
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
    sys.stdout.write(table(rest_get, grpc_get, create_inbox, create_pod, floor, load_average))


def main() -> None:
    """``python -m benchmarks.suite [insert-floor DSN]``: the whole bench, or (as the
    bench's own separate process) only the INSERT floor, printed as JSON."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.suite")
    commands = parser.add_subparsers(dest="command")
    floor = commands.add_parser("insert-floor", help="measure the INSERT floor; print JSON")
    floor.add_argument("dsn")
    args = parser.parse_args()
    if args.command == "insert-floor":
        phase = asyncio.run(insert_floor(args.dsn))
        sys.stdout.write(json.dumps(phase.__dict__) + "\n")
    else:
        run()


if __name__ == "__main__":
    main()
