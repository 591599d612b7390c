"""``python -m services.messages imap``: IMAP4rev1 (RFC 3501) with implicit TLS over
the messages store (DESIGN §7.1), so what IMAP shows and what REST shows agree by
construction.

The protocol (parsing, FETCH, BODYSTRUCTURE, ENVELOPE, SEARCH, IDLE RFC 2177,
UIDPLUS RFC 4315, MOVE RFC 6851) is pymap's engine; this module is its backend:

- Login: the inbox's email address and password as ``POST /v1/inboxes`` handed
  them out, checked by the inboxes service's ``VerifyInboxCredentials`` with the
  service credential on every login (nothing is cached, so a rotation takes
  effect at once). Failed logins are throttled per username and per client IP.
- Folders (RFC 6154): INBOX, Sent, Archive, Junk and Trash, each a view of the
  owner's messages by direction and labels (``imap_store``).
- Flags: ``\\Seen`` is the absence of the ``unread`` label, ``\\Flagged`` the label
  ``flagged``, keywords are the caller's labels; ``\\Answered``, ``\\Deleted`` and
  ``\\Draft`` are kept beside the labels. EXPUNGE moves ``\\Deleted`` messages to
  Trash (the label ``trash``); in Trash it deletes them for good, as a second
  ``DELETE`` of a thread does over REST.
- MOVE relabels (to Trash adds ``trash``, to Junk ``spam``, to Archive
  ``archived``, back to INBOX or Sent removes them); COPY is the same for Trash
  and refused elsewhere, since one message is in one folder. APPEND, CREATE,
  DELETE and RENAME are refused: sending goes through the API or submission.
- IDLE and every command's untagged updates come from the modification sequences
  the store's triggers keep; a process-wide ``LISTEN mailplane_imap`` wakes idling
  sessions at commit. ``LISTEN mailplane_imap_closed`` closes a deleted inbox's
  sessions with ``* BYE``. Expunge records older than a day are pruned by the
  listener's sweep; a session that had not seen them resynchronises its folder in
  full (RFC 3501 §7.4.1: every EXPUNGE is still announced).
- FETCH reads no more than it answers: header sections and ENVELOPE from the
  header block alone (cut out by the database), RFC822.SIZE from the row,
  ENVELOPE and BODYSTRUCTURE made once per process; only body parts parse the
  whole message. Each response goes to TLS in one piece (``CoalescingWriter``).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
import time
from argparse import Namespace
from collections import OrderedDict, defaultdict, deque
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Collection,
    Iterable,
    Iterator,
    Sequence,
)
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import asyncpg
import grpc
from mailplane.inboxes.v1 import inboxes_pb2, inboxes_pb2_grpc
from proxyprotocol.reader import ProxyProtocolReader
from proxyprotocol.version import ProxyProtocolVersion
from pymap.backend.session import BaseSession
from pymap.bytes import BytesFormat, Writeable, WriteStream
from pymap.concurrent import Event
from pymap.config import BackendCapability, IMAPConfig
from pymap.context import current_command, socket_info, subsystem
from pymap.exceptions import (
    AuthorizationFailure,
    InvalidAuth,
    MailboxReadOnly,
    NotAllowedError,
    TemporaryFailure,
)
from pymap.flags import FlagOp
from pymap.imap import IMAPServer
from pymap.interfaces.login import IdentityInterface, LoginInterface
from pymap.interfaces.message import CachedMessage
from pymap.interfaces.token import TokensInterface
from pymap.listtree import ListTree
from pymap.mailbox import MailboxSnapshot
from pymap.message import BaseLoadedMessage, BaseMessage
from pymap.mime import MessageContent
from pymap.parsing.command.select import FetchCommand
from pymap.parsing.message import AppendMessage
from pymap.parsing.response.fetch import BodyStructure, EnvelopeStructure
from pymap.parsing.specials import FetchRequirement, ObjectId, SequenceSet
from pymap.parsing.specials.flag import (
    Answered,
    Deleted,
    Draft,
    Flag,
    Flagged,
    Recent,
    Seen,
    Wildcard,
)
from pymap.selected import SelectedMailbox, SelectedSet
from pymap.token import AllTokens
from pymap.user import UserMetadata
from pysasl.creds.server import ServerCredentials
from pysasl.identity import Identity

from services.chassis.auth import INTERNAL_TOKEN_METADATA
from services.chassis.errors import MailplaneError
from services.chassis.logs import get_logger
from services.chassis.rpc import call_peer
from services.messages.imap_store import FOLDERS, ImapStore, Relabel, Row
from services.messages.models import Owner
from services.messages.store import MailStore

_log = get_logger("mailplane.messages.imap")

#: The channel the store's triggers notify (payload: the owner ID) on every change.
CHANGES_CHANNEL = "mailplane_imap"
#: The channel notified (payload: the owner ID) when an inbox or mailbox is deleted.
CLOSED_CHANNEL = "mailplane_imap_closed"
#: Labels Mailplane sets (DESIGN §7.4), plus ``flagged`` (``\\Flagged``): never keywords.
SYSTEM_LABELS = frozenset(
    {
        "received",
        "sent",
        "unread",
        "spam",
        "unauthenticated",
        "trash",
        "archived",
        "bounced",
        "held",
        "flagged",
    }
)
#: System flags kept beside the labels (column ``imap_flags``).
_COLUMN_FLAGS = {Answered: "\\Answered", Deleted: "\\Deleted", Draft: "\\Draft"}
_FLAG_OF_COLUMN = {v: k for k, v in _COLUMN_FLAGS.items()}
#: An IMAP atom (RFC 3501 §9 ``atom``): labels that are not one are not shown as keywords.
_ATOM = re.compile(r"^[!#$&'+,\-./0-9:;<=>?@A-Z^_`a-z|}~\[]+$")
#: Labels each destination folder adds, and those it removes (MOVE).
_MOVES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "Trash": (("trash",), ()),
    "Junk": (("spam",), ("trash",)),
    "Archive": (("archived",), ("trash", "spam")),
    "INBOX": ((), ("trash", "spam", "archived")),
    "Sent": ((), ("trash", "spam", "archived")),
}
#: Seconds expunge records are kept (imap_store.PRUNE_EXPUNGES): a session idle
#: longer resynchronises its folder in full, which is correct, only dearer.
EXPUNGE_RETENTION_SECONDS = 24 * 3600.0
#: Seconds between prunes of expunge records.
SWEEP_INTERVAL_SECONDS = 600.0
#: Messages whose parts are kept per process (they never change once stored).
CONTENT_CACHE_SIZE = 1024


_PYMAP_FORMAT = BytesFormat.__mod__


def _format_tuple(self: BytesFormat, other: Any) -> bytes:
    """``BytesFormat % args`` as pymap has it, without its two runtime Protocol
    checks (``SupportsIndex``, ``SupportsBytes``), which Python 3.11 makes by
    walking the class's MRO each time: over half of a warm FETCH's CPU, twice
    per fetched item. pymap's calls pass a tuple or a list, which has neither
    ``__index__`` nor ``__bytes__``, so pymap takes the same branch."""
    if type(other) is tuple or type(other) is list:
        return self.format(other)
    return _PYMAP_FORMAT(self, other)


setattr(BytesFormat, "__mod__", _format_tuple)  # noqa: B010 (mypy: no assigning methods)


def flags_of(row: Row) -> frozenset[Flag]:
    """The IMAP flags of a message: ``\\Seen`` unless labelled ``unread``,
    ``\\Flagged`` if labelled ``flagged``, the IMAP-only flags, and each caller's
    label that is an IMAP atom as a keyword."""
    flags = {_FLAG_OF_COLUMN[f] for f in row.imap_flags if f in _FLAG_OF_COLUMN}
    if "unread" not in row.labels:
        flags.add(Seen)
    if "flagged" in row.labels:
        flags.add(Flagged)
    flags.update(Flag(label) for label in row.labels if keyword_label(label))
    return frozenset(flags)


def keyword_label(label: str) -> bool:
    """Whether a label shows as an IMAP keyword (a caller's label, and an atom)."""
    return label not in SYSTEM_LABELS and _ATOM.match(label) is not None


def relabel_for(row: Row, flags: frozenset[Flag]) -> Relabel | None:
    """The label change that gives ``row`` exactly ``flags`` (``None`` if none).

    Keywords named like a system label (``trash``) are ignored: folders and
    ``unread`` change only through their own flags and commands.
    """
    current = flags_of(row)
    if current == flags and tuple(sorted(_column_flags(flags))) == tuple(sorted(row.imap_flags)):
        return None
    add: list[str] = []
    remove: list[str] = []
    (remove if Seen in flags else add).append("unread")
    (add if Flagged in flags else remove).append("flagged")
    wanted = {_keyword(f) for f in flags if not f.is_system}
    wanted = {k for k in wanted if keyword_label(k)}
    have = {label for label in row.labels if keyword_label(label)}
    add.extend(sorted(wanted - have))
    remove.extend(sorted(have - wanted))
    return Relabel(row.id, tuple(add), tuple(remove), tuple(sorted(_column_flags(flags))))


def _column_flags(flags: Iterable[Flag]) -> set[str]:
    return {_COLUMN_FLAGS[f] for f in flags if f in _COLUMN_FLAGS}


def _keyword(flag: Flag) -> str:
    return bytes(flag).decode("ascii", "replace")


# --- wakeups and closes ----------------------------------------------------------------


class Wakeups:
    """The process's ``LISTEN`` connection, fanned out in-process: sessions idling
    on an owner wait on an event that a change to that owner sets, and the
    connections of a deleted owner are cancelled (pymap answers ``* BYE``).

    Args:
        dsn: the service's DSN (a dedicated connection, reconnected if lost).
    """

    def __init__(self, dsn: str):
        self._dsn = dsn
        self._waiting: dict[str, set[Event]] = defaultdict(set)
        self._sessions: dict[str, set[asyncio.Task[Any]]] = defaultdict(set)
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    async def start(self) -> None:
        """Starts listening; returns once the first connection listens."""
        self._task = asyncio.create_task(self._listen())
        await asyncio.wait_for(self._ready.wait(), 30)

    async def close(self) -> None:
        """Stops listening."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _listen(self) -> None:
        while True:
            conn: asyncpg.Connection | None = None
            try:
                lost = asyncio.Event()
                conn = await asyncpg.connect(self._dsn)
                conn.add_termination_listener(lambda _conn, lost=lost: lost.set())
                await conn.add_listener(CHANGES_CHANNEL, self._changed)
                await conn.add_listener(CLOSED_CHANNEL, self._closed)
                self._ready.set()
                self._wake_all()  # anything missed while reconnecting
                await lost.wait()
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError):
                _log.warning("imap_listener_waiting_for_database", exc_info=True)
                await asyncio.sleep(1)
            finally:
                if conn is not None and not conn.is_closed():
                    with contextlib.suppress(Exception):
                        await conn.close()

    def _changed(self, _conn: Any, _pid: int, _channel: str, owner_id: str) -> None:
        for event in self._waiting.get(owner_id, ()):
            event.set()

    def _wake_all(self) -> None:
        for events in self._waiting.values():
            for event in events:
                event.set()

    def _closed(self, _conn: Any, _pid: int, _channel: str, owner_id: str) -> None:
        tasks = self._sessions.pop(owner_id, set())
        for task in tasks:
            task.cancel()
        if tasks:
            _log.info("imap_sessions_closed", owner_id=owner_id, sessions=len(tasks))

    @contextlib.contextmanager
    def waiting(self, owner_id: str) -> Iterator[Event]:
        """An event set by the owner's next change, for the ``with`` block."""
        event = subsystem.get().new_event()
        self._waiting[owner_id].add(event)
        try:
            yield event
        finally:
            self._waiting[owner_id].discard(event)
            if not self._waiting[owner_id]:
                del self._waiting[owner_id]

    def attach(self, owner_id: str, task: asyncio.Task[Any]) -> None:
        """Registers a connection's task, cancelled if its owner is deleted."""
        self._sessions[owner_id].add(task)

    def detach(self, owner_id: str, task: asyncio.Task[Any]) -> None:
        """Forgets a connection's task (the connection ended)."""
        tasks = self._sessions.get(owner_id)
        if tasks is not None:
            tasks.discard(task)
            if not tasks:
                del self._sessions[owner_id]


# --- login -------------------------------------------------------------------------


class LoginThrottle:
    """Failed logins per username and per client IP in a sliding window; past
    either limit, logins are refused without being checked until the window
    has room again (OWASP Authentication Cheat Sheet, "Protect against
    automated attacks").

    Args:
        per_user: failures allowed per username in the window.
        per_ip: failures allowed per client IP in the window.
        window_seconds: the window, in seconds.
    """

    def __init__(self, per_user: int, per_ip: int, window_seconds: float):
        self._limits = {"user": per_user, "ip": per_ip}
        self._window = window_seconds
        self._failures: dict[tuple[str, str], deque[float]] = {}

    def _recent(self, key: tuple[str, str], now: float) -> deque[float]:
        failures = self._failures.get(key)
        if failures is None:
            return deque()
        while failures and failures[0] <= now - self._window:
            failures.popleft()
        if not failures:
            del self._failures[key]
        return failures

    def allowed(self, username: str, ip: str) -> bool:
        """Whether a login of ``username`` from ``ip`` may be checked now."""
        now = time.monotonic()
        return (
            len(self._recent(("user", username), now)) < self._limits["user"]
            and len(self._recent(("ip", ip), now)) < self._limits["ip"]
        )

    def failed(self, username: str, ip: str) -> None:
        """Counts a failed login."""
        now = time.monotonic()
        for key in (("user", username), ("ip", ip)):
            self._recent(key, now)
            self._failures.setdefault(key, deque()).append(now)


class _SecretCapture(Identity):
    """Reads the password a client sent out of pysasl's credentials through their
    public ``verify``, which hands it to ``compare_secret``."""

    def __init__(self) -> None:
        self.secret = ""

    @property
    def authcid(self) -> str:
        return ""

    def compare_authcid(self, authcid: str) -> bool:
        return True

    def compare_secret(self, secret: str) -> bool:
        self.secret = secret
        return True

    def get_clear_secret(self) -> str | None:
        return None


class InboxLogin(LoginInterface):
    """Authenticates IMAP logins as inboxes (DESIGN §7.1).

    Args:
        channel: the process's channel to the inboxes service.
        deadline: seconds a credential check may take.
        internal_token: the service credential.
        throttle: the failed-login throttle.
        open_session: makes the session of an authenticated inbox.
        config: pymap's settings.
    """

    def __init__(
        self,
        channel: grpc.aio.Channel,
        deadline: float,
        internal_token: str,
        throttle: LoginThrottle,
        open_session: Any,
        config: IMAPConfig,
    ):
        self._stub = inboxes_pb2_grpc.InboxServiceStub(channel)
        self._deadline = deadline
        self._operator = ((INTERNAL_TOKEN_METADATA, internal_token),)
        self._throttle = throttle
        self._open_session = open_session
        self._tokens = AllTokens(config)

    @property
    def tokens(self) -> TokensInterface:
        """pymap's token logins (unused: only passwords log in)."""
        return self._tokens

    async def authenticate(self, credentials: ServerCredentials) -> InboxIdentity:
        """Checks the username (the inbox's address) and password.

        Raises:
            InvalidAuth: a wrong address or password, or too many recent failures
                for this username or client IP (``NO [AUTHENTICATIONFAILED]``).
            TemporaryFailure: the inboxes service is unavailable (``NO``).
        """
        username = credentials.authcid.strip().lower()
        capture = _SecretCapture()
        credentials.verify(capture)
        ip = _client_ip()
        if not self._throttle.allowed(username, ip):
            _log.warning("imap_login_throttled", username=username, client_ip=ip)
            raise InvalidAuth("Too many failed logins; wait a few minutes and try again.")
        try:
            reply = await call_peer(
                self._stub.VerifyInboxCredentials,
                inboxes_pb2.VerifyInboxCredentialsRequest(
                    username=username, password=capture.secret
                ),
                deadline=self._deadline,
                metadata=self._operator,
            )
        except MailplaneError as exc:
            if exc.code != "unauthenticated":
                _log.warning("imap_login_unavailable", code=exc.code)
                raise TemporaryFailure("The login could not be checked now; try again.") from None
            self._throttle.failed(username, ip)
            _log.info("imap_login_failed", username=username, client_ip=ip)
            raise InvalidAuth("The address or password is wrong.") from None
        owner = Owner(reply.inbox_id, reply.account_id, reply.pod_id)
        _log.info("imap_login", inbox_id=owner.id, account_id=owner.account_id, client_ip=ip)
        return InboxIdentity(username, owner, self._open_session)

    async def authorize(self, authenticated: IdentityInterface, authzid: str) -> IdentityInterface:
        """Only as oneself (no proxy logins).

        Raises:
            AuthorizationFailure: ``authzid`` names someone else.
        """
        if authzid and authzid.strip().lower() != authenticated.name:
            raise AuthorizationFailure()
        return authenticated


def _client_ip() -> str:
    with contextlib.suppress(LookupError):
        return str(socket_info.get().peername_ip or "unknown")
    return "unknown"


class InboxIdentity(IdentityInterface):
    """An authenticated inbox.

    Args:
        name: the login (the inbox's address).
        owner: the inbox as the credential check answered it.
        open_session: makes its session.
    """

    def __init__(self, name: str, owner: Owner, open_session: Any):
        self._name = name
        self.owner = owner
        self._open_session = open_session

    @property
    def name(self) -> str:
        """The login."""
        return self._name

    @property
    def roles(self) -> frozenset[str]:
        """No roles."""
        return frozenset()

    def new_session(self) -> contextlib.AbstractAsyncContextManager[Any]:
        """The inbox's session, for as long as the connection lasts."""
        return self._open_session(self)  # type: ignore[no-any-return]

    async def new_token(self, *, expiration: datetime | None = None) -> str | None:
        """No tokens."""
        return None

    async def get(self) -> UserMetadata:
        """Refused: users are managed through the inboxes API.

        Raises:
            NotAllowedError: always.
        """
        raise NotAllowedError("Inboxes are managed through the Mailplane API.")

    async def set(self, metadata: UserMetadata) -> int | None:
        """Refused (see ``get``).

        Raises:
            NotAllowedError: always.
        """
        raise NotAllowedError("Inboxes are managed through the Mailplane API.")

    async def delete(self) -> None:
        """Refused (see ``get``).

        Raises:
            NotAllowedError: always.
        """
        raise NotAllowedError("Inboxes are managed through the Mailplane API.")


# --- messages and folders ------------------------------------------------------------


class StoredParts:
    """What the process keeps of one stored message, which never changes: its
    header block (RFC 5322 §2.1: the header fields and the empty line after
    them), its MIME-parsed content once a body part was needed, and its ENVELOPE
    and BODYSTRUCTURE responses once made (RFC 3501 §7.4.2).

    Args:
        header: the header block's bytes, or ``None`` if only known parsed.
        content: the whole message parsed, or ``None`` if not loaded.
    """

    __slots__ = ("content", "envelope", "header", "structure")

    def __init__(self, header: bytes | None, content: MessageContent | None):
        self.header = header
        self.content = content
        self.envelope: bytes | None = None
        #: BODYSTRUCTURE's bytes without and with extension data.
        self.structure: tuple[bytes, bytes] | None = None

    def satisfies(self, need: int) -> bool:
        """Whether these parts serve a fetch of ``need`` (``NEED_*``)."""
        if need == NEED_FULL:
            return self.content is not None
        return need == NEED_NONE or self.header is not None or self.content is not None


#: What a FETCH needs loaded: nothing beyond the row, the header block, or all.
NEED_NONE, NEED_HEADER, NEED_FULL = 0, 1, 2
#: FETCH attributes answered from the row (RFC822.SIZE is the stored size).
_ROW_ATTRIBUTES = frozenset(
    {b"UID", b"FLAGS", b"INTERNALDATE", b"EMAILID", b"THREADID", b"RFC822.SIZE"}
)
_HEADER_SPECIFIERS = frozenset({b"HEADER", b"HEADER.FIELDS", b"HEADER.FIELDS.NOT"})
#: The line pymap's MIME parser ends a header block at: the first of only
#: whitespace (RFC 5322 §2.1 says empty; pymap also takes blanks).
_BLANK_LINE = re.compile(rb"(?:^|\n)[ \t\x0b\x0c\r]*\n")


def header_block(prefix: bytes) -> bytes | None:
    """``prefix`` (a message up to its first CRLF CRLF) if it is the header
    block as pymap's parser splits it, or ``None`` (no CRLF CRLF, or a blank
    line earlier): then the whole message must be parsed."""
    if not prefix.endswith(b"\r\n\r\n"):
        return None
    blank = _BLANK_LINE.search(prefix)
    return prefix if blank is not None and blank.end() == len(prefix) else None


def fetch_need(requirement: FetchRequirement, parts: StoredParts | None) -> int:
    """What the running command needs of a message (``NEED_*``).

    A FETCH (RFC 3501 §6.4.5) is judged by its attributes, as pymap's own
    requirement counts ``BODY.PEEK[HEADER]`` and ``BODYSTRUCTURE`` as the whole
    message: header sections and ENVELOPE need the header block, BODYSTRUCTURE
    nothing once made, the row's attributes nothing. Other commands (SEARCH)
    go by ``requirement``.
    """
    command = current_command.get(None)
    if not isinstance(command, FetchCommand):
        if requirement & FetchRequirement.BODY:
            return NEED_FULL
        return NEED_HEADER if requirement & FetchRequirement.HEADER else NEED_NONE
    need = NEED_NONE
    for attr in command.attributes:
        name, section = attr.value, attr.section
        if name in _ROW_ATTRIBUTES:
            continue
        if name == b"ENVELOPE":
            wanted = NEED_NONE if parts is not None and parts.envelope else NEED_HEADER
        elif name == b"BODYSTRUCTURE" or (name == b"BODY" and section is None):
            wanted = NEED_NONE if parts is not None and parts.structure else NEED_FULL
        elif name == b"RFC822.HEADER" or (
            name in (b"BODY", b"BODY.PEEK")
            and section is not None
            and not section.parts
            and section.specifier in _HEADER_SPECIFIERS
        ):
            wanted = NEED_HEADER
        else:
            wanted = NEED_FULL
        need = max(need, wanted)
    return need


class ContentLoader:
    """Loads a batch of messages with one query the first time any of them
    needs more than the process keeps: only their header blocks when that is
    all the command needs (cut out of the stored bytes by the database), the
    whole messages otherwise. What it loads goes into a process-wide LRU.

    Args:
        store: the IMAP store.
        owner: whose messages.
        message_ids: the batch.
        cache: the shared cache of stored parts by message ID.
    """

    def __init__(
        self,
        store: ImapStore,
        owner: Owner,
        message_ids: Sequence[str],
        cache: OrderedDict[str, StoredParts],
    ):
        self._store = store
        self._owner = owner
        self._ids = list(message_ids)
        self._cache = cache
        self._lock = asyncio.Lock()

    def cached(self, message_id: str) -> StoredParts | None:
        """The message's parts the process keeps, if any."""
        parts = self._cache.get(message_id)
        if parts is not None:
            self._cache.move_to_end(message_id)
        return parts

    async def parts(self, message_id: str, need: int) -> StoredParts | None:
        """The message's parts, loaded as far as ``need`` (``NEED_*``) says;
        ``None`` if it is not cached and was deleted meanwhile."""
        parts = self.cached(message_id)
        if parts is not None and parts.satisfies(need):
            return parts
        async with self._lock:
            parts = self.cached(message_id)
            if parts is None or not parts.satisfies(need):
                await self._load(need)
        return self._cache.get(message_id)

    async def _load(self, need: int) -> None:
        missing = [i for i in self._ids if not self._satisfied(i, need)]
        if need == NEED_HEADER:
            heads = await self._store.headers(self._owner, missing)
            whole = []
            for message_id, prefix in heads.items():
                block = header_block(prefix)
                if block is None:
                    whole.append(message_id)
                else:
                    self._keep(message_id, block, None)
            missing = whole
        if missing:
            for message_id, raw in (await self._store.raws(self._owner, missing)).items():
                content = MessageContent.parse(raw)
                self._keep(message_id, bytes(content.header), content)

    def _satisfied(self, message_id: str, need: int) -> bool:
        parts = self._cache.get(message_id)
        return parts is not None and parts.satisfies(need)

    def _keep(self, message_id: str, header: bytes, content: MessageContent | None) -> None:
        parts = self._cache.get(message_id)
        if parts is None:
            self._cache[message_id] = StoredParts(header, content)
            if len(self._cache) > CONTENT_CACHE_SIZE:
                self._cache.popitem(last=False)
        else:
            parts.header = header
            parts.content = content or parts.content
            self._cache.move_to_end(message_id)


class _FrozenEnvelope(EnvelopeStructure):
    """An ENVELOPE response made before, as bytes."""

    def __init__(self, data: bytes):
        self._data = data

    def write(self, writer: WriteStream) -> None:
        writer.write(self._data)

    def __bytes__(self) -> bytes:
        return self._data


class _FrozenBodyStructure(BodyStructure):
    """A BODYSTRUCTURE response made before, as bytes without and with
    extension data."""

    def __init__(self, plain: bytes, extended: bytes):
        self._plain = plain
        self._extended = extended

    @property
    def extended(self) -> Any:
        """The structure with extension data (for FETCH BODYSTRUCTURE)."""
        return _FrozenBodyStructure(self._extended, self._extended)

    def write(self, writer: WriteStream) -> None:
        writer.write(self._plain)

    def __bytes__(self) -> bytes:
        return self._plain


class StoredLoadedMessage(BaseLoadedMessage):
    """A message's content as FETCH and SEARCH read it: the header block served
    as stored, ENVELOPE and BODYSTRUCTURE made once per process, RFC822.SIZE
    from the row, and the MIME parse only when a body part needs it.

    Args:
        message: the message in its folder.
        requirement: what pymap asked for.
        parts: what is loaded of it (``None``: nothing, or it was deleted).
    """

    def __init__(
        self, message: ImapMessage, requirement: FetchRequirement, parts: StoredParts | None
    ):
        super().__init__(message, requirement, None)
        self._parts = parts
        self._size = message.row.size
        # SEARCH reads ENVELOPE's fields; only FETCH writes it as it was made.
        self._frozen = isinstance(current_command.get(None), FetchCommand)

    @property
    def content(self) -> MessageContent:
        """The parsed message (only its header if only the header was loaded).

        Raises:
            pymap's private no-content error: nothing is loaded (pymap answers
            empty parts for it, RFC 2180 §4.1.3).
        """
        parts = self._parts
        if self._content is None and parts is not None:
            if parts.content is not None:
                self._content = parts.content
            elif parts.header is not None:
                self._content = MessageContent.parse(parts.header)
        return super().content

    def get_message_headers(
        self,
        section: Sequence[int] | None = None,
        subset: Collection[bytes] | None = None,
        inverse: bool = False,
    ) -> Writeable:
        """BODY[HEADER] as stored; other header sections through pymap."""
        if not section and subset is None and self._parts and self._parts.header is not None:
            return Writeable.wrap(self._parts.header)
        return super().get_message_headers(section, subset, inverse)

    def get_size(self, section: Sequence[int] | None = None) -> int:
        """RFC822.SIZE: the stored size in bytes; a part's through pymap."""
        return self._size if not section else super().get_size(section)

    def get_envelope_structure(self) -> EnvelopeStructure:
        """ENVELOPE, made from the header once per process (for FETCH; SEARCH
        gets pymap's, whose fields it reads)."""
        parts = self._parts
        if self._frozen and parts is not None and parts.envelope is not None:
            return _FrozenEnvelope(parts.envelope)
        envelope = super().get_envelope_structure()
        if parts is not None and (parts.header is not None or parts.content is not None):
            parts.envelope = bytes(envelope)
        return envelope

    def get_body_structure(self) -> BodyStructure:
        """BODYSTRUCTURE, made from the parsed message once per process."""
        parts = self._parts
        if self._frozen and parts is not None and parts.structure is not None:
            return _FrozenBodyStructure(*parts.structure)
        structure = super().get_body_structure()
        if parts is not None and parts.content is not None:
            parts.structure = (bytes(structure), bytes(structure.extended))
        return structure


class ImapMessage(BaseMessage):
    """A message in a folder: pymap's metadata plus our row and loader."""

    __slots__ = ["_loader", "row"]

    def __init__(self, row: Row, loader: ContentLoader | None, *, expunged: bool = False):
        super().__init__(
            row.uid,
            row.created_at,
            flags_of(row),
            expunged=expunged,
            email_id=ObjectId(row.id.encode()),
            thread_id=ObjectId(row.thread_id.encode()),
        )
        self.row = row
        self._loader = loader

    async def load_content(self, requirement: FetchRequirement) -> StoredLoadedMessage:
        """What the running command needs of the message (see ``fetch_need``)."""
        parts = None
        if self._loader is not None:
            parts = self._loader.cached(self.row.id)
            need = fetch_need(requirement, parts)
            if need != NEED_NONE:
                parts = await self._loader.parts(self.row.id, need)
        return StoredLoadedMessage(self, requirement, parts)


class Folder:
    """One folder of an inbox (pymap's ``MailboxDataInterface``).

    Args:
        store: the IMAP store.
        owner: the inbox.
        name: the folder (a key of ``FOLDERS``).
        uid_validity: the owner's UIDVALIDITY.
        wakeups: the process's change listener.
        cache: the shared cache of stored parts.
    """

    def __init__(
        self,
        store: ImapStore,
        mail: MailStore,
        owner: Owner,
        name: str,
        uid_validity: int,
        wakeups: Wakeups,
        cache: OrderedDict[str, StoredParts],
    ):
        self._store = store
        self._mail = mail
        self.owner = owner
        self.name = name
        self._uid_validity = uid_validity
        self._wakeups = wakeups
        self._cache = cache
        self._selected_set = SelectedSet()

    @property
    def mailbox_id(self) -> ObjectId:
        """Stable per inbox and folder (RFC 8474)."""
        return ObjectId(f"{self.owner.id}-{self.name}".encode())

    @property
    def readonly(self) -> bool:
        """Folders are writable (flags, EXPUNGE, MOVE)."""
        return False

    @property
    def uid_validity(self) -> int:
        """The owner's UIDVALIDITY."""
        return self._uid_validity

    @property
    def permanent_flags(self) -> frozenset[Flag]:
        """System flags and any keyword (``\\*``)."""
        return frozenset({Seen, Flagged, Deleted, Answered, Draft, Wildcard})

    @property
    def session_flags(self) -> frozenset[Flag]:
        """``\\Recent`` only."""
        return frozenset({Recent})

    @property
    def selected_set(self) -> SelectedSet:
        """Sessions that selected this folder object."""
        return self._selected_set

    def _loader(self, rows: Sequence[Row]) -> ContentLoader:
        return ContentLoader(self._store, self.owner, [r.id for r in rows], self._cache)

    async def update_selected(
        self, selected: SelectedMailbox, *, wait_on: Event | None = None
    ) -> SelectedMailbox:
        """Adds the folder's changes since the session last looked; with
        ``wait_on`` (IDLE), first waits for it or for a change to the owner."""
        if wait_on is not None:
            with self._wakeups.waiting(self.owner.id) as changed:
                # Both registered before looking, so a change or a DONE that comes
                # while we look still wakes us.
                either = wait_on.or_event(changed)
                seen = selected.mod_sequence or 0
                if await self._store.last_value(self.owner) <= seen and not wait_on.is_set():
                    await either.wait()
        changes = await self._store.changes(self.owner, self.name, selected.mod_sequence)
        selected.mod_sequence = changes.modseq
        loader = self._loader(changes.rows)
        expunged = changes.expunged
        if changes.complete:
            # Resynchronised in full: whatever the session knows that is not
            # here any more has left the folder.
            here = {row.uid for row in changes.rows}
            known = selected.messages.get_all(SequenceSet.all())
            expunged = [cached.uid for _, cached in known if cached.uid not in here]
        selected.add_updates([ImapMessage(r, loader) for r in changes.rows], expunged)
        return selected

    async def append(self, append_msg: AppendMessage, *, recent: bool = False) -> ImapMessage:
        """Refused: mail is sent through the API (DESIGN §7.5).

        Raises:
            NotAllowedError: always.
        """
        raise NotAllowedError("APPEND is not supported; send through the Mailplane API.")

    async def copy(self, uid: int, destination: Folder, *, recent: bool = False) -> int | None:
        """To Trash, the same as MOVE; elsewhere refused, as a message is in one folder.

        Raises:
            NotAllowedError: the destination is not Trash.
        """
        if destination.name != "Trash":
            raise NotAllowedError("A message is in one folder at a time; use MOVE.")
        return await self.move(uid, destination)

    async def move(self, uid: int, destination: Folder, *, recent: bool = False) -> int | None:
        """Relabels the message into ``destination``; its UID there, or ``None``
        if it is not here any more.

        Raises:
            NotAllowedError: inbound mail cannot go to Sent, nor outbound to INBOX.
        """
        add, remove = _MOVES[destination.name]

        def plan(row: Row) -> Relabel:
            return Relabel(row.id, add, remove, row.imap_flags)

        moved = await self._store.relabel(self.owner, self.name, [uid], plan)
        if uid not in moved:
            return None
        row, folder = moved[uid]
        if folder != destination.name:
            # Undo: the message's direction decides INBOX versus Sent.
            back = _MOVES[self.name]
            await self._store.relabel(
                self.owner,
                folder,
                [row.uid],
                lambda r: Relabel(r.id, back[0], back[1], r.imap_flags),
            )
            raise NotAllowedError(f"This message cannot be moved to {destination.name}.")
        return row.uid

    async def get(self, uid: int, cached_msg: CachedMessage) -> ImapMessage:
        """The message, or the cached one marked expunged if it left."""
        rows = await self._store.by_uids(self.owner, self.name, [uid])
        if rows:
            return ImapMessage(rows[0], self._loader(rows))
        assert isinstance(cached_msg, ImapMessage)
        return ImapMessage(cached_msg.row, None, expunged=True)

    async def update(
        self, uid: int, cached_msg: CachedMessage, flag_set: frozenset[Flag], mode: FlagOp
    ) -> ImapMessage:
        """Changes one message's flags (see ``update_many``)."""
        return (await self.update_many([(uid, cached_msg)], flag_set, mode))[uid]

    async def update_many(
        self,
        messages: Sequence[tuple[int, CachedMessage]],
        flag_set: frozenset[Flag],
        mode: FlagOp,
    ) -> dict[int, ImapMessage]:
        """Changes the flags of several messages in one transaction; each
        message's answer is it afterwards (marked expunged if it left)."""

        def plan(row: Row) -> Relabel | None:
            return relabel_for(row, mode.apply(flags_of(row), flag_set))

        done = await self._store.relabel(self.owner, self.name, [u for u, _ in messages], plan)
        rows = [row for row, _ in done.values()]
        loader = self._loader(rows)
        out = {}
        for uid, cached in messages:
            if uid in done:
                out[uid] = ImapMessage(done[uid][0], loader)
            else:
                assert isinstance(cached, ImapMessage)
                out[uid] = ImapMessage(cached.row, None, expunged=True)
        return out

    async def delete(self, uids: Iterable[int]) -> None:
        """EXPUNGE: to Trash, or in Trash for good (DESIGN §7.4)."""
        uids = list(uids)
        if not uids:
            return
        if self.name != "Trash":
            await self._store.relabel(
                self.owner, self.name, uids, lambda r: Relabel(r.id, ("trash",), (), ())
            )
            return
        for row in await self._store.by_uids(self.owner, self.name, uids):
            await self._mail.delete_message(self.owner.account_id, row.id)

    async def claim_recent(self, selected: SelectedMailbox) -> None:
        """``\\Recent`` is not tracked (IMAP4rev2, RFC 9051, drops it)."""

    async def cleanup(self) -> None:
        """Nothing to collect."""

    async def snapshot(self) -> MailboxSnapshot:
        """The folder's counts for SELECT and STATUS."""
        summary = await self._store.summary(self.owner, self.name)
        return MailboxSnapshot(
            self.mailbox_id,
            self.readonly,
            self.uid_validity,
            self.permanent_flags,
            self.session_flags,
            summary.total,
            0,
            summary.unseen,
            summary.first_unseen,
            summary.next_uid,
        )

    async def find(
        self, seq_set: SequenceSet, selected: SelectedMailbox
    ) -> AsyncIterable[tuple[int, ImapMessage]]:
        """The messages of ``seq_set`` still here, read with one query."""
        wanted = list(selected.messages.get_all(seq_set))
        rows = await self._store.by_uids(self.owner, self.name, [c.uid for _, c in wanted])
        by_uid = {r.uid: r for r in rows}
        loader = self._loader(rows)
        for seq, cached in wanted:
            row = by_uid.get(cached.uid)
            if row is not None:
                yield seq, ImapMessage(row, loader)

    async def find_deleted(self, seq_set: SequenceSet, selected: SelectedMailbox) -> Sequence[int]:
        """UIDs of ``seq_set`` flagged ``\\Deleted``."""
        found = [msg async for _, msg in self.find(seq_set, selected)]
        return [msg.uid for msg in found if Deleted in msg.permanent_flags]


class FolderSet:
    """An inbox's folders (pymap's ``MailboxSetInterface``); fixed, so CREATE,
    DELETE and RENAME are refused.

    Args:
        folder: makes the ``Folder`` of a name.
    """

    def __init__(self, folder: Any):
        self._folder = folder

    @property
    def delimiter(self) -> str:
        """``/``."""
        return "/"

    async def set_subscribed(self, name: str, subscribed: bool) -> None:
        """Every folder is subscribed; (un)subscribing changes nothing."""

    async def list_subscribed(self) -> ListTree:
        """Every folder."""
        return await self.list_mailboxes()

    async def list_mailboxes(self) -> ListTree:
        """INBOX, Sent, Archive, Junk, Trash."""
        return ListTree(self.delimiter).update(*FOLDERS)

    async def get_mailbox(self, name: str) -> Folder:
        """The folder ``name`` (INBOX in any case, RFC 3501 §5.1; others too).

        Raises:
            KeyError: no such folder.
        """
        for folder in FOLDERS:
            if folder.lower() == name.lower():
                return await self._folder(folder)  # type: ignore[no-any-return]
        raise KeyError(name)

    async def add_mailbox(self, name: str) -> ObjectId:
        """Refused.

        Raises:
            NotAllowedError: always.
        """
        raise NotAllowedError("Folders are fixed: INBOX, Sent, Archive, Junk and Trash.")

    async def delete_mailbox(self, name: str) -> None:
        """Refused (see ``add_mailbox``)."""
        raise NotAllowedError("Folders are fixed: INBOX, Sent, Archive, Junk and Trash.")

    async def rename_mailbox(self, before: str, after: str) -> None:
        """Refused (see ``add_mailbox``)."""
        raise NotAllowedError("Folders are fixed: INBOX, Sent, Archive, Junk and Trash.")


class InboxSession(BaseSession[ImapMessage]):
    """One logged-in connection of an inbox.

    Args:
        identity: the authenticated inbox.
        config: the IMAP settings.
        folders: its folders.
    """

    def __init__(self, identity: InboxIdentity, config: ImapConfig, folders: FolderSet):
        super().__init__(identity.name)
        self._config = config
        self._folders = folders

    @property
    def config(self) -> ImapConfig:
        """The IMAP settings."""
        return self._config

    @property
    def mailbox_set(self) -> Any:
        """The inbox's folders."""
        return self._folders

    async def list_mailboxes(
        self,
        ref_name: str,
        filter_: str,
        subscribed: bool = False,
        selected: SelectedMailbox | None = None,
    ) -> tuple[Iterable[tuple[str, str | None, Sequence[bytes]]], SelectedMailbox | None]:
        """LIST with the RFC 6154 special-use attributes."""
        listed, updates = await super().list_mailboxes(ref_name, filter_, subscribed, selected)
        out = []
        for name, delimiter, attributes in listed:
            special = FOLDERS.get(name)
            extra = [special[1:]] if special else []
            out.append((name, delimiter, [*attributes, *extra]))
        return out, updates

    async def fetch_messages(
        self, selected: SelectedMailbox, sequence_set: SequenceSet, set_seen: bool
    ) -> tuple[Iterable[tuple[int, ImapMessage]], SelectedMailbox]:
        """FETCH: the messages in one query (and ``\\Seen`` set in one transaction)."""
        folder: Folder = await self._get_selected(selected)  # type: ignore[assignment]
        if set_seen:
            wanted = list(selected.messages.get_all(sequence_set))
            updated = await folder.update_many(
                [(c.uid, c) for _, c in wanted], frozenset({Seen}), FlagOp.ADD
            )
            found = [(seq, updated[c.uid]) for seq, c in wanted]
        else:
            found = [pair async for pair in folder.find(sequence_set, selected)]
        return found, await folder.update_selected(selected)

    async def update_flags(
        self,
        selected: SelectedMailbox,
        sequence_set: SequenceSet,
        flag_set: frozenset[Flag],
        mode: FlagOp = FlagOp.REPLACE,
    ) -> tuple[Iterable[tuple[int, ImapMessage]], SelectedMailbox]:
        """STORE, in one transaction."""
        if selected.readonly:
            raise MailboxReadOnly()
        folder: Folder = await self._get_selected(selected)  # type: ignore[assignment]
        permanent = selected.permanent_flags & flag_set
        wanted = list(selected.messages.get_all(sequence_set))
        updated = await folder.update_many([(c.uid, c) for _, c in wanted], permanent, mode)
        out = []
        for seq, cached in wanted:
            message = updated[cached.uid]
            if not message.expunged:
                selected.session_flags.update(cached.uid, flag_set, mode)
            out.append((seq, message))
        return out, await folder.update_selected(selected)


class ImapConfig(IMAPConfig):
    """pymap's settings for our listener: implicit TLS is done by the listener,
    so pymap offers no STARTTLS and accepts LOGIN and AUTHENTICATE PLAIN/LOGIN."""

    def __init__(self, ssl_context: ssl.SSLContext):
        super().__init__(
            Namespace(passlib_cfg=None, proxy_protocol=None, debug=False),
            host=None,
            port=0,
            ssl_context=ssl_context,
            tls_enabled=False,
            reject_dnsbl=False,
            proxy_protocol=ProxyProtocolVersion.get(None),
            max_append_len=None,
            bad_command_limit=5,
        )

    @property
    def backend_capability(self) -> BackendCapability:
        """IDLE; no OBJECTID or MULTIAPPEND (APPEND is refused)."""
        return BackendCapability(idle=True, object_id=False, multi_append=False)

    @property
    def greeting(self) -> bytes:
        """The greeting (no reverse lookup of our own name)."""
        return b"Mailplane IMAP4rev1 ready"


def tls_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """A server TLS context (TLS 1.2 or later, RFC 8996) from PEM files.

    Raises:
        OSError, ssl.SSLError: the files are missing or do not match.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    return context


class CoalescingWriter:
    """A connection's ``StreamWriter`` that hands the transport one buffer per
    response instead of one per token.

    pymap writes a response token by token (``* 3 FETCH ``, ``(``, ``FLAGS``, …)
    and over TLS each ``write`` becomes its own TLS record. A client that reads a
    non-blocking socket line by line can then see half a line: imapclient's
    ``idle_check`` does, and CPython's buffered ``readline`` drops the half it
    had read when the next ``recv`` raises ``SSLWantReadError``, so the rest of
    the line (``(FLAGS ())``, or ``)`` after a literal) later reads as a response
    of its own and imaplib aborts with ``unexpected response``. Buffering until
    pymap's ``drain()`` after each response, and past ``FLUSH_BYTES`` only at a
    line end, puts every response line of up to a TLS record (16 KiB, RFC 8446
    §5.1) in one record, so a reader never sees part of a line; it also cuts a
    FETCH of 100 messages from over a thousand records to a few.

    Args:
        writer: the connection's writer; everything but ``write``, ``drain`` and
            ``close`` is its own.
    """

    #: Buffered bytes past which the buffer is sent at the next line end.
    FLUSH_BYTES = 64 * 1024

    def __init__(self, writer: asyncio.StreamWriter):
        self._writer = writer
        self._buffer: list[bytes] = []
        self._size = 0

    def write(self, data: bytes) -> None:
        """Buffers ``data`` (sent at ``drain()``, or once past ``FLUSH_BYTES``
        when ``data`` ends a line)."""
        self._buffer.append(bytes(data))
        self._size += len(data)
        if self._size >= self.FLUSH_BYTES and data.endswith(b"\n"):
            self._flush()

    def _flush(self) -> None:
        if self._buffer:
            buffered = b"".join(self._buffer)
            self._buffer.clear()
            self._size = 0
            self._writer.write(buffered)

    async def drain(self) -> None:
        """Sends what is buffered and waits for the transport's buffer to drain.

        Raises:
            ConnectionError: the connection is lost.
        """
        self._flush()
        await self._writer.drain()

    def close(self) -> None:
        """Sends what is buffered, then closes the connection."""
        with contextlib.suppress(Exception):
            self._flush()
        self._writer.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._writer, name)


class ImapFront:
    """The IMAP listener: pymap's engine over our store.

    Args:
        pool: the messages service's pool.
        dsn: its DSN, for the change listener's own connection.
        inboxes_channel: a channel to the inboxes service.
        deadline: seconds a credential check may take.
        internal_token: the service credential.
        throttle: the failed-login throttle.
        context: the TLS context.
        expunge_retention: seconds expunge records are kept; a session that has
            not looked for longer resynchronises its folder in full.
        sweep_interval: seconds between prunes of older expunge records.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        dsn: str,
        inboxes_channel: grpc.aio.Channel,
        deadline: float,
        internal_token: str,
        throttle: LoginThrottle,
        context: ssl.SSLContext,
        expunge_retention: float = EXPUNGE_RETENTION_SECONDS,
        sweep_interval: float = SWEEP_INTERVAL_SECONDS,
    ):
        self._expunge_retention = expunge_retention
        self._sweep_interval = sweep_interval
        self._sweeper: asyncio.Task[None] | None = None
        self._store = ImapStore(pool)
        self._mail = MailStore(pool)
        self.wakeups = Wakeups(dsn)
        self._cache: OrderedDict[str, StoredParts] = OrderedDict()
        self._config = ImapConfig(context)
        self._context = context
        self._login = InboxLogin(
            inboxes_channel, deadline, internal_token, throttle, self._session, self._config
        )
        self._server: asyncio.Server | None = None

    @asynccontextmanager
    async def _session(self, identity: InboxIdentity) -> AsyncIterator[InboxSession]:
        owner = identity.owner
        uid_validity = await self._store.uid_validity(owner)

        async def folder(name: str) -> Folder:
            return Folder(
                self._store, self._mail, owner, name, uid_validity, self.wakeups, self._cache
            )

        task = asyncio.current_task()
        assert task is not None
        self.wakeups.attach(owner.id, task)
        try:
            yield InboxSession(identity, self._config, FolderSet(folder))
        finally:
            self.wakeups.detach(owner.id, task)

    async def start(self, host: str, port: int) -> asyncio.Server:
        """Listens on ``host:port`` with implicit TLS (RFC 8314 §3.3)."""
        await self.wakeups.start()
        self._config.apply_context()
        server = IMAPServer(self._login, self._config)

        async def connected(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter, sock_info: Any
        ) -> None:
            await server(reader, CoalescingWriter(writer), sock_info)  # type: ignore[arg-type]

        callback = ProxyProtocolReader(self._config.proxy_protocol).get_callback(connected)
        self._server = await asyncio.start_server(callback, host, port, ssl=self._context)
        self._sweeper = asyncio.create_task(self._sweep())
        _log.info("imap_listening", host=host, port=port)
        return self._server

    async def _sweep(self) -> None:
        """Prunes old expunge records every ``sweep_interval`` seconds, for as
        long as the listener runs (a failed prune is retried next time)."""
        while True:
            try:
                pruned = await self._store.prune_expunges(self._expunge_retention)
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError):
                _log.warning("imap_expunge_prune_failed", exc_info=True)
            else:
                if pruned:
                    _log.info("imap_expunges_pruned", records=pruned)
            await asyncio.sleep(self._sweep_interval)

    async def close(self) -> None:
        """Stops listening and closes every connection."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
        await self.wakeups.close()
