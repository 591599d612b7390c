"""DNS lookups for verification, with dnspython's asyncio resolver.

Nameservers come from ``MAILPLANE_DNS_NAMESERVERS`` (``host:port,…``); when it is
empty, the system's resolver configuration is used.
"""

from __future__ import annotations

import dns.exception
import dns.rdatatype
import dns.resolver

from services.chassis.nameservers import async_resolver


class DnsLookup:
    """Answers "what is published at this name and type" as strings.

    Args:
        nameservers: ``host:port`` comma-separated, or empty for the system resolver.
        timeout: seconds one lookup may take in all.
    """

    def __init__(self, nameservers: str, timeout: float):
        # No cache: a re-verify must see what DNS says now.
        self._resolver = async_resolver(nameservers, timeout)

    async def lookup(self, name: str, rdtype: str) -> list[str]:
        """Returns the records at ``name`` of type ``MX`` or ``TXT`` as text: MX as
        ``"10 mx.example.com"``, TXT with its strings joined. Nothing there, or no
        answer in time, is an empty list."""
        try:
            answer = await self._resolver.resolve(name + ".", rdtype)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer, dns.resolver.NoNameservers):
            return []
        except dns.exception.Timeout:
            return []
        if answer.rdtype == dns.rdatatype.MX:
            return [f"{r.preference} {r.exchange.to_text(omit_final_dot=True)}" for r in answer]
        return [b"".join(r.strings).decode("utf-8", "replace") for r in answer]
