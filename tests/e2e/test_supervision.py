"""Faults under the launcher (issue 11): PostgreSQL stopped and started under the
running suite, one service killed, and the log lines of five processes kept whole.

One ``python -m deploy.local`` with its own ports and state; its embedded
PostgreSQL is stopped and started with ``pg_ctl`` (pgserver's binaries), its
children found under ``/proc`` and signalled like an operator would.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pgserver
import pytest

from deploy import settings as local_settings
from deploy.local.__main__ import Child
from tests.conftest import Zone
from tests.e2e.test_local_suite import Suite

#: The python modules the launcher runs, one process each.
MODULES = ("services.pods", "services.inboxes", "services.domains", "services.mailboxes", "gateway")


class Logged(Suite):
    """A launched suite whose stderr (every process's log lines) is collected."""

    def __init__(self, state: Path, dns_port: int):
        super().__init__(state, dns_port)
        self.stderr = subprocess.PIPE
        self.lines: list[str] = []
        self._drain: threading.Thread | None = None

    def start(self) -> None:
        super().start()
        assert self.process is not None and self.process.stderr is not None
        self._drain = threading.Thread(target=self.lines.extend, args=(self.process.stderr,))
        self._drain.start()

    def stop(self) -> int:
        code = self.interrupt()
        if self._drain is not None:
            self._drain.join(30)
        return code

    def children(self) -> dict[str, int]:
        """Returns the pid of each running child, by its module (``services.pods``)."""
        assert self.process is not None
        pid = self.process.pid
        found = {}
        for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            with_args = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
            module = next((a.decode() for a in with_args if a.decode() in MODULES), None)
            if module is not None:
                found[module] = int(child)
        return found

    def postgres(self, action: str) -> None:
        """Stops (fast shutdown: sessions are ended) or starts the embedded
        PostgreSQL, on the unix socket the launcher's DSN names."""
        pgdata = self.state / "pgdata"
        user = "pgserver" if os.geteuid() == 0 else None  # as pgserver runs it
        if action == "stop":
            pgserver.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=user)
            return
        values = local_settings.read_env_file(self.state / local_settings.SETTINGS_FILE)
        socket_dir = parse_qs(urlsplit(values["MAILPLANE_DATABASE_URL"]).query)["host"][0]
        options = ["-o", '-h ""', "-o", f"-k {socket_dir}", "-l", str(pgdata / "log")]
        pgserver.pg_ctl(["-w", *options, "start"], pgdata=pgdata, user=user, timeout=30)


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory, dns_zone: Zone) -> Iterator[Logged]:
    """The launched suite; at the end, Ctrl-C still stops every child (restarted
    ones included), then PostgreSQL, and the launcher exits 0."""
    running = Logged(tmp_path_factory.mktemp("state"), dns_zone.port)
    running.start()
    yield running
    processes = running.children()
    assert running.stop() == 0
    assert not any(Path(f"/proc/{pid}").exists() for pid in processes.values())
    assert not (running.state / "pgdata" / "postmaster.pid").exists()
    assert json.loads(running.lines[-1])["event"] == "stopped"


@pytest.fixture
def client(suite: Logged) -> Iterator[httpx.Client]:
    key = (suite.state / "dev-api-key").read_text().strip()
    with httpx.Client(
        base_url=suite.url, headers={"Authorization": f"Bearer {key}"}, timeout=20
    ) as http:
        yield http


