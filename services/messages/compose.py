"""Writing outgoing mail (DESIGN §7.5): checking the addresses a caller gives,
and building the RFC 5322 bytes of a new message, a reply or a forward.

Pure functions over the stdlib ``email`` package (``EmailMessage`` with
``policy.SMTP``: CRLF line ends, RFC 2047 encoded words, RFC 2231 file names).
Threading follows RFC 5322 §3.6.4: a reply's In-Reply-To is the parent's
Message-ID and its References the parent's References plus that ID, trimmed to
the latest ``MAX_REFERENCES``. Subjects get one ``Re:``/``Fwd:`` prefix, never
a stack of them.
"""

from __future__ import annotations

import email.policy
import email.utils
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from email.headerregistry import Address
from email.message import EmailMessage

from services.chassis.errors import MailplaneError, invalid_argument

#: References kept on a reply (the newest; research/mailflow.md §5.5).
MAX_REFERENCES = 20
#: Recipients (To + Cc + Bcc) of one message.
MAX_RECIPIENTS = 50
#: Extra headers a caller may set: ``X-`` names only, so no caller can forge the
#: headers that route, thread or authenticate a message.
_HEADER_NAME = re.compile(r"^X-[A-Za-z0-9-]{1,62}$")
_LOCAL = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}$")
_DOMAIN = re.compile(
    r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}$"
)
_REPLY_PREFIX = re.compile(r"^\s*(re|aw|sv)\s*:\s*", re.IGNORECASE)
_FORWARD_PREFIX = re.compile(r"^\s*(fwd?|wg)\s*:\s*", re.IGNORECASE)


@dataclass(frozen=True)
class Recipient:
    """A checked address: as written in headers (``Name <user@domain>``) and bare
    (``user@domain``, lower case)."""

    display: str
    bare: str


@dataclass(frozen=True)
class Attachment:
    """A file to attach: name, MIME type (``type/subtype``), bytes, Content-ID
    (no brackets, or ``""``) and disposition (``attachment``/``inline``)."""

    filename: str
    content_type: str
    content: bytes
    content_id: str = ""
    disposition: str = "attachment"


@dataclass(frozen=True)
class Composition:
    """What a caller wants to send, checked; the sender and threading come from
    the owner and the parent message."""

    to: list[Recipient]
    cc: list[Recipient] = field(default_factory=list)
    bcc: list[Recipient] = field(default_factory=list)
    reply_to: list[Recipient] = field(default_factory=list)
    subject: str = ""
    text: str | None = None
    html: str | None = None
    attachments: list[Attachment] = field(default_factory=list)
    headers: Mapping[str, str] = field(default_factory=dict)
    #: What the sender wrote above a forwarded message (its ``extractedText``);
    #: ``None`` when the text is all the sender's own.
    written: str | None = None

    @property
    def recipients(self) -> list[str]:
        """Every bare To, Cc and Bcc address, without repeats."""
        return list(dict.fromkeys(r.bare for r in [*self.to, *self.cc, *self.bcc]))


def recipient(value: str, path: str) -> Recipient:
    """Checks one address, ``user@domain`` or ``Name <user@domain>``.

    Raises:
        MailplaneError: ``invalid_argument`` naming ``path``.
    """
    name, address = email.utils.parseaddr(value.strip())
    local, _, domain = address.rpartition("@")
    if not local or not _LOCAL.match(local) or not _DOMAIN.match(domain) or ".." in local:
        raise invalid_argument(path, "must be an address, user@domain or Name <user@domain>.")
    bare = f"{local}@{domain}".lower()
    display = email.utils.formataddr((name, f"{local}@{domain.lower()}")) if name else bare
    return Recipient(display, bare)


def recipients(values: Sequence[str], path: str) -> list[Recipient]:
    """Checks a list of addresses (:func:`recipient`), dropping repeats."""
    out: dict[str, Recipient] = {}
    for i, value in enumerate(values):
        checked = recipient(value, f"{path}[{i}]")
        out.setdefault(checked.bare, checked)
    return list(out.values())


def check_headers(headers: Mapping[str, str], path: str = "headers") -> dict[str, str]:
    """Checks extra headers: ``X-`` names, one-line values of at most 998
    characters (RFC 5322 §2.1.1).

    Raises:
        MailplaneError: ``invalid_argument`` naming ``path``.
    """
    if len(headers) > 20:
        raise invalid_argument(path, "has more than 20 headers.")
    for name, value in headers.items():
        if not _HEADER_NAME.match(name):
            raise invalid_argument(path, f"may only set X- headers; {name[:64]!r} is not one.")
        if "\r" in value or "\n" in value or len(value) > 998:
            raise invalid_argument(path, f"{name}: must be one line of at most 998 characters.")
    return dict(headers)


