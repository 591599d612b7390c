"""DKIM signatures per second (issue goal: ≥ 200 DKIM-signed messages/s end to end;
research: dkimpy's pure-Python RSA about 110/s, OpenSSL-backed about 1,100/s).

The load (``benchmarks.dkim_load``) runs in its own process, as the delivery worker
does, and signs 4 KB messages through ``DkimSigner`` → the domains service's
``SignDkim``, served in this process with its real database; beside it, in that
same load process, the floor (the same DKIM-Signature with OpenSSL in process, no
hop), OpenSSL's RSA step alone and dkimpy's stock ``dkim.sign``. Prints the rates
and their ratios; asserts only that every phase signed.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

import httpx
from mailplane.pods.v1 import pods_pb2

from services.chassis.config import Settings
from tests.conftest import Services, Zone
from tests.inboxes.test_inboxes import verified_domain


async def test_dkim_signatures_per_second(
    services: Services,
    http: httpx.AsyncClient,
    make_tenant,  # type: ignore[no-untyped-def]
    settings: Settings,
    dns_zone: Zone,
) -> None:
    tenant = await make_tenant("Bench", pods_pb2.PLAN_ENTERPRISE)
    custom = (await verified_domain(http, tenant, dns_zone))["domain"]
    env = {**os.environ, "MAILPLANE_INTERNAL_TOKEN": settings.internal_token.get_secret_value()}
    load = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "benchmarks.dkim_load",
        settings.domains_addr,
        tenant.account_id,
        settings.shared_domain,
        custom,
        env=env,
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await load.communicate()
    assert load.returncode == 0
    results = json.loads(out.decode().strip().splitlines()[-1])
    rate = {k: v["signatures"] / v["seconds"] for k, v in results.items()}
    assert all(v["signatures"] > 0 for v in results.values()), results
    floor, stock = rate["floor"], rate["dkimpy_stock"]

    def row(name: str, key: str) -> str:
        return (
            f"{name:<44} {rate[key]:8.0f} /s   ÷ floor {rate[key] / floor:5.2f}   "
            f"÷ dkimpy stock {rate[key] / stock:6.1f}\n"
        )

    sys.stdout.write(
        "\nDKIM rsa-sha256 signatures of a 4 KB message (relaxed/relaxed, RSA-2048)\n"
        + row("DkimSigner → SignDkim, shared domain", "signer_shared")
        + row("DkimSigner → SignDkim, custom domain", "signer_custom")
        + row("floor: same header, OpenSSL in process", "floor")
        + row("OpenSSL RSA step alone", "openssl_rsa")
        + row("dkimpy stock dkim.sign (pure-Python RSA)", "dkimpy_stock")
        + f"{'header block alone, on the event loop':<44} {rate['block_inline']:8.0f} /s\n"
        + f"{'header block alone, asyncio.to_thread':<44} {rate['block_thread']:8.0f} /s\n"
    )
