"""IMAP over the messages store (DESIGN §7.1): stock clients (``imaplib`` and
``imapclient``) against the real listener, with credentials as ``POST
/v1/inboxes`` hands them out, mail sent over real SMTP to the MX edge, and
REST reading the same store."""

from __future__ import annotations

import asyncio
import imaplib
import re
import ssl
from typing import Any

import httpx
import imapclient

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
