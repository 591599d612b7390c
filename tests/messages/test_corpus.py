"""Real-world message shapes built from the RFCs, through real SMTP, the ingest
worker and the gateway: every one stored, threaded and readable, never a 500."""

from __future__ import annotations

import base64
import uuid

import httpx
import pytest

from services.messages import mime
from services.messages.ingest import Ingest
from tests.conftest import Services, Tenant
from tests.messages.test_inbound import drain, new_inbox, send

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)


def _headers(to: str, subject: str, extra: str = "", message_id: bool = True) -> str:
    mid = f"Message-ID: <{uuid.uuid4().hex}@example.com>\r\n" if message_id else ""
    return (
        f"From: =?utf-8?q?J=C3=B6rg_M=C3=BCller?= <jorg@example.de>\r\n"
        f"To: {to}\r\nSubject: {subject}\r\n{mid}{extra}MIME-Version: 1.0\r\n"
    )


def corpus(to: str) -> dict[str, tuple[bytes, dict[str, object]]]:
    """Name → (raw message, what the stored message must show)."""
    png = base64.encodebytes(PNG).decode().replace("\n", "\r\n")
    return {
        "alternative": (
            (
                _headers(to, "Alternative")
                + 'Content-Type: multipart/alternative; boundary="b1"\r\n\r\n'
                "--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nPlain part ✓\r\n"
                "--b1\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>HTML part</p>\r\n"
                "--b1--\r\n"
            ).encode(),
            {"text": "Plain part ✓", "html": "<p>HTML part</p>", "attachments": 0},
        ),
        "nested-with-inline-image-and-pdf": (
            (
                _headers(to, "Nested") + 'Content-Type: multipart/mixed; boundary="outer"\r\n\r\n'
                '--outer\r\nContent-Type: multipart/related; boundary="rel"\r\n\r\n'
                '--rel\r\nContent-Type: multipart/alternative; boundary="alt"\r\n\r\n'
                "--alt\r\nContent-Type: text/plain\r\n\r\nSee the logo.\r\n"
                '--alt\r\nContent-Type: text/html\r\n\r\n<img src="cid:logo@x">\r\n--alt--\r\n'
                "--rel\r\nContent-Type: image/png\r\nContent-ID: <logo@x>\r\n"
                "Content-Disposition: inline\r\nContent-Transfer-Encoding: base64\r\n\r\n"
                f"{png}\r\n--rel--\r\n"
                '--outer\r\nContent-Type: application/pdf; name="q.pdf"\r\n'
                'Content-Disposition: attachment; filename="quote.pdf"\r\n'
                "Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--outer--\r\n"
            ).encode(),
            {"text": "See the logo.", "attachments": 2},
        ),
        "latin-1": (
            (
                _headers(to, "=?iso-8859-1?q?Gr=FC=DFe?=")
                + "Content-Type: text/plain; charset=iso-8859-1\r\n"
                "Content-Transfer-Encoding: 8bit\r\n\r\n"
            ).encode()
            + "Grüße aus Köln".encode("latin-1")
            + b"\r\n",
            {"subject": "Grüße", "text": "Grüße aus Köln"},
        ),
        "unknown-charset": (
            (
                _headers(to, "Odd charset")
                + "Content-Type: text/plain; charset=x-unknown-42\r\n\r\n"
            ).encode()
            + b"caf\xe9\r\n",
            {"subject": "Odd charset"},
        ),
        "rfc2231-filename": (
            (
                _headers(to, "Filename") + 'Content-Type: multipart/mixed; boundary="m"\r\n\r\n'
                "--m\r\nContent-Type: text/plain\r\n\r\nbody\r\n"
                "--m\r\nContent-Type: text/plain\r\n"
                "Content-Disposition: attachment; filename*=utf-8''na%C3%AFve.txt\r\n\r\n"
                "naive\r\n--m--\r\n"
            ).encode(),
            {"attachments": 1, "filename": "naïve.txt"},
        ),
        "no-message-id": (
            (
                _headers(to, "No id", message_id=False) + "Content-Type: text/plain\r\n\r\nhi\r\n"
            ).encode(),
            {"subject": "No id"},
        ),
        "huge-header": (
            (
                _headers(to, "Huge", extra="X-Long: " + "\r\n ".join(["a" * 900] * 70) + "\r\n")
                + "Content-Type: text/plain\r\n\r\nbody\r\n"
            ).encode(),
            {"subject": "Huge"},
        ),
        "broken-mime": (
            (
                _headers(to, "Broken", extra="Date: not a date\r\nCc: <<<@@@>>>\r\n")
                + 'Content-Type: multipart/mixed; boundary="never-closed"\r\n\r\n'
                "--never-closed\r\nContent-Type: text/plain\r\n"
                "Content-Transfer-Encoding: base64\r\n\r\n!!!not base64!!!\r\n"
            ).encode(),
            {"subject": "Broken"},
        ),
    }