def wait_until(check: Callable[[], bool], seconds: float, what: str) -> None:
    """Polls ``check`` every 0.2 s until it holds; fails naming ``what`` after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {seconds} s: {what}")
        time.sleep(0.2)


def ready(client: httpx.Client) -> bool:
    return client.get("/readyz").status_code == 200


def test_database_outage_answers_503_then_recovers_without_restart(
    suite: Logged, client: httpx.Client
) -> None:
    wait_until(lambda: ready(client), 30, "the suite is ready")
    processes = suite.children()
    assert set(processes) == set(MODULES)
    calls = [
        ("POST", "/v1/pods", {"clientId": "outage", "name": "Outage"}),
        ("POST", "/v1/inboxes", {"username": "outage"}),
        ("GET", "/v1/pods", None),
        ("GET", "/v1/domains", None),
        ("GET", "/v1/agent/mailboxes", None),
        ("GET", "/v1/account", None),
    ]
    suite.postgres("stop")
    try:
        for method, path, body in calls:
            answer = client.request(method, path, json=body)
            assert answer.status_code == 503, (method, path, answer.text)
            assert answer.json()["error"] == "unavailable"
            assert int(answer.headers["Retry-After"]) > 0
        wait_until(lambda: client.get("/readyz").status_code == 503, 20, "/readyz answers 503")
        assert client.get("/readyz").json()["status"] == "unready"
    finally:
        suite.postgres("start")

    wait_until(lambda: ready(client), 30, "/readyz back to 200")
    assert suite.children() == processes  # the same processes: none was restarted
    pods = client.get("/v1/pods")
    assert pods.status_code == 200
    assert "outage" not in [p["clientId"] for p in pods.json()["pods"]]  # nothing half-written
    inboxes = client.get("/v1/inboxes").json()["inboxes"]
    assert not [i for i in inboxes if i["username"].startswith("outage")]
    assert client.post("/v1/pods", json={"clientId": "outage", "name": "Outage"}).status_code == 201


@pytest.mark.parametrize(
    ("module", "sig"),
    [("services.inboxes", signal.SIGKILL), ("services.domains", signal.SIGTERM)],
    ids=["kill-9-inboxes", "term-domains"],
)
def test_a_service_that_exits_is_restarted_while_the_others_serve(
    suite: Logged, client: httpx.Client, module: str, sig: signal.Signals
) -> None:
    wait_until(lambda: ready(client), 30, "the suite is ready")
    before = suite.children()
    os.kill(before[module], sig)
    assert client.get("/v1/pods").status_code == 200  # the pods service kept serving

    wait_until(
        lambda: suite.children().get(module) not in (None, before[module]),
        30,
        f"{module} restarted",
    )
    wait_until(lambda: ready(client), 60, "/readyz back to 200")
    after = suite.children()
    assert {m: p for m, p in after.items() if m != module} == {
        m: p for m, p in before.items() if m != module
    }
    assert client.get("/v1/inboxes").status_code == 200
    assert client.get("/v1/domains").status_code == 200
    assert suite.process is not None and suite.process.poll() is None
    events = [json.loads(line) for line in suite.lines if "child_" in line]
    name = module.removeprefix("services.")
    assert {"event": "child_exited", "process": name} in [
        {"event": e["event"], "process": e.get("process")} for e in events
    ]


def test_every_line_of_five_processes_under_load_is_one_json_record(
    suite: Logged, client: httpx.Client
) -> None:
    paths = ["/v1/pods", "/v1/inboxes", "/v1/domains", "/v1/agent/mailboxes", "/v1/account"]
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda i: client.get(paths[i % len(paths)]).status_code, range(200)))
    assert set(codes) <= {200, 503}
    lines = list(suite.lines)
    assert len(lines) > 200
    records = [json.loads(line) for line in lines]  # raises on two records run together
    assert all(isinstance(r, dict) and "event" in r for r in records)


async def test_relayed_lines_of_concurrent_children_stay_whole(tmp_path: Path) -> None:
    """Four children each write 100 KB lines at once (a pipe writes at most 4 KB
    atomically): the launcher's relay keeps every line whole."""
    read_end, write_end = os.pipe()
    received: list[bytes] = []
    with os.fdopen(read_end, "rb") as reader, os.fdopen(write_end, "wb") as out:
        drain = threading.Thread(target=received.extend, args=(reader,))
        drain.start()
        script = (
            "import sys, time\n"
            "line = b'{\"pad\": \"%s\"}\\n' % (b'x' * 100_000)\n"
            "for _ in range(20):\n"
            "    sys.stdout.buffer.write(line)\n"
            "    sys.stdout.buffer.flush()\n"
            "time.sleep(60)\n"
        )
        children = [Child(f"chatter{i}", ("-c", script), dict(os.environ), out) for i in range(4)]
        for child in children:
            child.start()
        deadline = time.monotonic() + 30
        while len(received) < 80 and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.1)  # the lines arrive on another thread
        await asyncio.gather(*(child.stop() for child in children))
    drain.join(10)
    assert len(received) == 80
    assert all(json.loads(line)["pad"] == "x" * 100_000 for line in received)
