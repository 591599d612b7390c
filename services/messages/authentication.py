"""Sender authentication of received mail: SPF, DKIM and DMARC (DESIGN §7.3, §7.4).

``authenticate`` answers, for one message as the SMTP edge received it, the
RFC 8601 result of each check; ``passed`` tells the ingest worker whether to
leave off the ``unauthenticated`` label. It never raises: a DNS failure is
``temperror``, a malformed record ``permerror``, and the whole takes at most
``time_limit`` seconds. Every lookup goes through one ``SenderResolver`` (our
nameservers, a short timeout, a TTL cache), never the system's resolver.

- **SPF** (RFC 7208) is pyspf's evaluation. pyspf is synchronous and asks DNS
  through its module function ``spf.DNSLookup``, which this module replaces
  (at import) with one that answers only from the records fetched so far for
  this message and otherwise stops the evaluation, naming the record it needs.
  ``_check_spf`` fetches that record asynchronously and evaluates again, until
  pyspf finishes. This is simpler and cheaper than running pyspf in a thread:
  no thread hop or pool per message, no blocking call that a timeout cannot
  cancel, and with a warm cache one evaluation and no await at all. A pass
  re-runs only string work (microseconds); the number of passes is bounded by
  RFC 7208's lookup limits (§4.6.4), which pyspf enforces, and by ``time_limit``.
  The null sender (``<>``) is checked as ``postmaster@<HELO>`` (§2.3).
- **DKIM** (RFC 6376) is dkimpy's verification. The keys of all signatures are
  fetched concurrently first, then each signature is verified with its key
  handed to dkimpy as ``dnsfunc`` (bytes). Any valid signature makes ``pass``;
  otherwise the best of ``fail`` (a hash or signature mismatch), ``temperror``
  (key lookup failed), ``permerror`` (no key, or an unusable one) and
  ``neutral`` (a signature that does not parse); no signature is ``none``.
- **DMARC** (RFC 7489) is a small implementation of §6.6: the record at
  ``_dmarc.<From domain>``, else at ``_dmarc.<organizational domain>`` (public
  suffix list; a name under a suffix not on the list falls back to its last two
  labels, the list's ``*`` rule). ``pass`` when a passing SPF domain (MAIL FROM,
  or HELO for the null sender) or a passing DKIM ``d=`` aligns with the From
  domain (relaxed: same organizational domain; strict: equal), ``fail`` when a
  record exists and none does, ``temperror`` when none does but an aligned
  check could not finish, ``none`` without a record or a From domain,
  ``permerror`` for a record without a valid ``p=``, several DMARC records, or
  several From domains. The policy itself (``p=reject``) is reported by the
  result only; what to do with failing mail is the caller's rule.
"""

from __future__ import annotations

import asyncio
import contextvars
import email.utils
import functools
import importlib.resources
import re
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import dkim
import spf
from publicsuffix2 import PublicSuffixList

from services.chassis.logs import get_logger
from services.messages.resolver import RECORD_TYPES, DnsTemporaryError, Records, SenderResolver

_log = get_logger("mailplane.messages")

#: An RFC 8601 result word, as DESIGN §7.4 ``authentication`` lists them.
Result = Literal["pass", "fail", "softfail", "neutral", "none", "temperror", "permerror"]

#: Seconds ``authenticate`` takes at most, all lookups included.
DEFAULT_TIME_LIMIT_SECONDS = 10.0
#: Evaluations of one SPF check at most; RFC 7208's limits stop pyspf long before.
_MAX_SPF_PASSES = 128
#: DKIM results by preference when no signature passes.
_DKIM_ORDER: tuple[Result, ...] = ("pass", "fail", "temperror", "permerror", "neutral")
_DMARC_VERSION = re.compile(rb"^\s*v\s*=\s*DMARC1\s*(;|$)")
_DMARC_POLICIES = frozenset({"none", "quarantine", "reject"})


@dataclass(frozen=True)
class Authentication:
    """The results of one message's sender checks, each an RFC 8601 word."""

    spf: Result
    dkim: Result
    dmarc: Result

    def as_dict(self) -> dict[str, str]:
        """Returns ``{"spf": …, "dkim": …, "dmarc": …}`` (DESIGN §7.4 ``authentication``)."""
        return {"spf": self.spf, "dkim": self.dkim, "dmarc": self.dmarc}