async def test_every_shape_is_stored_and_readable(
    http: httpx.AsyncClient,
    services: Services,
    tenant: Tenant,
    edge: tuple[str, int],
    ingest: Ingest,
) -> None:
    inbox = await new_inbox(http, services, tenant)
    shapes = corpus(inbox["email"])
    for raw, _ in shapes.values():
        refused, _ = await send(edge, raw, [inbox["email"]])
        assert refused == {}
    await drain(ingest)
    assert await services.messages.pool.fetchval("SELECT count(*) FROM spool") == 0
    listed = await http.get(f"/v1/inboxes/{inbox['id']}/messages?limit=100", headers=tenant.headers)
    assert listed.status_code == 200
    assert len(listed.json()["messages"]) == len(shapes)
    for item in listed.json()["messages"]:
        full = await http.get(f"/v1/messages/{item['id']}", headers=tenant.headers)
        assert full.status_code == 200, full.text
        assert full.json()["from"] == "Jörg Müller <jorg@example.de>"
        for attachment in full.json()["attachments"]:
            got = await http.get(
                f"/v1/messages/{item['id']}/attachments/{attachment['id']}",
                headers=tenant.headers,
            )
            assert got.status_code == 200 and len(got.content) == attachment["size"]
    by_subject = {m["subject"]: m for m in listed.json()["messages"]}
    nested = (
        await http.get(f"/v1/messages/{by_subject['Nested']['id']}", headers=tenant.headers)
    ).json()
    kinds = {(a["contentType"], a["disposition"], a["contentId"]) for a in nested["attachments"]}
    assert kinds == {("image/png", "inline", "logo@x"), ("application/pdf", "attachment", None)}
    assert by_subject["Grüße"]["preview"] == "Grüße aus Köln"
    assert by_subject["No id"]["messageId"].endswith("@mailplane.invalid>")


@pytest.mark.parametrize("name", list(corpus("x@mailplane.test")))
def test_parse_never_raises_and_reads_what_it_can(name: str) -> None:
    raw, expected = corpus("x@mailplane.test")[name]
    parsed = mime.parse(raw)
    assert parsed.sender == "Jörg Müller <jorg@example.de>"
    if "subject" in expected:
        assert parsed.subject == expected["subject"]
    if "text" in expected:
        assert (parsed.text or "").strip() == expected["text"]
    if "html" in expected:
        assert (parsed.html or "").strip() == expected["html"]
    if "attachments" in expected:
        assert len(parsed.attachments) == expected["attachments"]
    if "filename" in expected:
        assert parsed.attachments[0].filename == expected["filename"]


def test_quoted_history_is_left_out_of_extracted_text() -> None:
    raw = (
        b"From: a@example.com\r\nTo: b@mailplane.test\r\nSubject: Re: units\r\n\r\n"
        b"Thanks, 100 units works.\r\n\r\n"
        b"On Mon, Jan 5, 2026 at 10:00 AM Bob <bob@x.com> wrote:\r\n"
        b"> How many units?\r\n"
    )
    parsed = mime.parse(raw)
    assert parsed.extracted_text == "Thanks, 100 units works."
    assert "How many units" in (parsed.text or "")
