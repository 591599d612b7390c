"""Parsing one RFC 5322 message, once, into what the store keeps (DESIGN §7.3).

The stdlib ``email`` package with ``policy.default`` decodes RFC 2047 encoded
words and RFC 2231 parameters and picks the text and HTML bodies
(``get_body``) and the attachments (``iter_attachments``). Header values that
do not parse are read raw rather than failing the message: mail from the
Internet is parsed, never refused for its shape. ``extractedText`` is the text
without quoted history, by mail-parser-reply (research/mailflow.md §3).
"""

from __future__ import annotations

import email
import email.header
import email.policy
import email.utils
import hashlib
import re
from dataclasses import dataclass, field
from email.message import EmailMessage
from itertools import chain
from typing import Any

from mailparser_reply.parser import EmailMessage as ReplyText

#: Characters of ``preview``.
PREVIEW_CHARS = 200
#: Characters kept of any one header value (a huge header is cut, not refused).
MAX_HEADER_CHARS = 16_384
_MESSAGE_ID = re.compile(r"<[^<>\s]+>")
_TAG = re.compile(r"<[^>]*>")
_SPACE = re.compile(r"\s+")
_FOLD = re.compile(r"\r?\n[ \t]")
#: Languages of the reply headers (``On … wrote:``) that start quoted history.
REPLY_LANGUAGES = ("en", "de", "fr", "es", "it", "nl", "pt")
#: mail-parser-reply's pattern of those headers, built once (the library builds it,
#: and a signature and a disclaimer pattern, for every message).
_REPLY_HEADERS = ReplyText(text="", languages=list(REPLY_LANGUAGES)).HEADER_REGEX


@dataclass(frozen=True)
class Part:
    """An attachment: file name, MIME type, Content-ID (no brackets), disposition
    (``attachment``/``inline``) and decoded bytes."""

    filename: str | None
    content_type: str
    content_id: str | None
    disposition: str
    content: bytes


@dataclass(frozen=True)
class Parsed:
    """One parsed message.

    Attributes:
        message_id: the Message-ID with angle brackets; made from the content's
            SHA-256 (``<sha256.…@mailplane.invalid>``) when the message has none.
        in_reply_to: the first Message-ID of In-Reply-To, or ``None``.
        references: the Message-IDs of References, oldest first.
        sender: the From header as ``Name <user@domain>`` (``""`` when absent).
        to, cc, reply_to: addresses in the same form.
        subject: the decoded subject (``""`` when absent).
        text, html: the bodies, or ``None``.
        preview: the first ``PREVIEW_CHARS`` characters of the text (or of the
            HTML's text), on one line.
        extracted_text: the text without quoted history.
        attachments: every non-body part, in order.
        auto_submitted: whether the message is automatic (RFC 3834
            ``Auto-Submitted`` other than ``no``, a list or bulk ``Precedence``,
            or a ``List-Id``); an auto-reply is never sent to it.
        sha256: the raw bytes' SHA-256.
        size: the raw size in bytes.
    """

    message_id: str
    in_reply_to: str | None
    references: list[str]
    sender: str
    to: list[str]
    cc: list[str]
    reply_to: list[str]
    subject: str
    text: str | None
    html: str | None
    preview: str
    extracted_text: str
    attachments: list[Part] = field(default_factory=list)
    auto_submitted: bool = False
    sha256: bytes = b""
    size: int = 0


