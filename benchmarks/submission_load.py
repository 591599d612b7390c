"""``python -m benchmarks.submission_load HOST PORT USER PASSWORD CAFILE SECONDS [TO]``:
authenticated SMTP submission load (STARTTLS, AUTH PLAIN), one connection per
session reused for every message, ``SESSIONS`` sessions at once, 4 KB messages
with a fresh Message-ID each. Prints ``{"messages", "seconds", "errors",
"p50_ms", "p99_ms", "login_p99_ms"}`` as one JSON line.

Run in its own process, so the load does not share the listener's event loop.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import statistics
import sys
import time
import uuid
import warnings
from email.message import EmailMessage
from typing import Any

import aiosmtplib
from aiosmtpd.smtp import SMTP, AuthResult

SESSIONS = 8
warnings.filterwarnings("ignore", message="Session.login_data is deprecated")
BODY = ("x" * 76 + "\n") * 52  # about 4 KB


def _message(sender: str, to: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = "Submission load"
    message["Message-ID"] = f"<{uuid.uuid4().hex}@load.example>"
    message.set_content(BODY)
    return message


async def _session(
    host: str,
    port: int,
    user: str,
    password: str,
    context: ssl.SSLContext,
    until: float,
    to: str,
    latencies: list[float],
    logins: list[float],
    errors: list[str],
) -> None:
    started = time.perf_counter()
    client = aiosmtplib.SMTP(hostname=host, port=port, tls_context=context, start_tls=True)
    await client.connect()
    await client.login(user, password)
    logins.append(time.perf_counter() - started)
    try:
        while time.monotonic() < until:
            began = time.perf_counter()
            try:
                await client.send_message(_message(user, to))
            except aiosmtplib.SMTPException as error:
                errors.append(f"{type(error).__name__} {getattr(error, 'code', '')}".strip())
                continue
            latencies.append(time.perf_counter() - began)
    finally:
        await client.quit()


async def _run(
    host: str, port: int, user: str, password: str, cafile: str, seconds: float, to: str
) -> None:
    context = ssl.create_default_context(cafile=cafile)
    latencies: list[float] = []
    logins: list[float] = []
    errors: list[str] = []
    started = time.monotonic()
    until = started + seconds
    await asyncio.gather(
        *(
            _session(host, port, user, password, context, until, to, latencies, logins, errors)
            for _ in range(SESSIONS)
        )
    )
    elapsed = time.monotonic() - started
    cuts = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    print(
        json.dumps(
            {
                "messages": len(latencies),
                "seconds": elapsed,
                "errors": len(errors),
                "error_kinds": {kind: errors.count(kind) for kind in set(errors)},
                "p50_ms": cuts[49] * 1000,
                "p99_ms": cuts[98] * 1000,
                "login_p99_ms": max(logins) * 1000 if logins else 0.0,
            }
        )
    )


class _Discard:
    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        return "250 2.0.0 OK"


async def _floor(port: int, cert: str, key: str) -> None:
    """The floor: aiosmtpd with the same STARTTLS and an AUTH that always succeeds,
    discarding every message, until killed."""
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(
            _Discard(),
            tls_context=tls,
            require_starttls=True,
            authenticator=lambda *_: AuthResult(success=True),
        ),
        "127.0.0.1",
        port,
    )
    async with server:
        await server.serve_forever()


def main() -> None:
    """Parses the arguments and runs the load, or (``floor PORT CERT KEY``) the floor."""
    if sys.argv[1] == "floor":
        asyncio.run(_floor(int(sys.argv[2]), sys.argv[3], sys.argv[4]))
        return
    host, port, user, password, cafile, seconds = sys.argv[1:7]
    to = sys.argv[7] if len(sys.argv) > 7 else "sink@example.com"
    asyncio.run(_run(host, int(port), user, password, cafile, float(seconds), to))


if __name__ == "__main__":
    main()
