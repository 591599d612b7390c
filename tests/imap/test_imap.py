"""IMAP over the messages store (DESIGN §7.1): stock clients (``imaplib`` and
``imapclient``) against the real listener, with credentials as ``POST
/v1/inboxes`` hands them out, mail sent over real SMTP to the MX edge, and
REST reading the same store."""

from __future__ import annotations

import asyncio
import imaplib
import re
import socket
import ssl
from typing import Any

import httpx
import imapclient

from services.messages.imap_store import ImapStore
from services.messages.ingest import Ingest
from tests.conftest import Services, Tenant
from tests.imap.conftest import Listener
from tests.messages.test_inbound import drain, message, new_inbox, send


def login(listener: Listener, imap: dict[str, Any]) -> imaplib.IMAP4_SSL:
    """imaplib, logged in with an inbox's handed-out ``imap`` block, verifying
    the listener's certificate."""
    context = ssl.create_default_context(cafile=str(listener.cafile))
    client = imaplib.IMAP4_SSL(imap["host"], imap["port"], ssl_context=context, timeout=30)
    client.login(imap["username"], imap["password"])
    return client


def other_client(listener: Listener, imap: dict[str, Any]) -> imapclient.IMAPClient:
    """imapclient, logged in the same way."""
    context = ssl.create_default_context(cafile=str(listener.cafile))
    client = imapclient.IMAPClient(
        imap["host"], imap["port"], ssl=True, ssl_context=context, timeout=30
    )
    client.login(imap["username"], imap["password"])
    return client


def flags_of(fetched: list[Any]) -> set[str]:
    """The FLAGS of imaplib's answer to a FETCH of one message."""
    text = b" ".join(p if isinstance(p, bytes) else p[0] for p in fetched).decode()
    match = re.search(r"FLAGS \(([^)]*)\)", text)
    assert match, text
    return set(match.group(1).split())


async def inbox_with_mail(
    http: httpx.AsyncClient,
    services: Services,
    tenant: Tenant,
    edge: tuple[str, int],
    ingest: Ingest,
    *subjects: str,
) -> dict[str, Any]:
    """A new inbox, and one message per subject sent to it over SMTP and ingested."""
    inbox = await new_inbox(http, services, tenant)
    for subject in subjects:
        await send(edge, message(inbox["email"], subject=subject), [inbox["email"]])
    await drain(ingest)
    return inbox


async def rest_message(http: httpx.AsyncClient, tenant: Tenant, inbox: dict[str, Any]) -> Any:
    listed = await http.get(
        f"/v1/inboxes/{inbox['id']}/messages",
        params={"includeTrash": "true"},
        headers=tenant.headers,
    )
    assert listed.status_code == 200, listed.text
    (only,) = listed.json()["messages"]
    return only


async def test_handed_out_credentials_read_mail_sent_over_smtp(
    http: httpx.AsyncClient,
    services: Services,
    tenant: Tenant,
    edge: tuple[str, int],
    ingest: Ingest,
    imap_listener: Listener,
) -> None:
    inbox = await inbox_with_mail(http, services, tenant, edge, ingest, "Quote for 100 units")
    imap = inbox["credentials"]["imap"]
    assert imap["tls"] is True
    assert (imap["host"], imap["port"]) == (imap_listener.host, imap_listener.port)
    assert imap["username"] == inbox["email"]
    rest = await rest_message(http, tenant, inbox)
    raw = await http.get(f"/v1/messages/{rest['id']}/raw", headers=tenant.headers)

    def read() -> dict[str, Any]:
        client = login(imap_listener, imap)
        try:
            status, data = client.select("INBOX")
            assert status == "OK" and data == [b"1"]
            _, envelope = client.fetch("1", "(FLAGS ENVELOPE BODYSTRUCTURE)")
            _, body = client.fetch("1", "(BODY.PEEK[])")
            _, unseen = client.search(None, "UNSEEN")
            _, by_subject = client.uid("SEARCH", "SUBJECT", '"100 units"')
            _, none = client.search(None, "SUBJECT", '"nothing like it"')
            folders = [line.decode() for line in client.list()[1]]
            return {
                "envelope": envelope,
                "body": body[0][1],
                "unseen": unseen,
                "uids": by_subject,
                "none": none,
                "folders": folders,
            }
        finally:
            client.logout()

    got = await asyncio.to_thread(read)
    head = got["envelope"][0] if isinstance(got["envelope"][0], bytes) else got["envelope"][0][0]
    assert b'"Quote for 100 units"' in head
    assert b'("Ada Lovelace" NIL "ada" "example.com")' in head
    assert b'BODYSTRUCTURE ("text" "plain"' in head
    assert "\\Seen" not in flags_of(got["envelope"])
    assert got["body"] == raw.content
    assert got["unseen"] == [b"1"] and got["none"] == [b""]
    assert len(got["uids"][0].split()) == 1
    names = " ".join(got["folders"])
    for folder in ("INBOX", "Sent", "Trash", "Junk", "Archive"):
        assert f'"{folder}"' in names or f" {folder}" in names
    assert "\\Trash" in names and "\\Sent" in names


