"""``python -m benchmarks.dkim_load <domains addr> <account> <shared domain> <custom
domain>`` (the service credential in ``MAILPLANE_INTERNAL_TOKEN``): DKIM signatures
of a 4 KB message per second, in this process, one phase after another, printed as
one JSON line ``{phase: {"signatures": n, "seconds": s}}``.

- ``signer_shared``, ``signer_custom``: ``DkimSigner.sign`` through the domains
  service's ``SignDkim`` (``IN_FLIGHT`` at once), for the shared domain (no
  database read) and a verified custom domain (one indexed read and the loaded key);
- ``floor``: the same DKIM-Signature made here with OpenSSL (``cryptography``): the
  header block of ``services.messages.dkim`` and a local RSA step, no hop;
- ``openssl_rsa``: the RSA step alone (``key.sign`` of a digest);
- ``dkimpy_stock``: dkimpy's own ``dkim.sign`` (its pure-Python RSA);
- ``block_inline``, ``block_thread``: the header block alone, on the event loop and
  through ``asyncio.to_thread``, ``IN_FLIGHT`` at once (whether moving it off the
  loop pays).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable

import dkim
import grpc

from services.domains import records
from services.domains.signing import sign_digest
from services.messages.dkim import SIGNED_HEADERS, DkimSigner, header_block

#: Seconds each phase runs (dkimpy's stock signer: fewer, it is slow).
SECONDS = float(os.environ.get("MAILPLANE_BENCH_DKIM_SECONDS", "5"))
STOCK_SECONDS = 3.0
IN_FLIGHT = 16
MESSAGE_BYTES = 4096


def message(domain: str) -> bytes:
    """A 4 KB outbound message from ``domain``, CRLF line endings."""
    head = (
        f"From: Agent <agent@{domain}>\r\nTo: ada@example.org\r\n"
        "Subject: Re: Quote for 100 units\r\nDate: Sat, 21 Nov 2026 10:00:00 +0000\r\n"
        f"Message-ID: <bench@{domain}>\r\nIn-Reply-To: <q1@example.org>\r\n"
        "References: <q1@example.org>\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n\r\n"
    ).encode()
    line = b"Hello, here is the quote for 100 units you asked about.  \r\n"
    return head + line * ((MESSAGE_BYTES - len(head)) // len(line) + 1)


async def concurrent(seconds: float, call: Callable[[], Awaitable[object]]) -> dict[str, float]:
    """Runs ``call`` ``IN_FLIGHT`` at a time for ``seconds``; returns the count."""
    for _ in range(20):
        await call()
    done = 0
    loop = asyncio.get_running_loop()
    stop = loop.time() + seconds

    async def worker() -> None:
        nonlocal done
        while loop.time() < stop:
            await call()
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))
    return {"signatures": done, "seconds": time.perf_counter() - started}


def serial(seconds: float, call: Callable[[], object]) -> dict[str, float]:
    """Runs ``call`` back to back for ``seconds``; returns the count."""
    call()
    done = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        call()
        done += 1
    return {"signatures": done, "seconds": time.perf_counter() - started}


async def main(address: str, account_id: str, shared: str, custom: str) -> None:
    results: dict[str, dict[str, float]] = {}
    token = os.environ["MAILPLANE_INTERNAL_TOKEN"]
    async with grpc.aio.insecure_channel(address) as channel:
        signer = DkimSigner(channel, 5.0, token)

        def signing(domain: str) -> Callable[[], Awaitable[bytes]]:
            raw = message(domain)
            return lambda: signer.sign(account_id, domain, raw)

        results["signer_shared"] = await concurrent(SECONDS, signing(shared))
        results["signer_custom"] = await concurrent(SECONDS, signing(custom))
    pem = records.new_dkim_private_pem()
    key = records.load_dkim_private_key(pem)
    raw = message("example.com")

    def floor() -> bytes:
        block = header_block(raw, "example.com", "mailplane", int(time.time()))
        return block.header(sign_digest(key, block.digest)) + raw

    digest = hashlib.sha256(raw).digest()
    results["floor"] = serial(SECONDS, floor)
    results["openssl_rsa"] = serial(SECONDS, lambda: sign_digest(key, digest))
    results["dkimpy_stock"] = serial(
        STOCK_SECONDS,
        lambda: dkim.sign(
            raw,
            b"mailplane",
            b"example.com",
            pem,
            canonicalize=(b"relaxed", b"relaxed"),
            include_headers=list(SIGNED_HEADERS),
        ),
    )

    async def inline() -> object:
        return header_block(raw, "example.com", "mailplane", 0)

    async def threaded() -> object:
        return await asyncio.to_thread(header_block, raw, "example.com", "mailplane", 0)

    results["block_inline"] = await concurrent(SECONDS, inline)
    results["block_thread"] = await concurrent(SECONDS, threaded)
    sys.stdout.write(json.dumps(results) + "\n")


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