def parse(raw: bytes) -> Parsed:
    """Parses RFC 5322 bytes. Never raises for a malformed message: what cannot
    be decoded is left out or read raw."""
    digest = hashlib.sha256(raw).digest()
    message: EmailMessage = email.message_from_bytes(raw, policy=email.policy.default)  # type: ignore[assignment]
    headers = _Headers(message)
    ids = _ids(headers.raw("Message-ID"))
    message_id = ids[0] if ids else f"<sha256.{digest.hex()[:32]}@mailplane.invalid>"
    # The body parts are found once: ``get_body`` walks the message and parses
    # every part's Content-Type again on each call.
    text_part, html_part = _body_part(message, "plain"), _body_part(message, "html")
    text, html = _body(message, "plain", text_part), _body(message, "html", html_part)
    plain = text if text is not None else (_html_text(html) if html is not None else "")
    return Parsed(
        message_id=message_id,
        in_reply_to=next(iter(_ids(headers.raw("In-Reply-To"))), None),
        references=_ids(headers.raw("References"))[-100:],
        sender=(headers.addresses("From") or [""])[0],
        to=headers.addresses("To"),
        cc=headers.addresses("Cc"),
        reply_to=headers.addresses("Reply-To"),
        subject=_one_line(headers.text("Subject")),
        text=text,
        html=html,
        preview=_one_line(plain)[:PREVIEW_CHARS],
        extracted_text=_extract(plain),
        attachments=_attachments(message, text_part, html_part),
        auto_submitted=_automatic(headers),
        sha256=digest,
        size=len(raw),
    )


def composed(
    raw: bytes,
    *,
    message_id: str,
    in_reply_to: str | None,
    references: list[str],
    sender: str,
    to: list[str],
    cc: list[str],
    reply_to: list[str],
    subject: str,
    text: str | None,
    html: str | None,
    attachments: list[Part],
    written: str | None = None,
) -> Parsed:
    """What :func:`parse` would find in a message Mailplane wrote itself, from
    the parts it wrote it from (a send does not parse its own bytes again: that
    costs about 2 ms of a send's CPU). The preview is derived as :func:`parse`
    derives it; the extracted text is ``written``, what the sender wrote above
    any quoted history (finding it again with mail-parser-reply costs about a
    millisecond), else the text."""
    plain = text if text is not None else (_html_text(html) if html is not None else "")
    return Parsed(
        message_id=message_id,
        in_reply_to=in_reply_to,
        references=references,
        sender=sender,
        to=to,
        cc=cc,
        reply_to=reply_to,
        subject=_one_line(subject),
        text=text,
        html=html,
        preview=_one_line(plain)[:PREVIEW_CHARS],
        extracted_text=(written if written is not None else plain).strip(),
        attachments=attachments,
        sha256=hashlib.sha256(raw).digest(),
        size=len(raw),
    )


class _Headers:
    """The header section read once, raw (``raw_items``), decoded only where a
    value is used: policy.default would parse every header through its header
    registry on each ``get`` (measured: ~40 % of the ingest worker's time on a
    4 KB message). Values with undecodable 8-bit bytes take policy.default's path.
    """

    def __init__(self, message: EmailMessage):
        self._message = message
        self._values: dict[str, list[str]] = {}
        for name, value in message.raw_items():
            self._values.setdefault(name.lower(), []).append(
                _FOLD.sub(" ", str(value))[:MAX_HEADER_CHARS]
            )

    def raw(self, name: str) -> str:
        """The first value of ``name``, unfolded, or ``""``."""
        values = self._values.get(name.lower())
        return values[0] if values else ""

    def text(self, name: str) -> str:
        """The first value of ``name`` with RFC 2047 encoded words decoded."""
        value = self.raw(name)
        if "=?" not in value and value.isascii():
            return value
        if _has_raw_bytes(value):
            return self._slow(name)
        return _decode_words(value)

    def addresses(self, name: str) -> list[str]:
        """Every address of every ``name`` header as ``Name <user@domain>``."""
        values = self._values.get(name.lower(), [])
        if any(_has_raw_bytes(v) for v in values):
            values = [self._slow(name)]
        try:
            pairs = email.utils.getaddresses(values)
        except Exception:
            return []
        out = []
        for display, address in pairs:
            if not address:
                continue
            display = _decode_words(display) if "=?" in display else display
            out.append(f"{display} <{address}>" if display else address)
        return out[:1000]

    def _slow(self, name: str) -> str:
        try:
            value = self._message.get(name)
        except Exception:
            return self.raw(name)
        return str(value)[:MAX_HEADER_CHARS] if value is not None else ""


