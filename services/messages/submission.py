"""SMTP submission (RFC 6409) for mail clients: the submission listeners of
``python -m services.messages smtp`` (DESIGN §7.1; seed 003's ``smtp`` block).

- Two listeners: ``MAILPLANE_SUBMISSION_ADDR`` with STARTTLS (RFC 3207; 587 in
  production) and ``MAILPLANE_SUBMISSIONS_ADDR`` with implicit TLS (RFC 8314;
  465). AUTH PLAIN and LOGIN (RFC 4954) only over TLS: before STARTTLS, AUTH is
  ``538 5.7.11`` and MAIL is refused until a login.
- A login is the inbox's address and password as the API handed them out,
  checked by the inboxes service (``VerifyInboxCredentials``). aiosmtpd calls its
  authenticator synchronously, so the two mechanisms are overridden here to
  await the check instead of blocking the loop. Failed logins are throttled per
  login and per client IP (``LOGIN_FAILURES`` in ``LOGIN_WINDOW_SECONDS``, then
  ``454 4.7.0`` until the window passes).
- The envelope sender (and the From header) must be the inbox's address
  (``553 5.7.1``). The message then takes the API's send path (``Outbox.submit``):
  pause, sending domain, suppressions (per recipient, at RCPT: ``550 5.7.1``),
  send limits (``451 4.7.1``), the queue, DKIM and events; the Message-ID is its
  idempotency key, so a resubmission after a lost reply sends nothing twice.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import ssl
import time
import warnings
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from aiosmtpd.smtp import MISSING, SMTP, AuthResult, Envelope, Session
from mailplane.inboxes.v1 import inboxes_pb2, inboxes_pb2_grpc

from services.chassis.auth import INTERNAL_TOKEN_METADATA
from services.chassis.errors import MailplaneError
from services.chassis.logs import get_logger
from services.chassis.rpc import call_peer
from services.messages import mime
from services.messages.outbox import Idempotency, Outbox, Replay, request_digest
from services.messages.outbox_store import SenderRow
from services.messages.policy import bare_address

_log = get_logger("mailplane.submission")
# aiosmtpd's AUTH sets the deprecated Session.login_data itself on every login
# (aiosmtpd 1.4.6 smtp_AUTH), which would log a warning per login.
warnings.filterwarnings("ignore", message="Session.login_data is deprecated")
#: Failed logins per login (and, times four, per client IP) within the window.
LOGIN_FAILURES = 5
LOGIN_WINDOW_SECONDS = 300.0
#: Recipients of one submitted message (DESIGN §7.5's 50 per send).
MAX_RECIPIENTS = 50

THROTTLED = "454 4.7.0 Too many failed logins; try again later"
NOT_YOURS = "553 5.7.1 Sender address is not the authenticated inbox's address"
NO_AUTH = "530 5.7.0 Authentication required"
TRY_LATER = "451 4.3.0 Temporary failure; try again later"

#: Catalog codes → SMTP replies (RFC 3463 enhanced codes).
_REPLIES = {
    "recipient_suppressed": "550 5.7.1 Recipient is on this account's suppression list",
    "mailbox_paused": "550 5.7.1 This mailbox is paused and does not send",
    "domain_not_sendable": "550 5.7.1 The sender's domain cannot send yet (verify SPF and DKIM)",
    "send_rate_limited": "451 4.7.1 Send limit reached; try again later",
    "message_too_large": "552 5.3.4 Message too big",
    "idempotency_key_in_use": "451 4.3.0 This message is being sent; try again later",
    "idempotency_key_reused": "554 5.6.0 This Message-ID was already sent with other content",
    "inbox_not_found": "535 5.7.8 This inbox no longer exists",
    "unavailable": TRY_LATER,
}

#: Checks a login: ``(username, password) → (inbox ID, account ID)``, ``None`` if refused.
Verify = Callable[[str, str], Awaitable[tuple[str, str] | None]]


class InboxLogins:
    """Checks logins against the inboxes service (``VerifyInboxCredentials``),
    with the service credential.

    Args:
        channel: the process's one channel to the inboxes service.
        deadline: seconds the call may take.
        internal_token: the service credential.
    """

    def __init__(self, channel: grpc.aio.Channel, deadline: float, internal_token: str):
        self._stub = inboxes_pb2_grpc.InboxServiceStub(channel)
        self._deadline = deadline
        self._operator = ((INTERNAL_TOKEN_METADATA, internal_token),)

    async def __call__(self, username: str, password: str) -> tuple[str, str] | None:
        """The inbox and account IDs of a valid login, ``None`` for a refused one.

        Raises:
            MailplaneError: ``unavailable`` when the inboxes service is down.
        """
        try:
            reply = await call_peer(
                self._stub.VerifyInboxCredentials,
                inboxes_pb2.VerifyInboxCredentialsRequest(username=username, password=password),
                deadline=self._deadline,
                metadata=self._operator,
            )
        except MailplaneError as error:
            if error.code in ("unauthenticated", "permission_denied", "invalid_argument") or (
                error.code.endswith("not_found")
            ):
                return None
            raise
        return str(reply.inbox_id), str(reply.account_id)


class Throttle:
    """Failed logins per key in a sliding window (in this process's memory)."""

    def __init__(self, limit: int, window: float):
        self._limit = limit
        self._window = window
        self._failures: dict[str, deque[float]] = defaultdict(deque)

    def blocked(self, key: str) -> bool:
        """Whether ``key`` has failed ``limit`` times within the window."""
        failures = self._failures.get(key)
        if not failures:
            return False
        cutoff = time.monotonic() - self._window
        while failures and failures[0] < cutoff:
            failures.popleft()
        if not failures:
            del self._failures[key]
        return len(failures) >= self._limit

    def fail(self, key: str) -> None:
        """Records a failure of ``key``."""
        self._failures[key].append(time.monotonic())


@dataclass
class _Login:
    """An authenticated session's inbox."""

    inbox_id: str
    account_id: str
    username: str


class SubmissionSMTP(SMTP):
    """aiosmtpd's SMTP with AUTH PLAIN/LOGIN checked asynchronously and throttled."""

    def __init__(self, handler: SubmissionHandler, **kwargs: Any):
        super().__init__(handler, **kwargs)
        self._submission = handler

    async def auth_PLAIN(self, _: Any, args: list[str]) -> AuthResult:
        """RFC 4616: ``authzid NUL authcid NUL password``, base64."""
        if len(args) == 1:
            blob = await self.challenge_auth("")
            if blob is MISSING:
                return AuthResult(success=False)
        else:
            try:
                blob = base64.b64decode(args[1].encode(), validate=True)
            except ValueError:
                await self.push("501 5.5.2 Can't decode base64")
                return AuthResult(success=False, handled=True)
        try:
            _authz, login, password = bytes(blob).split(b"\x00")  # type: ignore[arg-type]
        except ValueError:
            await self.push("501 5.5.2 Can't split auth value")
            return AuthResult(success=False, handled=True)
        return await self._check(login, password)

    async def auth_LOGIN(self, _: Any, args: list[str]) -> AuthResult:
        """The LOGIN mechanism: username and password in two base64 challenges."""
        if len(args) == 1:
            login = await self.challenge_auth(self.AuthLoginUsernameChallenge)
            if login is MISSING:
                return AuthResult(success=False)
        else:
            try:
                login = base64.b64decode(args[1].encode(), validate=True)
            except ValueError:
                await self.push("501 5.5.2 Can't decode base64")
                return AuthResult(success=False, handled=True)
        password = await self.challenge_auth(self.AuthLoginPasswordChallenge)
        if password is MISSING:
            return AuthResult(success=False)
        return await self._check(bytes(login), bytes(password))  # type: ignore[arg-type]

    async def _check(self, login: bytes, password: bytes) -> AuthResult:
        assert self.session is not None
        username = login.decode("utf-8", "replace").strip().lower()
        peer = self.session.peer[0] if isinstance(self.session.peer, tuple) else "?"
        result = await self._submission.login(username, password.decode("utf-8", "replace"), peer)
        if isinstance(result, str):
            await self.push(result)
            return AuthResult(success=False, handled=True)
        return AuthResult(success=True, auth_data=result)


def _login_of(session: Session) -> _Login | None:
    login = session.auth_data
    return login if session.authenticated and isinstance(login, _Login) else None


class SubmissionHandler:
    """The aiosmtpd handler of submission: who may send, from which address, to whom.

    Args:
        outbox: the API's send path.
        verify: checks a login.
        senders: the inbox as a sender: ``(account ID, inbox ID) → SenderRow``.
    """

    def __init__(
        self,
        outbox: Outbox,
        verify: Verify,
        senders: Callable[[str, str], Awaitable[SenderRow | None]],
    ):
        self._outbox = outbox
        self._verify = verify
        self._senders = senders
        self._by_login = Throttle(LOGIN_FAILURES, LOGIN_WINDOW_SECONDS)
        self._by_peer = Throttle(LOGIN_FAILURES * 4, LOGIN_WINDOW_SECONDS)

    async def login(self, username: str, password: str, peer: str) -> _Login | str:
        """Checks a login; the session's login, or the SMTP reply refusing it."""
        if self._by_login.blocked(username) or self._by_peer.blocked(peer):
            return THROTTLED
        try:
            found = await self._verify(username, password)
        except MailplaneError:
            _log.warning("submission_login_unavailable", exc_info=True)
            return "454 4.7.0 Temporary authentication failure"
        if found is None:
            self._by_login.fail(username)
            self._by_peer.fail(peer)
            _log.info("submission_login_refused", username=username, peer=peer)
            return "535 5.7.8 Authentication credentials invalid"
        return _Login(found[0], found[1], username)

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        """The envelope sender must be the authenticated inbox's address."""
        login = _login_of(session)
        if login is None:
            return NO_AUTH
        try:
            sender = await self._senders(login.account_id, login.inbox_id)
        except MailplaneError as error:
            return _REPLIES.get(error.code, TRY_LATER)
        if sender is None:
            return _REPLIES["inbox_not_found"]
        if address.strip().lower() != sender.address:
            return NOT_YOURS
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        envelope.sender_row = sender  # type: ignore[attr-defined]
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        """Any address but a suppressed one (checked here, per recipient)."""
        sender: SenderRow | None = getattr(envelope, "sender_row", None)
        if sender is None:
            return "503 5.5.1 MAIL first"
        if len(envelope.rcpt_tos) >= MAX_RECIPIENTS:
            return "452 4.5.3 Too many recipients"
        bare = bare_address(address)
        if not bare or "@" not in bare:
            return "501 5.1.3 Bad recipient address syntax"
        try:
            await self._outbox.check_recipients(sender, [bare])
        except MailplaneError as error:
            return _REPLIES.get(error.code, TRY_LATER)
        envelope.rcpt_tos.append(bare)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """Queues the message through the send path; 250 once it is committed."""
        sender: SenderRow | None = getattr(envelope, "sender_row", None)
        if sender is None:
            return "503 5.5.1 MAIL first"
        raw = envelope.original_content or b""
        parsed = mime.parse(raw)
        if bare_address(parsed.sender) != sender.address:
            return "553 5.7.1 The From header must be the authenticated inbox's address"
        key = f"smtp:{parsed.message_id}"[:255]
        digest = request_digest("Submit", hashlib.sha256(raw).digest())
        idempotency = Idempotency(key, digest, lambda message: message.id.encode())
        try:
            message = await self._outbox.submit(sender, raw, envelope.rcpt_tos, idempotency)
        except Replay as replay:
            return f"250 2.0.0 OK already queued as {replay.response.decode()}"
        except MailplaneError as error:
            return _REPLIES.get(error.code, "554 5.0.0 The message was not sent")
        except (OSError, TimeoutError):
            _log.warning("submission_failed", exc_info=True)
            return TRY_LATER
        _log.info("message_submitted", message_id=message.id, inbox_id=sender.owner.id)
        return f"250 2.0.0 OK queued as {message.id}"


async def serve_submission(
    handler: SubmissionHandler,
    tls: ssl.SSLContext,
    host: str,
    port: int,
    *,
    implicit_tls: bool,
    max_bytes: int,
    hostname: str,
) -> asyncio.AbstractServer:
    """Starts one submission listener in the running loop; returns the server.

    Args:
        tls: the server certificate's context.
        implicit_tls: TLS from the first byte (465) rather than STARTTLS (587).
        max_bytes: the largest message accepted (SIZE).
        hostname: the name the listener greets with.
    """
    loop = asyncio.get_running_loop()

    def factory() -> SMTP:
        return SubmissionSMTP(
            handler,
            data_size_limit=max_bytes,
            hostname=hostname,
            enable_SMTPUTF8=True,
            timeout=300,
            tls_context=None if implicit_tls else tls,
            require_starttls=not implicit_tls,
            # aiosmtpd does not count implicit TLS as TLS (aio-libs/aiosmtpd#281):
            # on that listener every connection is TLS, so AUTH may go ahead.
            auth_require_tls=not implicit_tls,
            auth_exclude_mechanism=["CRAM-MD5"],
        )

    server = await loop.create_server(factory, host, port, ssl=tls if implicit_tls else None)
    _log.info(
        "smtp_listening",
        address=f"{host}:{port}",
        kind="submissions" if implicit_tls else "submission",
    )
    return server
