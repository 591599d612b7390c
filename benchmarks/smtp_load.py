"""``python -m benchmarks.smtp_load send|sink``: the SMTP load of ``make bench``,
in a process of its own (so it never shares an event loop with what it measures).

- ``send``: ``--sessions`` SMTP sessions, each one connection that sends
  messages one after the other (EHLO once, then MAIL, RCPT, DATA per message; no
  pipelining), for ``--warm-up`` + ``--seconds``. Every message is ``--size``
  bytes with its own Message-ID (the store dedupes on it). The accept latency of
  a message is the time from the end of its DATA (``<CRLF>.<CRLF>`` written) to
  the final reply. Prints one JSON line: accepted messages (``250``) and their
  latencies in the measured window, and the refusals by reply code.
- ``sink``: an aiosmtpd listener that answers ``250`` to every message and keeps
  nothing (no database): the floor of the edge's protocol handling, on the same
  event loop (uvloop) and library as the edge.

Raw asyncio streams, not an SMTP client library: the load generator shares the
two cores with what it measures, so it should cost as little as it can.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from typing import Any

import uvloop
from aiosmtpd.smtp import SMTP, Envelope, Session

#: A 4 KB message (the issue's size), header and body; ``{n}`` makes it unique.
HEADER = (
    "From: Load <load@load.example.com>\r\nTo: {to}\r\nSubject: Load {n}\r\n"
    "Message-ID: <{run}.{n}@load.example.com>\r\nDate: Mon, 16 Nov 2026 09:00:00 +0000\r\n"
    "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
)
LINE = "Hello, could you send us a quote for 100 units by Friday? Thanks.\r\n"


def message_of(to: str, run: str, n: int, size: int) -> bytes:
    """Message ``n`` of ``size`` bytes (within a line), dot-stuffed, ending ``.<CRLF>``."""
    header = HEADER.format(to=to, run=run, n=n)
    lines = max(1, (size - len(header)) // len(LINE))
    return (header + LINE * lines).encode() + b".\r\n"


async def _reply(reader: asyncio.StreamReader) -> int:
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("the server closed the connection")
        if line[3:4] != b"-":
            return int(line[:3])


async def _session(
    host: str,
    port: int,
    to: str,
    run: str,
    size: int,
    counter: list[int],
    measure_from: float,
    stop_at: float,
    latencies: list[float],
    refused: dict[str, int],
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    loop = asyncio.get_running_loop()
    await _reply(reader)
    writer.write(b"EHLO load.example.com\r\n")
    await _reply(reader)
    envelope = f"MAIL FROM:<load@load.example.com>\r\nRCPT TO:<{to}>\r\n".split("\r\n")[:2]
    try:
        while loop.time() < stop_at:
            counter[0] += 1
            body = message_of(to, run, counter[0], size)
            code = 0
            for command in (*envelope, "DATA"):
                writer.write(command.encode() + b"\r\n")
                code = await _reply(reader)
                if code >= 400:
                    break
            if code == 354:
                writer.write(body)
                started = time.perf_counter()
                code = await _reply(reader)
                accept = time.perf_counter() - started
                if measure_from <= loop.time() <= stop_at:
                    if code == 250:
                        latencies.append(accept)
                    else:
                        refused[str(code)] = refused.get(str(code), 0) + 1
            elif loop.time() >= measure_from:
                refused[str(code)] = refused.get(str(code), 0) + 1
                writer.write(b"RSET\r\n")
                await _reply(reader)
        writer.write(b"QUIT\r\n")
        await _reply(reader)
    finally:
        writer.close()


async def send(
    host: str, port: int, to: str, sessions: int, seconds: float, warm_up: float, size: int
) -> dict[str, Any]:
    """Runs the load; returns the measured window's figures (see the module doc)."""
    loop = asyncio.get_running_loop()
    measure_from = loop.time() + warm_up
    stop_at = measure_from + seconds
    latencies: list[float] = []
    refused: dict[str, int] = {}
    run = f"{time.time_ns():x}"
    counter = [0]
    wall_from = time.time() + warm_up
    await asyncio.gather(
        *(
            _session(host, port, to, run, size, counter, measure_from, stop_at, latencies, refused)
            for _ in range(sessions)
        )
    )
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    return {
        "accepted": len(latencies),
        "seconds": seconds,
        "p50_ms": q[49] * 1000,
        "p99_ms": q[98] * 1000,
        "refused": refused,
        "window": [wall_from, wall_from + seconds],
    }


class DiscardHandler:
    """Accepts every recipient and message; keeps nothing."""

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        return "250 2.0.0 OK discarded"


async def sink(port: int) -> None:
    """An aiosmtpd listener on 127.0.0.1:``port`` that discards, until killed."""
    loop = asyncio.get_running_loop()
    handler = DiscardHandler()
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="sink.test", data_size_limit=10 << 20),
        "127.0.0.1",
        port,
    )
    sys.stdout.write("listening\n")
    sys.stdout.flush()
    await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.smtp_load")
    commands = parser.add_subparsers(dest="command", required=True)
    load = commands.add_parser("send", help="send messages; print JSON")
    load.add_argument("--host", default="127.0.0.1")
    load.add_argument("--port", type=int, required=True)
    load.add_argument("--to", required=True)
    load.add_argument("--sessions", type=int, default=20)
    load.add_argument("--seconds", type=float, default=10)
    load.add_argument("--warm-up", type=float, default=2)
    load.add_argument("--size", type=int, default=4096)
    discard = commands.add_parser("sink", help="an aiosmtpd listener that discards")
    discard.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    if args.command == "send":
        figures = uvloop.run(
            send(
                args.host, args.port, args.to, args.sessions, args.seconds, args.warm_up, args.size
            )
        )
        sys.stdout.write(json.dumps(figures) + "\n")
    else:
        uvloop.run(sink(args.port))


if __name__ == "__main__":
    main()