async def test_wrong_password_is_refused(
    http: httpx.AsyncClient,
    services: Services,
    tenant: Tenant,
    imap_listener: Listener,
) -> None:
    inbox = await new_inbox(http, services, tenant)
    imap = inbox["credentials"]["imap"]

    def attempt(password: str) -> str:
        try:
            login(imap_listener, {**imap, "password": password}).logout()
        except imaplib.IMAP4.error as exc:
            return str(exc)
        return "OK"

    refused = await asyncio.to_thread(attempt, imap["password"] + "x")
    assert "AUTHENTICATIONFAILED" in refused or "wrong" in refused
    assert await asyncio.to_thread(attempt, imap["password"]) == "OK"


async def test_seen_and_keywords_are_labels_both_ways(
    http: httpx.AsyncClient,
    services: Services,
    tenant: Tenant,
    edge: tuple[str, int],
    ingest: Ingest,
    imap_listener: Listener,
) -> None:
    inbox = await inbox_with_mail(http, services, tenant, edge, ingest, "Flags")
    imap = inbox["credentials"]["imap"]
    client = await asyncio.to_thread(login, imap_listener, imap)
    try:
        await asyncio.to_thread(client.select, "INBOX")
        # IMAP → REST: \Seen removes `unread`, a keyword becomes a label.
        stored = await asyncio.to_thread(client.store, "1", "+FLAGS", "(\\Seen vip)")
        assert stored[0] == "OK"
        rest = await rest_message(http, tenant, inbox)
        assert "unread" not in rest["labels"] and "vip" in rest["labels"]
        assert "received" in rest["labels"]
        # REST → IMAP: `unread` clears \Seen, a label shows as a keyword.
        patched = await http.patch(
            f"/v1/messages/{rest['id']}",
            json={"addLabels": ["unread", "follow-up"], "removeLabels": ["vip"]},
            headers=tenant.headers,
        )
        assert patched.status_code == 200, patched.text
        _, fetched = await asyncio.to_thread(client.fetch, "1", "(FLAGS)")
        assert flags_of(fetched) == {"follow-up"}
        # FETCH BODY[] sets \Seen (RFC 3501 §6.4.5), and REST sees it.
        await asyncio.to_thread(client.fetch, "1", "(BODY[])")
        assert "unread" not in (await rest_message(http, tenant, inbox))["labels"]
    finally:
        await asyncio.to_thread(client.logout)