def passed(auth: Authentication) -> bool:
    """Returns whether any check passed; a message where none did is labelled
    ``unauthenticated`` (DESIGN §7.3)."""
    return "pass" in (auth.spf, auth.dkim, auth.dmarc)


async def authenticate(
    raw: bytes,
    client_ip: str,
    helo: str,
    mail_from: str,
    resolver: SenderResolver,
    *,
    time_limit: float = DEFAULT_TIME_LIMIT_SECONDS,
) -> Authentication:
    """Checks the sender of one received message with SPF, DKIM and DMARC.

    Args:
        raw: the message as received (RFC 5322 bytes, CRLF or LF line ends).
        client_ip: the SMTP client's IPv4 or IPv6 address.
        helo: the name the client gave in HELO/EHLO.
        mail_from: the envelope sender, with or without angle brackets; empty or
            ``<>`` for the null sender.
        resolver: the DNS every lookup goes through.
        time_limit: seconds the whole may take; a check not finished by then is
            ``temperror`` (so a caller needs no ``asyncio.timeout`` of its own,
            which would lose the checks that did finish).

    Returns:
        The three results. Never raises.
    """
    deadline = asyncio.get_running_loop().time() + time_limit
    sender = mail_from.strip().removeprefix("<").removesuffix(">").strip()
    spf_domain = (sender.rpartition("@")[2] if sender else helo).strip().rstrip(".").lower()
    try:
        message: dkim.DKIM | None = dkim.DKIM(raw)
    except dkim.DKIMException:
        message = None  # a header section that does not parse: no From, no signatures
    from_domain = _from_domain(message.headers) if message is not None else None

    spf_result, signatures, policy = await asyncio.gather(
        _bounded(deadline, "spf", _check_spf(resolver, client_ip, helo, sender), "temperror"),
        _bounded(deadline, "dkim", _verify_dkim(resolver, message), [_Signature("", "temperror")]),
        _bounded(deadline, "dmarc", _discover_dmarc(resolver, from_domain), "temperror"),
    )
    return Authentication(
        spf=spf_result,
        dkim=_dkim_result(signatures),
        dmarc=_dmarc_result(policy, from_domain, spf_result, spf_domain, signatures),
    )


_T = TypeVar("_T")


async def _bounded(deadline: float, check: str, work: Awaitable[_T], fallback: _T) -> _T:
    """Returns ``work``'s result, or ``fallback`` past the deadline or on a bug
    (logged): one check's trouble never costs the message the others."""
    try:
        async with asyncio.timeout_at(deadline):
            return await work
    except TimeoutError:
        return fallback
    except Exception:
        _log.exception("sender_check_failed", check=check)
        return fallback


# --- SPF ------------------------------------------------------------------------------

#: The records fetched for the SPF evaluation running in this context.
_spf_records: contextvars.ContextVar[dict[tuple[str, str], Records | DnsTemporaryError]] = (
    contextvars.ContextVar("spf_records")
)


class _RecordNeeded(Exception):
    """Stops a pyspf evaluation at a record not fetched yet: ``(name, type)``."""


def _spf_dns_lookup(name: str, qtype: str, *_: Any, **__: Any) -> list[tuple[tuple[str, str], Any]]:
    """pyspf's DNS function (``spf.DNSLookup``): answers from ``_spf_records``.

    Shapes as pyspf's own dnspython lookup: TXT as a tuple of byte strings, MX as
    ``(preference, exchange)``, A/AAAA/PTR as text.
    """
    records = _spf_records.get(None)
    if records is None:
        raise spf.TempError("DNS for SPF goes through services.messages.authentication")
    key = (name.lower().rstrip("."), qtype)
    if qtype not in RECORD_TYPES:
        return []  # type SPF (99), asked only in pyspf's "harsh" mode
    if key not in records:
        raise _RecordNeeded(*key)
    answer = records[key]
    if isinstance(answer, DnsTemporaryError):
        raise spf.TempError(str(answer))
    if qtype == "TXT":
        return [((name, qtype), (txt,)) for txt in answer]
    return [((name, qtype), value) for value in answer]


