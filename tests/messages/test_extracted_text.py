"""``extractedText`` (DESIGN §7.3): ``mime.latest_reply`` answers what
mail-parser-reply's ``parse_reply`` answers, on the shapes of quoted history it knows."""

from __future__ import annotations

import pytest
from mailparser_reply import EmailReplyParser

from services.messages import mime

TEXTS = [
    "Hi there.",
    "",
    "   \n\n  ",
    "Thanks, that works.\n\nOn Mon, 16 Nov 2026 at 09:00, Ada <ada@example.com> wrote:\n"
    "> Does it?\n",
    "On Mon, 16 Nov 2026 at 09:00, Ada <ada@example.com> wrote:\n> Only a quote.\n",
    "Sure.\r\n\r\n-----Original Message-----\r\nFrom: Ada\r\nSent: Monday\r\n"
    "Subject: Q\r\n\r\nOld.",
    "Danke!\n\nAm 16.11.2026 um 09:00 schrieb Ada <ada@example.com>:\n> Frage\n",
    "Merci.\n\nLe lun. 16 nov. 2026 à 09:00, Ada <ada@example.com> a écrit :\n> Question\n",
    "Gracias.\n\nEl lun, 16 nov 2026 a las 9:00, Ada (<ada@example.com>) escribió:\n> Pregunta\n",
    "Yes.\n\nBest regards,\nBob\n\nSent from my iPhone\n",
    "Reply.\n________________________________\nFrom: Ada <ada@example.com>\n"
    "Sent: Monday\nTo: Bob\n",
    "Top.\nFrom: Ada <ada@example.com>\nSent: Monday\n\nFrom: Carl <c@example.com>\nSent: Sunday\n",
    "Lines   \n  with   spaces  \n\tand tabs\n" * 20,
    "This e-mail and any attachments are confidential.\nReply text.\n",
]


@pytest.mark.parametrize("text", TEXTS)
def test_latest_reply_answers_what_mail_parser_reply_answers(text: str) -> None:
    parser = EmailReplyParser(languages=list(mime.REPLY_LANGUAGES))
    assert mime.latest_reply(text) == str(parser.parse_reply(text=text)).strip()
