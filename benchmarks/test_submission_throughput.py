"""Authenticated SMTP submission, messages per second (issue 14 goal: ≥ 100/s).

The submission listener (STARTTLS, AUTH checked by the inboxes service, the API's
send path) runs in this process over the real services and database; the load
(``benchmarks.submission_load``: 8 sessions, each logged in once, 4 KB messages)
runs in its own process. Beside it, the same load against the floor: an aiosmtpd
listener with the same TLS and a login that always succeeds, which discards each
message. Prints both rates and their ratio; asserts only that messages went
through.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import sys
from pathlib import Path
from typing import Any

import httpx
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, Session
from mailplane.pods.v1 import pods_pb2

from services.chassis.config import Settings
from tests.conftest import Services, free_port
from tests.messages.test_submission import listening, new_inbox

SECONDS = 10


async def _load(port: int, user: str, password: str, cafile: Path) -> dict[str, Any]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "benchmarks.submission_load",
        "127.0.0.1",
        str(port),
        user,
        password,
        str(cafile),
        str(SECONDS),
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await process.communicate()
    assert process.returncode == 0
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


class _Discard:
    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        return "250 2.0.0 OK"


async def test_submission_messages_per_second(
    services: Services,
    http: httpx.AsyncClient,
    make_tenant,  # type: ignore[no-untyped-def]
    settings: Settings,
    tmp_path: Path,
) -> None:
    tenant = await make_tenant("Bench", pods_pb2.PLAN_ENTERPRISE)
    inbox = await new_inbox(http, services, tenant)
    smtp = inbox["credentials"]["smtp"]
    unlimited = settings.model_copy(update={"send_limit_per_minute": 0, "send_limit_per_day": 0})
    async with listening(services, unlimited, tmp_path) as (port, _, cafile):
        ours = await _load(port, smtp["username"], smtp["password"], cafile)

    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cafile, cafile.with_name("key.pem"))
    floor_port = free_port()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(
            _Discard(),
            tls_context=tls,
            require_starttls=True,
            authenticator=lambda *_: AuthResult(success=True),
        ),
        "127.0.0.1",
        floor_port,
    )
    try:
        floor = await _load(floor_port, "any@example.com", "any", cafile)
    finally:
        server.close()
        await server.wait_closed()

    assert ours["messages"] > 0 and floor["messages"] > 0
    rate = ours["messages"] / ours["seconds"]
    floor_rate = floor["messages"] / floor["seconds"]
    sys.stdout.write(
        "\nSMTP submission, 8 sessions, STARTTLS + AUTH once, 4 KB\n"
        f"{'submission → send path (queued)':<40} {rate:8.0f} msg/s  p50 {ours['p50_ms']:6.1f} ms"
        f"  p99 {ours['p99_ms']:6.1f} ms  errors {ours['errors']}  (goal ≥ 100/s)\n"
        f"{'floor: aiosmtpd TLS + AUTH, discard':<40} {floor_rate:8.0f} msg/s  "
        f"p50 {floor['p50_ms']:6.1f} ms  p99 {floor['p99_ms']:6.1f} ms\n"
        f"ratio ours ÷ floor = {rate / floor_rate:.2f}\n"
    )