async def test_expunge_trashes_and_expunge_in_trash_deletes(
    http: httpx.AsyncClient,
    services: Services,
    tenant: Tenant,
    edge: tuple[str, int],
    ingest: Ingest,
    imap_listener: Listener,
) -> None:
    inbox = await inbox_with_mail(http, services, tenant, edge, ingest, "Old news")
    imap = inbox["credentials"]["imap"]
    rest = await rest_message(http, tenant, inbox)

    def expunge(folder: str) -> tuple[Any, Any]:
        client = login(imap_listener, imap)
        try:
            client.select(folder)
            client.store("1", "+FLAGS", "(\\Deleted)")
            expunged = client.expunge()
            return expunged, client.select(folder)
        finally:
            client.logout()

    expunged, inbox_after = await asyncio.to_thread(expunge, "INBOX")
    assert expunged == ("OK", [b"1"]) and inbox_after == ("OK", [b"0"])
    assert "trash" in (await rest_message(http, tenant, inbox))["labels"]

    def move_back() -> Any:
        client = other_client(imap_listener, imap)
        try:
            client.select_folder("Trash")
            (uid,) = client.search("ALL")
            client.move([uid], "INBOX")
            return client.select_folder("INBOX")[b"EXISTS"]
        finally:
            client.logout()

    assert await asyncio.to_thread(move_back) == 1
    assert "trash" not in (await rest_message(http, tenant, inbox))["labels"]

    # Trashed over REST, then expunged from Trash over IMAP: gone for good.
    await http.patch(
        f"/v1/messages/{rest['id']}", json={"addLabels": ["trash"]}, headers=tenant.headers
    )
    expunged, trash_after = await asyncio.to_thread(expunge, "Trash")
    assert expunged == ("OK", [b"1"]) and trash_after == ("OK", [b"0"])
    gone = await http.get(f"/v1/messages/{rest['id']}", headers=tenant.headers)
    assert gone.status_code == 404


async def test_uids_are_stable_and_grow_across_folders(
    http: httpx.AsyncClient,
    services: Services,
    tenant: Tenant,
    edge: tuple[str, int],
    ingest: Ingest,
    imap_listener: Listener,
) -> None:
    inbox = await inbox_with_mail(http, services, tenant, edge, ingest, "One", "Two")
    imap = inbox["credentials"]["imap"]

    def uids() -> dict[str, Any]:
        client = other_client(imap_listener, imap)
        try:
            first = client.select_folder("INBOX")
            before = client.search("ALL")
            (moved,) = client.search(["SUBJECT", "One"])
            # COPY to Trash trashes: one message is in one folder.
            client.copy([moved], "Trash")
            again = client.select_folder("INBOX")
            after = client.search("ALL")
            trash = client.select_folder("Trash")
            return {
                "capabilities": client.capabilities(),
                "first": first,
                "before": before,
                "again": again,
                "after": after,
                "trash": trash,
                "trashed": client.search("ALL"),
            }
        finally:
            client.logout()

    got = await asyncio.to_thread(uids)
    assert {b"IDLE", b"UIDPLUS", b"MOVE"} <= set(got["capabilities"])
    validity = got["first"][b"UIDVALIDITY"]
    assert got["again"][b"UIDVALIDITY"] == got["trash"][b"UIDVALIDITY"] == validity
    assert got["first"][b"UIDNEXT"] > max(got["before"])
    assert len(got["before"]) == 2 and got["after"] == [max(got["before"])]
    # Entering Trash, the message took a UID above every UID handed out before.
    (trashed,) = got["trashed"]
    assert trashed >= got["first"][b"UIDNEXT"]


async def test_idle_announces_new_mail(
    http: httpx.AsyncClient,
    services: Services,
    tenant: Tenant,
    edge: tuple[str, int],
    ingest: Ingest,
    imap_listener: Listener,
) -> None:
    inbox = await new_inbox(http, services, tenant)
    imap = inbox["credentials"]["imap"]
    client = await asyncio.to_thread(other_client, imap_listener, imap)
    try:
        await asyncio.to_thread(client.select_folder, "INBOX")
        await asyncio.to_thread(client.idle)
        await send(edge, message(inbox["email"], subject="Ping"), [inbox["email"]])
        await drain(ingest)
        responses = await asyncio.to_thread(client.idle_check, 30)
        await asyncio.to_thread(client.idle_done)
        assert (1, b"EXISTS") in responses
        fetched = await asyncio.to_thread(client.fetch, [1], ["ENVELOPE"])
        (envelope,) = (f[b"ENVELOPE"] for f in fetched.values())
        assert envelope.subject == b"Ping"
    finally:
        await asyncio.to_thread(client.logout)


