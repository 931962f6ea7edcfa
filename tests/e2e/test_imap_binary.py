"""BINARY (RFC 3516) over a real socket: FETCH BINARY[part], BINARY.PEEK, partials, BINARY.SIZE,
literal8 for NULs, UNKNOWN-CTE, BINARY[] of a one-part message, and APPEND of a literal8."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator

import pytest

from tests.fixtures.imap_server import RawImap, imap_env

PAYLOAD = bytes(b for b in range(256) if b not in (10, 13))  # NULs and 8-bit octets, no line ends
TEXT = "Grüße, naïve café".encode()
MIXED = (
    b"From: a@remote.test\r\nTo: b@example.test\r\nSubject: binary\r\nMIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="xx"\r\n\r\n'
    b"--xx\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
    b"Gr=C3=BC=C3=9Fe, na=C3=AFve caf=C3=A9\r\n"
    b"--xx\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    + base64.encodebytes(PAYLOAD).replace(b"\n", b"\r\n")
    + b"--xx\r\nContent-Type: application/x-odd\r\nContent-Transfer-Encoding: x-uuencode\r\n\r\n"
    b"begin 644 x\r\n--xx--\r\n"
)
SINGLE = (
    b"From: a@remote.test\r\nSubject: one part\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.encodebytes(TEXT).replace(b"\n", b"\r\n")
)


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RawImap]:
    with imap_env(tmp_path_factory.mktemp("imap-binary")) as env:
        user = env.new_account()
        env.deliver(user, MIXED)
        env.deliver(user, SINGLE)
        client = RawImap(env.port())
        client.login(user)
        assert b"BINARY" in b"".join(client.command("c", "CAPABILITY"))
        client.command("s", "SELECT INBOX")
        yield client
        client.close()


def fetched(raw: RawImap, tag: str, command: str) -> tuple[bytes, bytes]:
    """(the FETCH line up to its literal, the literal's bytes) of a one-item answer."""
    lines = raw.command(tag, command)
    assert lines[-1].startswith(tag.encode() + b" OK"), lines
    joined = b"\r\n".join(lines)
    match = re.search(rb"(\* \d+ FETCH \(.*?)(~?)\{(\d+)\}\r\n", joined, re.S)
    assert match, lines
    start = match.end()
    return match.group(1) + match.group(2), joined[start : start + int(match.group(3))]


def test_parts_are_decoded(raw: RawImap) -> None:
    head, data = fetched(raw, "a", "FETCH 1 (BINARY.PEEK[2])")
    assert data == PAYLOAD and head.endswith(b"BINARY[2] ~"), "NULs: a literal8"
    head, data = fetched(raw, "b", "FETCH 1 (BINARY.PEEK[1])")
    assert data == TEXT and head.endswith(b"BINARY[1] "), "no NUL: a plain literal"
    head, data = fetched(raw, "c", "FETCH 1 (BINARY.PEEK[2]<10.5>)")
    assert data == PAYLOAD[10:15] and head.endswith(b"BINARY[2]<10> "), "of the decoded bytes; the origin kept (§4.3)"
    lines = raw.command("d", "FETCH 1 (BINARY.SIZE[1] BINARY.SIZE[2])")
    assert f"BINARY.SIZE[1] {len(TEXT)} BINARY.SIZE[2] {len(PAYLOAD)}".encode() in lines[0]


def test_unknown_encoding_and_one_part_message(raw: RawImap) -> None:
    assert raw.command("a", "FETCH 1 (BINARY.PEEK[3])")[-1].startswith(b"a NO [UNKNOWN-CTE]")
    _, whole = fetched(raw, "b", "FETCH 2 (BINARY.PEEK[])")
    header = SINGLE[: SINGLE.index(b"\r\n\r\n") + 4]
    assert whole == header + TEXT, "the header as stored, the body decoded"


def test_binary_sets_seen_and_peek_does_not(raw: RawImap) -> None:
    assert b"\\Seen" not in b"".join(raw.command("a", "FETCH 1 (FLAGS)"))
    lines = raw.command("b", "FETCH 1 (BINARY[1])")
    assert b"\\Seen" in b"".join(lines)


def test_append_literal8(raw: RawImap) -> None:
    message = b"Subject: appended\r\n\r\n8-bit \xe9 body\r\n"
    raw.send(b"a APPEND INBOX ~{%d}\r\n" % len(message))
    assert raw.line().startswith(b"+")
    raw.send(message + b"\r\n")
    assert raw.until("a")[-1].startswith(b"a OK [APPENDUID")
    with_nul = b"Subject: nul\r\n\r\nzero \x00 byte\r\n"
    raw.send(b"b APPEND INBOX ~{%d}\r\n" % len(with_nul))
    assert raw.line().startswith(b"+")
    raw.send(with_nul + b"\r\n")
    # RFC 3516 §4.4: stored (it was refused with UNKNOWN-CTE before issue 15)
    assert raw.until("b")[-1].startswith(b"b OK [APPENDUID")
    raw.command("c", "SELECT INBOX")
    head, data = fetched(raw, "d", "FETCH * (BINARY.PEEK[])")
    assert data == with_nul and head.endswith(b"BINARY[] ~"), "the NUL served back in a literal8"
    head, data = fetched(raw, "e", "FETCH * (BODY.PEEK[])")
    assert data == with_nul.replace(b"\x00", b"\x80"), "BODY[] shows the NUL as 0x80, as Dovecot does"