def check_composition(composition: Composition, max_bytes: int) -> None:
    """Checks what a send needs: a recipient, at most ``MAX_RECIPIENTS``, a body
    or an attachment, attachments within ``max_bytes`` in all.

    Raises:
        MailplaneError: ``invalid_argument`` naming the field,
            ``message_too_large``.
    """
    count = len(composition.recipients)
    if count == 0:
        raise invalid_argument("to", "is required: give at least one recipient.")
    if count > MAX_RECIPIENTS:
        raise invalid_argument("to", f"and cc and bcc name {count} addresses; the most is 50.")
    if "\r" in composition.subject or "\n" in composition.subject:
        raise invalid_argument("subject", "must be one line.")
    size = sum(len(a.content) for a in composition.attachments)
    size += len(composition.text or "") + len(composition.html or "")
    if size > max_bytes:
        raise MailplaneError(
            "message_too_large",
            f"The message would be about {size} bytes; the most is {max_bytes}. "
            "Send smaller attachments or link to them.",
            {"maxBytes": max_bytes},
        )


def attachment(
    filename: str, content_type: str, content: bytes, content_id: str, disposition: str, path: str
) -> Attachment:
    """Checks one attachment's metadata.

    Raises:
        MailplaneError: ``invalid_argument`` naming ``path``.
    """
    content_type = content_type or "application/octet-stream"
    if not re.match(r"^[A-Za-z0-9.+-]+/[A-Za-z0-9.+-]+$", content_type):
        raise invalid_argument(f"{path}.contentType", "must be a MIME type such as text/csv.")
    if disposition not in ("", "attachment", "inline"):
        raise invalid_argument(f"{path}.disposition", "must be attachment or inline.")
    if not filename and disposition != "inline":
        raise invalid_argument(f"{path}.filename", "is required for an attachment.")
    if any(c in filename for c in "\r\n/\\\x00"):
        raise invalid_argument(f"{path}.filename", "must be a plain file name.")
    return Attachment(
        filename, content_type.lower(), content, content_id, disposition or "attachment"
    )


def reply_subject(subject: str) -> str:
    """``Re: <subject>`` with any existing reply prefix folded into one."""
    return f"Re: {_REPLY_PREFIX.sub('', subject, count=1)}"


def forward_subject(subject: str) -> str:
    """``Fwd: <subject>`` with any existing forward prefix folded into one."""
    return f"Fwd: {_FORWARD_PREFIX.sub('', subject, count=1)}"


def references_of(parent_message_id: str, parent_references: Sequence[str]) -> list[str]:
    """A reply's References: the parent's References and its Message-ID, the
    latest ``MAX_REFERENCES`` (RFC 5322 §3.6.4)."""
    refs = [r for r in parent_references if r != parent_message_id]
    return [*refs, parent_message_id][-MAX_REFERENCES:]


def quoted_forward(
    sender: str, date: datetime, subject: str, to: Sequence[str], text: str | None
) -> str:
    """The plain-text block a forward carries below the caller's text."""
    lines = [
        "---------- Forwarded message ---------",
        f"From: {sender}",
        f"Date: {email.utils.format_datetime(date)}",
        f"Subject: {subject}",
        f"To: {', '.join(to)}",
        "",
        text or "",
    ]
    return "\n".join(lines)


def build(
    sender: str,
    composition: Composition,
    message_id: str,
    date: datetime,
    in_reply_to: str | None = None,
    references: Sequence[str] = (),
    auto_submitted: str | None = None,
) -> bytes:
    """The RFC 5322 bytes of an outgoing message (CRLF line ends).

    Args:
        sender: the From header, ``Name <user@domain>`` or ``user@domain``.
        message_id: the Message-ID, with angle brackets.
        date: the Date header's time.
        in_reply_to, references: threading headers of a reply.
        auto_submitted: an ``Auto-Submitted`` value (RFC 3834), if any.
    """
    message = EmailMessage(policy=email.policy.SMTP)
    message["From"] = _address_header(sender)
    if composition.to:
        message["To"] = ", ".join(r.display for r in composition.to)
    if composition.cc:
        message["Cc"] = ", ".join(r.display for r in composition.cc)
    if composition.reply_to:
        message["Reply-To"] = ", ".join(r.display for r in composition.reply_to)
    message["Subject"] = composition.subject
    message["Date"] = email.utils.format_datetime(date)
    message["Message-ID"] = message_id
    if in_reply_to:
        message["In-Reply-To"] = in_reply_to
    if references:
        message["References"] = " ".join(references)
    if auto_submitted:
        message["Auto-Submitted"] = auto_submitted
    for name, value in composition.headers.items():
        message[name] = value
    if composition.text is not None or composition.html is None:
        message.set_content(composition.text or "")
        if composition.html is not None:
            message.add_alternative(composition.html, subtype="html")
    else:
        message.set_content(composition.html, subtype="html")
    for item in composition.attachments:
        maintype, _, subtype = item.content_type.partition("/")
        message.add_attachment(
            item.content,
            maintype=maintype,
            subtype=subtype,
            filename=item.filename or None,
            disposition=item.disposition,
            cid=f"<{item.content_id}>" if item.content_id else None,
        )
    return message.as_bytes()


def _address_header(value: str) -> Address | str:
    name, address = email.utils.parseaddr(value)
    local, _, domain = address.rpartition("@")
    return Address(display_name=name, username=local, domain=domain) if name else address