async def test_rotation_refuses_the_old_password_at_once(
    http: httpx.AsyncClient,
    services: Services,
    tenant: Tenant,
    imap_listener: Listener,
) -> None:
    inbox = await new_inbox(http, services, tenant)
    old = inbox["credentials"]["imap"]
    await asyncio.to_thread(lambda: login(imap_listener, old).logout())
    rotated = await http.post(
        f"/v1/inboxes/{inbox['id']}/rotate-credentials", headers=tenant.headers
    )
    assert rotated.status_code == 200, rotated.text
    new = rotated.json()["credentials"]["imap"]
    assert new["password"] != old["password"]

    def attempt(imap: dict[str, Any]) -> bool:
        try:
            login(imap_listener, imap).logout()
        except imaplib.IMAP4.error:
            return False
        return True

    assert await asyncio.to_thread(attempt, old) is False
    assert await asyncio.to_thread(attempt, new) is True


async def test_failed_logins_are_throttled_per_username(
    http: httpx.AsyncClient,
    services: Services,
    tenant: Tenant,
    imap_listener: Listener,
    settings: Any,
) -> None:
    inbox = await new_inbox(http, services, tenant)
    imap = inbox["credentials"]["imap"]

    def attempt(password: str) -> str:
        try:
            login(imap_listener, {**imap, "password": password}).logout()
        except imaplib.IMAP4.error as exc:
            return str(exc)
        return "OK"

    for _ in range(settings.login_failures_per_user):
        assert "wrong" in await asyncio.to_thread(attempt, "not-the-password")
    # Past the limit even the right password is refused, unchecked.
    assert "Too many failed logins" in await asyncio.to_thread(attempt, imap["password"])


async def test_an_inbox_sees_only_its_own_mail(
    http: httpx.AsyncClient,
    services: Services,
    tenant: Tenant,
    other_tenant: Tenant,
    edge: tuple[str, int],
    ingest: Ingest,
    imap_listener: Listener,
) -> None:
    mine = await inbox_with_mail(http, services, tenant, edge, ingest, "Mine")
    neighbour = await inbox_with_mail(http, services, tenant, edge, ingest, "Neighbour's")
    stranger = await inbox_with_mail(
        http, services, other_tenant, edge, ingest, "Stranger's", "Also the stranger's"
    )

    def subjects(imap: dict[str, Any]) -> list[bytes]:
        client = other_client(imap_listener, imap)
        try:
            out = []
            for folder in ("INBOX", "Sent", "Archive", "Junk", "Trash"):
                client.select_folder(folder)
                uids = client.search("ALL")
                fetched = client.fetch(uids, ["ENVELOPE"]) if uids else {}
                out.extend(f[b"ENVELOPE"].subject for f in fetched.values())
            return sorted(out)
        finally:
            client.logout()

    assert await asyncio.to_thread(subjects, mine["credentials"]["imap"]) == [b"Mine"]
    assert await asyncio.to_thread(subjects, neighbour["credentials"]["imap"]) == [b"Neighbour's"]
    assert await asyncio.to_thread(subjects, stranger["credentials"]["imap"]) == [
        b"Also the stranger's",
        b"Stranger's",
    ]

    def cross_login() -> bool:
        crossed = {**mine["credentials"]["imap"]}
        crossed["password"] = neighbour["credentials"]["imap"]["password"]
        try:
            login(imap_listener, crossed).logout()
        except imaplib.IMAP4.error:
            return False
        return True

    assert await asyncio.to_thread(cross_login) is False


async def test_deleting_an_inbox_closes_its_sessions(
    http: httpx.AsyncClient,
    services: Services,
    tenant: Tenant,
    imap_listener: Listener,
) -> None:
    inbox = await new_inbox(http, services, tenant)
    client = await asyncio.to_thread(login, imap_listener, inbox["credentials"]["imap"])
    await asyncio.to_thread(client.select, "INBOX")
    deleted = await http.delete(f"/v1/inboxes/{inbox['id']}", headers=tenant.headers)
    assert deleted.status_code == 200, deleted.text
    line = await asyncio.to_thread(client.readline)
    assert line.startswith(b"* BYE"), line
    assert await asyncio.to_thread(client.readline) == b""  # and the connection closed


def tls_records(sock: ssl.SSLSocket, until: bytes) -> list[bytes]:
    """What the server sends, one TLS record per item, up to the record holding
    ``until``. A blocking ``recv`` returns at most one record's data (OpenSSL's
    ``SSL_read`` reads one record at a time), which is what a non-blocking
    reader gets in the worst case; ``until`` is looked for across records."""
    records: list[bytes] = []
    while until not in b"".join(records):
        try:
            chunk = sock.recv(1 << 20)
        except TimeoutError:
            raise AssertionError(records) from None
        assert chunk, b"".join(records)
        records.append(chunk)
    return records