def _has_raw_bytes(value: str) -> bool:
    """Whether ``value`` carries 8-bit bytes the parser kept as surrogates."""
    return any("\udc80" <= c <= "\udcff" for c in value)


def _decode_words(value: str) -> str:
    """RFC 2047 encoded words decoded; the value itself when they do not decode."""
    try:
        return str(email.header.make_header(email.header.decode_header(value)))
    except Exception:
        return value


def _ids(value: str) -> list[str]:
    return _MESSAGE_ID.findall(value)


def _one_line(value: str) -> str:
    return _SPACE.sub(" ", value).strip()


def _body_part(message: EmailMessage, subtype: str) -> Any:
    try:
        return message.get_body(preferencelist=(subtype,))
    except Exception:
        return None


def _body(message: EmailMessage, subtype: str, part: Any) -> str | None:
    if part is None:
        return _fallback_text(message, subtype) if not message.is_multipart() else None
    try:
        content = part.get_content()
    except Exception:
        return _fallback_text(message, subtype)
    return content if isinstance(content, str) else None


def _fallback_text(message: EmailMessage, subtype: str) -> str | None:
    """The body decoded by hand when its charset is unknown (latin-1 never fails)."""
    for part in message.walk():
        if part.get_content_type() == f"text/{subtype}":
            payload = part.get_payload(decode=True)
            if isinstance(payload, bytes):
                return payload.decode("latin-1")
    return None


def _html_text(html: str) -> str:
    return _TAG.sub(" ", html)


def _extract(text: str) -> str:
    if not text:
        return ""
    try:
        return latest_reply(text)
    except Exception:
        return text.strip()


def latest_reply(text: str) -> str:
    """The text before the first reply header, as
    ``EmailReplyParser(languages=REPLY_LANGUAGES).parse_reply(text)`` answers it
    (its ``EmailMessage.read`` up to the first non-empty reply), without the
    signature and disclaimer searches whose results ``parse_reply`` drops: they
    cost as much as the header search itself."""
    body = ReplyText(text=text, languages=list(REPLY_LANGUAGES)).text  # normalized
    headers = [h for h in chain.from_iterable(_REPLY_HEADERS.findall(body)) if h]
    current = 0
    for header in headers:
        position = body.find(header, current + 1 if current > 0 else current)
        content = body[current:position].strip()
        current = position if position >= 0 else 0
        if content:
            return content
    return body[current:].strip()


def _leaves(part: Any) -> list[Any]:
    """Every non-multipart part, in order; an attached message is one leaf."""
    if part.is_multipart() and part.get_content_maintype() == "multipart":
        return [leaf for child in part.get_payload() for leaf in _leaves(child)]
    return [part]


def _attachments(message: EmailMessage, text_part: Any, html_part: Any) -> list[Part]:
    """Every part that is not the text or HTML body (``text_part``, ``html_part``):
    attachments, inline images of a multipart/related HTML body, attached messages."""
    bodies = {id(p) for p in (text_part, html_part) if p}
    parts = []
    try:
        leaves = _leaves(message) if message.is_multipart() else []
    except Exception:
        return []
    for part in leaves:
        if id(part) in bodies:
            continue
        try:
            payload = part.get_payload(decode=True)
        except Exception:
            payload = None
        if not isinstance(payload, bytes):
            payload = part.as_bytes() if part.is_multipart() else b""
        content_id = _ids(str(part.get("Content-ID", "")))
        disposition = part.get_content_disposition() or "attachment"
        parts.append(
            Part(
                filename=(part.get_filename() or None),
                content_type=part.get_content_type(),
                content_id=content_id[0][1:-1] if content_id else None,
                disposition="inline" if disposition == "inline" else "attachment",
                content=payload,
            )
        )
    return parts


def _automatic(headers: _Headers) -> bool:
    """RFC 3834 §2: automatic messages are not answered automatically."""
    auto = headers.raw("Auto-Submitted").strip().lower()
    precedence = headers.raw("Precedence").strip().lower()
    return (
        (auto != "" and auto != "no")
        or precedence in ("bulk", "list", "junk")
        or bool(headers.raw("List-Id"))
    )