spf.DNSLookup = _spf_dns_lookup


async def _check_spf(resolver: SenderResolver, client_ip: str, helo: str, sender: str) -> Result:
    """Returns the SPF result of MAIL FROM ``sender`` (or of HELO when empty)."""
    if not sender and not helo:
        return "none"
    records: dict[tuple[str, str], Records | DnsTemporaryError] = {}
    for _ in range(_MAX_SPF_PASSES):
        token = _spf_records.set(records)
        try:
            result: Result = spf.query(i=client_ip, s=sender, h=helo, strict=True).check()[0]
        except _RecordNeeded as needed:
            name, rdtype = needed.args
        except (ValueError, spf.PermError):  # pyspf refuses the client address
            return "permerror"
        else:
            return result
        finally:
            _spf_records.reset(token)
        try:
            records[(name, rdtype)] = await resolver.query(name, rdtype)
        except DnsTemporaryError as e:
            records[(name, rdtype)] = e
    return "permerror"


# --- DKIM -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Signature:
    """One DKIM signature's signing domain (``d=``, lower case) and result."""

    domain: str
    result: Result


async def _verify_dkim(resolver: SenderResolver, message: dkim.DKIM | None) -> list[_Signature]:
    """Returns the result of each DKIM-Signature of ``message``, top first."""
    if message is None:
        return [_Signature("", "permerror")]
    count = sum(1 for name, _ in message.headers if name.lower() == b"dkim-signature")
    key_names: dict[int, str] = {}
    for index in range(count):
        try:
            sig, _, _ = message.verify_headerprep(index)
            key_names[index] = (sig[b"s"] + b"._domainkey." + sig[b"d"]).decode("ascii")
        except (dkim.DKIMException, UnicodeDecodeError):
            pass  # neutral, below
    names = sorted(set(key_names.values()))
    answers = await asyncio.gather(*(resolver.txt(n) for n in names), return_exceptions=True)
    keys = dict(zip(names, answers, strict=True))
    signatures = []
    for index in range(count):
        name = key_names.get(index)
        if name is None:
            signatures.append(_Signature("", "neutral"))
            continue
        signatures.append(_verify_signature(message, index, name, keys[name]))
    return signatures


def _verify_signature(
    message: dkim.DKIM, index: int, key_name: str, key: tuple[bytes, ...] | BaseException
) -> _Signature:
    sig, include_headers, sig_headers = message.verify_headerprep(index)
    domain = sig[b"d"].decode("ascii").lower().rstrip(".")
    if isinstance(key, DnsTemporaryError):
        return _Signature(domain, "temperror")
    if isinstance(key, BaseException):
        raise key
    if b"from" not in include_headers:
        return _Signature(domain, "neutral")  # RFC 6376 §5.4: From must be signed
    usable = [record for record in key if _parses_as_key(key_name, record)]
    if not usable:
        return _Signature(domain, "permerror")  # no key published, or none that parses
    try:
        valid = message.verify_sig(
            sig, include_headers, sig_headers[index], lambda _name, timeout=0: usable[0]
        )
    except dkim.ValidationError:
        return _Signature(domain, "fail")  # the body hash differs
    except dkim.KeyFormatError:
        return _Signature(domain, "permerror")  # e.g. a key shorter than 1024 bits
    except dkim.DKIMException:
        return _Signature(domain, "neutral")
    return _Signature(domain, "pass" if valid else "fail")


def _parses_as_key(name: str, record: bytes) -> bool:
    try:
        dkim.evaluate_pk(name, record)
    except (dkim.DKIMException, ValueError):
        return False
    return True


def _dkim_result(signatures: list[_Signature]) -> Result:
    if not signatures:
        return "none"
    results = {s.result for s in signatures}
    return next(r for r in _DKIM_ORDER if r in results)


# --- DMARC ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Policy:
    """A DMARC record's alignment modes (``r`` relaxed, ``s`` strict) and policy."""

    adkim: str
    aspf: str
    p: str


