"""to_crlf (ADR 0020): what the mailstore stores is CRLF-lined, binary bodies as sent."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from mailstack.message.line_endings import to_crlf
from mailstack.message.mime import crlf_only, parse_message


def test_crlf_mail_is_returned_as_is() -> None:
    raw = b"Subject: x\r\n\r\nbody\r\n"
    assert to_crlf(raw) is raw, "no copy for the usual case"


def test_bare_lf_and_bare_cr_become_crlf() -> None:
    assert to_crlf(b"Subject: x\n\nline\nother\rlast\r\n") == b"Subject: x\r\n\r\nline\r\nother\r\nlast\r\n"
    assert to_crlf(b"a\r\r\nb\n\r") == b"a\r\n\r\nb\r\n\r\n", "CR CRLF is a bare CR, then a CRLF"
    assert to_crlf(b"no line end at all\n") == b"no line end at all\r\n"


def test_binary_bodies_are_left_alone() -> None:
    raw = (
        b"Subject: b\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=z\n\n"
        b"--z\nContent-Type: text/plain\n\ntext\n"
        b"--z\nContent-Type: application/octet-stream\nContent-Transfer-Encoding: BINARY\n\n\x00\n\r\xff"
        b"\n--z--\n"
    )
    out = to_crlf(raw)
    assert b"\x00\n\r\xff" in out, "the binary body as sent"
    assert out.replace(b"\x00\n\r\xff", b"") == raw.replace(b"\x00\n\r\xff", b"").replace(b"\n", b"\r\n")
    part = parse_message(out).structure.parts[1]
    assert out[part.body_offset : part.end_offset] == b"\x00\n\r\xff"


@given(st.lists(st.sampled_from([b"a", b" ", b"\r", b"\n", b"\r\n", b"x:", b"\x00"]), max_size=60))
def test_result_is_crlf_only_and_keeps_the_text(pieces: list[bytes]) -> None:
    raw = b"".join(pieces)
    out = to_crlf(raw)
    assert crlf_only(out)
    assert out.replace(b"\r\n", b"") == raw.replace(b"\r\n", b"").replace(b"\r", b"").replace(b"\n", b"")
    assert to_crlf(out) == out, "idempotent"
