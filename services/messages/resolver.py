"""DNS for checking senders: one asyncio resolver with a small TTL cache.

A burst of mail from one domain asks DNS once: answers are kept for their TTL
(at most ``max_ttl``), "no such record" for ``negative_ttl``, a failure for
``failure_ttl``, and concurrent askers of the same name and type share one
lookup in flight. The cache is bounded (least recently used entries go first).
Nameservers and the per-lookup timeout are the chassis's
(``MAILPLANE_DNS_NAMESERVERS``, ``MAILPLANE_DNS_TIMEOUT_SECONDS``).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import dns.asyncresolver
import dns.exception
import dns.name
import dns.resolver

from services.chassis.nameservers import async_resolver

#: What a lookup answers, by type: ``A``/``AAAA`` addresses and ``PTR`` names as
#: ``str``; ``MX`` as ``(preference, exchange)``; ``TXT`` as ``bytes``, each
#: record's strings joined. Names carry no final dot.
Records = tuple[Any, ...]
#: The record types ``SenderResolver.query`` answers.
RECORD_TYPES = frozenset({"A", "AAAA", "MX", "PTR", "TXT"})


class DnsTemporaryError(Exception):
    """No answer in time, or the nameservers failed (SERVFAIL, REFUSED, network)."""


@dataclass
class _Entry:
    expires: float
    #: The records and the seconds they may be kept.
    lookup: asyncio.Future[tuple[Records, float]]


class SenderResolver:
    """Looks up the DNS records that SPF, DKIM and DMARC need, with a cache.

    Args:
        nameservers: ``host:port`` comma-separated, or empty for the system's
            resolver configuration (as ``services.chassis.nameservers``).
        timeout: seconds one lookup may take in all.
        max_entries: names and types kept at most.
        max_ttl: seconds an answer is kept at most, whatever its TTL.
        negative_ttl: seconds "no such name" or "no such record" is kept.
        failure_ttl: seconds a failed lookup is remembered, so that a burst
            from a domain whose nameservers are down waits once, not per message.
        clock: monotonic seconds (tests may pass their own).
    """

    def __init__(
        self,
        nameservers: str,
        timeout: float,
        *,
        max_entries: int = 10_000,
        max_ttl: float = 300.0,
        negative_ttl: float = 60.0,
        failure_ttl: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._resolver: dns.asyncresolver.Resolver = async_resolver(nameservers, timeout)
        self._max_entries = max_entries
        self._max_ttl = max_ttl
        self._negative_ttl = negative_ttl
        self._failure_ttl = failure_ttl
        self._clock = clock
        self._entries: OrderedDict[tuple[str, str], _Entry] = OrderedDict()
        #: Lookups sent to a nameserver, for tests and metrics.
        self.lookups = 0

    async def query(self, name: str, rdtype: str) -> Records:
        """Returns the records at ``name`` of ``rdtype`` (one of ``RECORD_TYPES``),
        shaped as ``Records`` says; empty when the name or the record does not
        exist or the name is not a valid DNS name.

        Raises:
            DnsTemporaryError: no answer within the timeout, or a server failure.
            ValueError: ``rdtype`` is not one of ``RECORD_TYPES``.
        """
        if rdtype not in RECORD_TYPES:
            raise ValueError(f"Record type {rdtype} is not one of {sorted(RECORD_TYPES)}.")
        key = (name.lower().rstrip("."), rdtype)
        entry = self._entries.get(key)
        if entry is None or entry.expires <= self._clock():
            entry = _Entry(float("inf"), asyncio.ensure_future(self._resolve(*key)))
            self._entries[key] = entry
            entry.lookup.add_done_callback(lambda done: self._settle(key, entry, done))
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)
        else:
            self._entries.move_to_end(key)
        if entry.lookup.done():
            return entry.lookup.result()[0]
        # Shielded: a caller that gives up does not cancel the others' lookup.
        records, _ = await asyncio.shield(entry.lookup)
        return records

    async def txt(self, name: str) -> tuple[bytes, ...]:
        """Returns the TXT records at ``name``, each record's strings joined.

        Raises:
            DnsTemporaryError: as ``query``.
        """
        return cast(tuple[bytes, ...], await self.query(name, "TXT"))

    def _settle(
        self, key: tuple[str, str], entry: _Entry, done: asyncio.Future[tuple[Records, float]]
    ) -> None:
        if done.cancelled():
            ttl = 0.0
        elif done.exception() is not None:  # also marks the exception retrieved
            ttl = self._failure_ttl
        else:
            ttl = done.result()[1]
        entry.expires = self._clock() + ttl
        if ttl <= 0 and self._entries.get(key) is entry:
            del self._entries[key]

    async def _resolve(self, name: str, rdtype: str) -> tuple[Records, float]:
        try:
            qname = dns.name.from_text(name)
        except (dns.exception.SyntaxError, dns.exception.FormError):
            return (), self._max_ttl  # not a DNS name: nothing can be published there
        self.lookups += 1
        try:
            answer = await self._resolver.resolve(qname, rdtype)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return (), self._negative_ttl
        except (dns.exception.DNSException, OSError) as e:
            raise DnsTemporaryError(f"DNS {rdtype} lookup of {name} failed: {e}") from e
        rrset = answer.rrset
        if rrset is None:
            return (), self._negative_ttl
        ttl = min(float(rrset.ttl), self._max_ttl)
        if rdtype == "TXT":
            return tuple(b"".join(r.strings) for r in rrset), ttl
        if rdtype == "MX":
            mx = tuple((r.preference, r.exchange.to_text(omit_final_dot=True)) for r in rrset)
            return mx, ttl
        if rdtype == "PTR":
            return tuple(r.target.to_text(omit_final_dot=True) for r in rrset), ttl
        return tuple(r.address for r in rrset), ttl