def _from_domain(headers: Iterable[list[bytes]]) -> str | None:
    """Returns the lower-case RFC 5322 From domain; ``""`` when there is none,
    ``None`` when there are several (RFC 7489 §6.6.1)."""
    values = [value for name, value in headers if name.lower() == b"from"]
    if len(values) > 1:
        return None
    if not values:
        return ""
    text = values[0].decode("utf-8", "replace")
    domains = {
        addr.rpartition("@")[2].strip().rstrip(".").lower()
        for _, addr in email.utils.getaddresses([text])
        if "@" in addr
    }
    if len(domains) > 1:
        return None
    return _ascii_domain(domains.pop()) if domains else ""


def _ascii_domain(domain: str) -> str:
    """Returns ``domain`` with IDNA (A-)labels, as DNS and ``d=`` spell it."""
    if domain.isascii():
        return domain
    try:
        return domain.encode("idna").decode("ascii")
    except UnicodeError:
        return domain


async def _discover_dmarc(resolver: SenderResolver, from_domain: str | None) -> _Policy | Result:
    """Returns the DMARC policy for ``from_domain`` (RFC 7489 §6.6.3), or the final
    result when there is none to apply (``none``, ``temperror``, ``permerror``).
    ``from_domain`` is ``""`` without a From domain, ``None`` when it is ambiguous
    or the header section does not parse."""
    if from_domain is None:
        return "permerror"
    if not from_domain:
        return "none"
    org = organizational_domain(from_domain)
    for domain in (from_domain, org) if org != from_domain else (from_domain,):
        try:
            txts = await resolver.txt("_dmarc." + domain)
        except DnsTemporaryError:
            return "temperror"
        records = [t for t in txts if _DMARC_VERSION.match(t)]
        if len(records) > 1:
            return "permerror"
        if records:
            return _parse_dmarc(records[0], subdomain=domain != from_domain)
    return "none"


def _parse_dmarc(record: bytes, *, subdomain: bool) -> _Policy | Result:
    tags: dict[str, str] = {}
    for part in record.decode("ascii", "replace").split(";")[1:]:
        tag, eq, value = part.partition("=")
        if eq:
            tags.setdefault(tag.strip().lower(), value.strip().lower())
    policy = tags.get("sp", tags.get("p")) if subdomain else tags.get("p")
    if policy not in _DMARC_POLICIES:
        policy = tags.get("p")  # an invalid sp= falls back to p=
    if policy not in _DMARC_POLICIES:
        return "permerror"
    return _Policy(
        adkim="s" if tags.get("adkim") == "s" else "r",
        aspf="s" if tags.get("aspf") == "s" else "r",
        p=policy,
    )


def _dmarc_result(
    policy: _Policy | Result,
    from_domain: str | None,
    spf_result: Result,
    spf_domain: str,
    signatures: list[_Signature],
) -> Result:
    if not isinstance(policy, _Policy):
        return policy

    def aligned(domain: str, mode: str) -> bool:
        if mode == "s":
            return domain == from_domain
        return organizational_domain(domain) == organizational_domain(from_domain)

    spf_aligned = bool(spf_domain) and aligned(spf_domain, policy.aspf)
    dkim_aligned = [s.result for s in signatures if s.domain and aligned(s.domain, policy.adkim)]
    if (spf_aligned and spf_result == "pass") or "pass" in dkim_aligned:
        return "pass"
    if (spf_aligned and spf_result == "temperror") or "temperror" in dkim_aligned:
        return "temperror"
    return "fail"


@functools.cache
def _public_suffixes() -> PublicSuffixList:
    """The public suffix list authheaders ships (fresher than publicsuffix2's own);
    read once, on first use (about 0.2 s)."""
    ref = importlib.resources.files("authheaders") / "public_suffix_list.txt"
    with ref.open(encoding="utf-8") as suffixes:
        return PublicSuffixList(suffixes)


@functools.lru_cache(maxsize=4096)
def organizational_domain(domain: str) -> str:
    """Returns the organizational domain of ``domain`` (RFC 7489 §3.2): its public
    suffix and one label more, e.g. ``mail.example.co.uk`` → ``example.co.uk``."""
    registrable = _public_suffixes().get_sld(domain, strict=True)
    if registrable is None:  # a suffix not on the list: the "*" rule, one label
        return ".".join(domain.split(".")[-2:])
    return str(registrable)
