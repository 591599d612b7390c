"""The one way a Mailplane process asks DNS: dnspython's asyncio resolver,
pointed at ``MAILPLANE_DNS_NAMESERVERS`` (``host:port,…``) when it is set, with
``MAILPLANE_DNS_TIMEOUT_SECONDS`` as the whole budget of one lookup.

Only an empty setting falls back to the system's resolver configuration; tests
and CI always name their nameserver, so no lookup there waits on a resolver
that cannot answer.
"""

from __future__ import annotations

import dns.asyncresolver
import dns.nameserver


def async_resolver(nameservers: str, timeout: float) -> dns.asyncresolver.Resolver:
    """Returns a resolver asking ``nameservers``, without dnspython's own cache.

    Args:
        nameservers: ``host:port`` comma-separated (IPv6 hosts in brackets,
            ``[::1]:53``), or empty for the system's resolver configuration.
        timeout: seconds one lookup may take in all, retries included.
    """
    servers = [s.strip() for s in nameservers.split(",") if s.strip()]
    resolver = dns.asyncresolver.Resolver(configure=not servers)
    if servers:
        resolver.nameservers = [
            dns.nameserver.Do53Nameserver(host.strip("[]"), int(port))
            for host, _, port in (s.rpartition(":") for s in servers)
        ]
    resolver.lifetime = timeout
    resolver.cache = None
    return resolver