def quoted(value: str) -> bytes:
    """An IMAP quoted string (RFC 3501 §4.3)."""
    return b'"' + value.replace("\\", "\\\\").replace('"', '\\"').encode() + b'"'


async def test_responses_reach_a_non_blocking_reader_as_whole_lines(
    http: httpx.AsyncClient,
    services: Services,
    tenant: Tenant,
    edge: tuple[str, int],
    ingest: Ingest,
    imap_listener: Listener,
) -> None:
    # imapclient's idle_check reads a non-blocking socket, and a line split
    # across TLS records lost its head there: imaplib then aborted on the tail
    # (`unexpected response: b')'`). Every record must end a line.
    inbox = await inbox_with_mail(http, services, tenant, edge, ingest, "Whole lines")
    imap = inbox["credentials"]["imap"]
    rest = await rest_message(http, tenant, inbox)
    context = ssl.create_default_context(cafile=str(imap_listener.cafile))

    def connect() -> ssl.SSLSocket:
        raw = socket.create_connection((imap["host"], imap["port"]), timeout=30)
        return context.wrap_socket(raw, server_hostname=imap["host"])

    sock = await asyncio.to_thread(connect)
    records: list[bytes] = []
    try:

        def command(line: bytes | None, until: bytes) -> None:
            if line is not None:
                sock.sendall(line + b"\r\n")
            records.extend(tls_records(sock, until))

        await asyncio.to_thread(command, None, b"* OK")
        login_line = b"a LOGIN " + quoted(imap["username"]) + b" " + quoted(imap["password"])
        await asyncio.to_thread(command, login_line, b"a OK")
        await asyncio.to_thread(command, b"b SELECT INBOX", b"b OK")
        fetch = b"c FETCH 1 (FLAGS ENVELOPE BODYSTRUCTURE BODY.PEEK[])"
        await asyncio.to_thread(command, fetch, b"c OK")
        await asyncio.to_thread(command, b"d IDLE", b"+ ")
        patched = await http.patch(
            f"/v1/messages/{rest['id']}", json={"addLabels": ["vip"]}, headers=tenant.headers
        )
        assert patched.status_code == 200, patched.text
        await asyncio.to_thread(command, None, b"FETCH")
        await asyncio.to_thread(command, b"DONE", b"d OK")
    finally:
        sock.close()
    whole = b"".join(records)
    assert b"BODY[] {" in whole and b"vip" in whole, whole
    split = [record for record in records if not record.endswith(b"\r\n")]
    assert split == [], split


