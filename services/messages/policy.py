"""Mailbox semantics at ingest (DESIGN §7.3; seed 004): rules and the paused
auto-reply. Pure functions over a parsed message and a mailbox's policy; the
ingest worker applies them in its transaction.

- Rules apply to the first message of a new thread: enabled rules in ascending
  ``priority``, the first whose every set condition holds wins.
  ``move_to_folder`` files the thread, ``archive`` labels it ``archived``,
  ``mark_spam`` labels it ``spam``.
- A paused mailbox with ``pausedAutoReply`` answers the envelope sender (RFC
  3834 §4: the Return-Path), never a null sender, an automatic message (RFC 3834
  §2: ``Auto-Submitted`` other than ``no``, list or bulk mail), a mailer daemon
  or list robot, spam, or itself; at most once per sender per 24 h (the store
  keeps the last reply per sender). The reply is ``Auto-Submitted:
  auto-replied``, threaded with ``In-Reply-To``/``References``.
"""

from __future__ import annotations

import email.utils
from email.message import EmailMessage
from typing import Any

from services.messages import mime
from services.messages.models import MailboxPolicy
from services.messages.store import Filing

#: Local parts never auto-answered (RFC 3834 §2: daemons and list robots).
_ROBOTS = ("mailer-daemon", "postmaster", "listserv", "majordomo", "noreply", "no-reply")


def bare_address(value: str) -> str:
    """``user@domain`` (lower case) of ``Name <user@domain>``, or ``""``."""
    return email.utils.parseaddr(value)[1].strip().lower()


def _matches(pattern: str, address: str) -> bool:
    """An address condition: ``user@domain`` exactly, or ``@domain``/``domain``
    for any address of that domain (case-insensitive)."""
    if not address:
        return False
    if pattern.startswith("@"):
        return address.endswith(pattern)
    if "@" in pattern:
        return address == pattern
    return address.rpartition("@")[2] == pattern


def _rule_holds(rule: dict[str, Any], parsed: mime.Parsed, recipient: str) -> bool:
    if rule.get("from") and not _matches(rule["from"], bare_address(parsed.sender)):
        return False
    if rule.get("to"):
        targets = {bare_address(a) for a in [*parsed.to, *parsed.cc]} | {recipient.lower()}
        if not any(_matches(rule["to"], t) for t in targets):
            return False
    contains = rule.get("subjectContains")
    return not contains or contains in parsed.subject.casefold()


def filing_of(policy: MailboxPolicy, parsed: mime.Parsed, recipient: str) -> Filing | None:
    """How the first matching rule files a new thread, or ``None`` when none
    matches.

    Args:
        recipient: the envelope address the message was accepted for.
    """
    for rule in policy.rules:  # enabled only, ascending priority (as recorded)
        if not _rule_holds(rule, parsed, recipient):
            continue
        if rule["action"] == "move_to_folder":
            return Filing(folder_id=rule["folderId"])
        return Filing(labels=("archived",) if rule["action"] == "archive" else ("spam",))
    return None


def auto_reply_to(
    policy: MailboxPolicy, parsed: mime.Parsed, mail_from: str, labels: list[str]
) -> str | None:
    """The address a paused mailbox auto-replies to, or ``None`` when it must
    not (RFC 3834). The once-per-24-h check is the store's."""
    if policy.status != "paused" or not policy.paused_auto_reply:
        return None
    sender = mail_from.strip().strip("<>").strip().lower()
    if not sender or "@" not in sender or parsed.auto_submitted or "spam" in labels:
        return None
    local = sender.partition("@")[0]
    if local in _ROBOTS or local.startswith("owner-") or local.endswith("-request"):
        return None
    if sender == policy.address:
        return None
    return sender


def auto_reply(policy: MailboxPolicy, parsed: mime.Parsed, to: str, host: str) -> bytes:
    """The RFC 5322 bytes of a paused mailbox's auto-reply to ``parsed``.

    Args:
        to: the address answered (the envelope sender).
        host: the domain of the reply's Message-ID.
    """
    reply = EmailMessage()
    reply["From"] = email.utils.formataddr((policy.display_name or "", policy.address))
    reply["To"] = to
    if policy.reply_to:
        reply["Reply-To"] = policy.reply_to
    subject = parsed.subject or "your message"
    reply["Subject"] = subject if subject.lower().startswith("auto:") else f"Auto: {subject}"
    reply["Date"] = email.utils.formatdate(usegmt=True)
    reply["Message-ID"] = email.utils.make_msgid(domain=host)
    reply["In-Reply-To"] = parsed.message_id
    reply["References"] = " ".join([*parsed.references[-20:], parsed.message_id])
    reply["Auto-Submitted"] = "auto-replied"
    reply.set_content(policy.paused_auto_reply or "")
    return reply.as_bytes()
