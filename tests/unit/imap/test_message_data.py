"""ENVELOPE and BODYSTRUCTURE/BODY encoding from the mailstore's protobuf structures."""

from __future__ import annotations

from imapclient.response_parser import parse_fetch_response
from mailstack.services.imap.protocol import message_data
from mailstack.v1 import mailstore_pb2 as pb


def inner_envelope() -> pb.Envelope:
    env = pb.Envelope(
        date=b"Mon, 1 Jan 2024 10:00:00 +0000",
        subject=b'Hi "there"',
        to=[pb.Address(mailbox=b"bob", host=b"example.net")],
        message_id=b"<id@x>",
    )
    getattr(env, "from").append(pb.Address(name=b"Ann", mailbox=b"ann", host=b"example.org"))
    return env


ANN = b'(("Ann" NIL "ann" "example.org"))'
INNER_ENVELOPE = (
    b'("Mon, 1 Jan 2024 10:00:00 +0000" "Hi \\"there\\"" '
    + ANN
    + b" "
    + ANN
    + b" "
    + ANN
    + b' ((NIL NIL "bob" "example.net")) NIL NIL NIL "<id@x>")'
)


def structure() -> pb.BodyPart:
    text = pb.BodyPart(
        type=b"text",
        subtype=b"plain",
        params=[pb.Param(name=b"charset", value=b"us-ascii")],
        encoding=b"7bit",
        size=12,
        lines=2,
    )
    html = pb.BodyPart(
        type=b"text",
        subtype=b"html",
        params=[pb.Param(name=b"charset", value=b"utf-8")],
        encoding=b"quoted-printable",
        size=100,
        lines=4,
    )
    message = pb.BodyPart(
        type=b"message",
        subtype=b"rfc822",
        encoding=b"7bit",
        size=300,
        lines=10,
        parts=[html],
        envelope=inner_envelope(),
    )
    pdf = pb.BodyPart(
        type=b"application",
        subtype=b"pdf",
        params=[pb.Param(name=b"name", value=b"a.pdf")],
        encoding=b"base64",
        size=2000,
        has_disposition=True,
        disposition=pb.Disposition(type=b"attachment", params=[pb.Param(name=b"filename", value=b"a.pdf")]),
        language=[b"en"],
        location=b"http://x",
        id=b"<c1@x>",
        description=b"the report",
    )
    return pb.BodyPart(
        type=b"multipart",
        subtype=b"mixed",
        params=[pb.Param(name=b"boundary", value=b"b1")],
        parts=[text, message, pdf],
    )


BODYSTRUCTURE = (
    b'(("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 12 2 NIL NIL NIL NIL)'
    b'("MESSAGE" "RFC822" NIL NIL NIL "7BIT" 300 '
    + INNER_ENVELOPE
    + b' ("TEXT" "HTML" ("CHARSET" "utf-8") NIL NIL "QUOTED-PRINTABLE" 100 4 NIL NIL NIL NIL) 10 NIL NIL NIL NIL)'
    b'("APPLICATION" "PDF" ("NAME" "a.pdf") "<c1@x>" "the report" "BASE64" 2000 NIL'
    b' ("ATTACHMENT" ("FILENAME" "a.pdf")) ("en") "http://x")'
    b' "MIXED" ("BOUNDARY" "b1") NIL NIL NIL)'
)
BODY = (
    b'(("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 12 2)'
    b'("MESSAGE" "RFC822" NIL NIL NIL "7BIT" 300 '
    + INNER_ENVELOPE
    + b' ("TEXT" "HTML" ("CHARSET" "utf-8") NIL NIL "QUOTED-PRINTABLE" 100 4) 10)'
    b'("APPLICATION" "PDF" ("NAME" "a.pdf") "<c1@x>" "the report" "BASE64" 2000) "MIXED")'
)


def test_envelope() -> None:
    assert message_data.envelope(inner_envelope()) == INNER_ENVELOPE
    assert message_data.envelope(pb.Envelope()) == b"(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)"


def test_envelope_with_8bit_and_group_syntax() -> None:
    env = pb.Envelope(subject="Grüße".encode(), bcc=[pb.Address(mailbox=b"undisclosed"), pb.Address()])
    encoded = message_data.envelope(env)
    assert (
        encoded == b"(NIL {7}\r\nGr\xc3\xbc\xc3\x9fe NIL NIL NIL NIL NIL"
        b' ((NIL NIL "undisclosed" NIL)(NIL NIL NIL NIL)) NIL NIL)'
    )
    assert message_data.envelope(env, utf8=True).startswith('(NIL "Grüße" NIL'.encode())


def test_bodystructure_and_body() -> None:
    assert message_data.body_structure(structure()) == BODYSTRUCTURE
    assert message_data.body_structure(structure(), extensible=False) == BODY


def test_single_part_defaults() -> None:
    assert message_data.body_structure(pb.BodyPart(size=3, lines=1)) == (
        b'("TEXT" "PLAIN" NIL NIL NIL "7BIT" 3 1 NIL NIL NIL NIL)'
    )


def test_a_real_client_parses_it() -> None:
    line = b"1 (UID 5 BODYSTRUCTURE " + BODYSTRUCTURE + b" ENVELOPE " + INNER_ENVELOPE + b")"
    parsed = parse_fetch_response([line])[5]  # imapclient keys by UID
    body = parsed[b"BODYSTRUCTURE"]
    assert body.is_multipart and body[1] == b"MIXED"
    assert body[0][1][7][1] == b'Hi "there"'  # the message/rfc822 part's envelope subject
    assert parsed[b"ENVELOPE"].from_[0].mailbox == b"ann"


def test_internal_date() -> None:
    value = pb.DateTime(unix_seconds=760686745, utc_offset_minutes=-480)
    assert message_data.internal_date(value) == b'" 7-Feb-1994 21:52:25 -0800"'