async def test_header_fetches_read_the_stored_header_and_agree_with_the_whole_message(
    http: httpx.AsyncClient,
    services: Services,
    tenant: Tenant,
    edge: tuple[str, int],
    ingest: Ingest,
    imap_listener: Listener,
) -> None:
    # Header sections and ENVELOPE come from the header block alone, RFC822.SIZE
    # from the row, and ENVELOPE/BODYSTRUCTURE once made from the process's
    # cache: each must be what the whole message says, cold and cached.
    inbox = await inbox_with_mail(http, services, tenant, edge, ingest, "Héllo, headers")
    imap = inbox["credentials"]["imap"]
    rest = await rest_message(http, tenant, inbox)
    raw = (await http.get(f"/v1/messages/{rest['id']}/raw", headers=tenant.headers)).content
    header = raw[: raw.index(b"\r\n\r\n") + 4]

    def fetches() -> list[Any]:
        client = login(imap_listener, imap)
        try:
            client.select("INBOX", readonly=True)
            heads = "(RFC822.SIZE ENVELOPE BODY.PEEK[HEADER] BODY.PEEK[HEADER.FIELDS (SUBJECT)])"
            out = [client.fetch("1", heads)[1]]
            out.append(client.fetch("1", "(BODYSTRUCTURE ENVELOPE BODY.PEEK[HEADER])")[1])
            out.append(client.fetch("1", "(BODYSTRUCTURE BODY.PEEK[])")[1])
            out.append(client.fetch("1", "(BODYSTRUCTURE ENVELOPE RFC822.HEADER)")[1])
            out.append(client.search(None, "SUBJECT", '"headers"')[1])
            return out
        finally:
            client.logout()

    cold, again, whole, cached, found = map(wire, await asyncio.to_thread(fetches))
    assert found == b"1"
    assert f"RFC822.SIZE {len(raw)} ".encode() in cold
    assert b"BODY[HEADER] {%d}\r\n%s" % (len(header), header) in cold
    subject = re.search(rb"^Subject:.*\r\n", header, re.MULTILINE)
    assert subject and b"{%d}\r\n%s\r\n" % (len(subject[0]) + 2, subject[0]) in cold
    envelope = between(cold, b"ENVELOPE ", b" BODY[HEADER]")
    assert b"H\xc3\xa9llo, headers" in envelope
    assert b'(("Ada Lovelace" NIL "ada" "example.com"))' in envelope
    structure = between(again, b"BODYSTRUCTURE ", b" ENVELOPE ")
    assert structure.startswith(b'("text" "plain"'), structure
    assert between(again, b"ENVELOPE ", b" BODY[HEADER]") == envelope
    assert b"BODY[HEADER] {%d}\r\n%s" % (len(header), header) in again
    assert between(whole, b"BODYSTRUCTURE ", b" BODY[]") == structure
    assert b"BODY[] {%d}\r\n%s" % (len(raw), raw) in whole
    assert between(cached, b"BODYSTRUCTURE ", b" ENVELOPE ") == structure
    assert between(cached, b"ENVELOPE ", b" RFC822.HEADER") == envelope
    assert b"RFC822.HEADER {%d}\r\n%s" % (len(header), header) in cached


def wire(fetched: list[Any]) -> bytes:
    """imaplib's answer to one command as it came over the wire."""
    return b"".join(p if isinstance(p, bytes) else p[0] + b"\r\n" + p[1] for p in fetched)


def between(data: bytes, start: bytes, end: bytes) -> bytes:
    """The bytes of ``data`` after ``start`` and before the next ``end``."""
    head = data.index(start) + len(start)
    return data[head : data.index(end, head)]


async def test_a_session_older_than_pruned_expunges_resyncs_in_full(
    http: httpx.AsyncClient,
    services: Services,
    tenant: Tenant,
    edge: tuple[str, int],
    ingest: Ingest,
    imap_listener: Listener,
) -> None:
    inbox = await inbox_with_mail(http, services, tenant, edge, ingest, "Keep", "Go")
    imap = inbox["credentials"]["imap"]
    listed = await http.get(f"/v1/inboxes/{inbox['id']}/messages", headers=tenant.headers)
    (going,) = [m for m in listed.json()["messages"] if m["subject"] == "Go"]
    client = await asyncio.to_thread(other_client, imap_listener, imap)
    try:
        await asyncio.to_thread(client.select_folder, "INBOX")
        uids = sorted(await asyncio.to_thread(client.search))
        (going_uid,) = await asyncio.to_thread(client.search, ["SUBJECT", "Go"])
        going_seq = uids.index(going_uid) + 1
        # Trashed over REST: an expunge record for INBOX, then pruned before the
        # session looked again.
        trashed = await http.patch(
            f"/v1/messages/{going['id']}", json={"addLabels": ["trash"]}, headers=tenant.headers
        )
        assert trashed.status_code == 200, trashed.text
        store = ImapStore(services.messages.pool)
        assert await store.prune_expunges(0) >= 1
        left = await services.messages.pool.fetchval(
            "SELECT count(*) FROM imap_expunges WHERE account_id = $1 AND owner_id = $2",
            tenant.account_id,
            inbox["id"],
        )
        assert left == 0
        # The session still learns the message left (RFC 3501 §7.4.1).
        _, untagged = await asyncio.to_thread(client.noop)
        assert (going_seq, b"EXPUNGE") in untagged
        remaining = await asyncio.to_thread(client.search)
        assert remaining == [uid for uid in uids if uid != going_uid]
        fetched = await asyncio.to_thread(client.fetch, remaining, ["ENVELOPE"])
        assert [f[b"ENVELOPE"].subject for f in fetched.values()] == [b"Keep"]
    finally:
        await asyncio.to_thread(client.logout)
