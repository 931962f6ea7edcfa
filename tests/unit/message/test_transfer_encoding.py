"""Content-Transfer-Encoding decoding for FETCH BINARY (RFC 3516)."""

from __future__ import annotations

import base64
import quopri

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mailstack.message.transfer_encoding import UnknownCte, decode_cte


@given(st.binary(max_size=3000))
def test_base64_and_quoted_printable_round_trip(data: bytes) -> None:
    wrapped = base64.encodebytes(data).replace(b"\n", b"\r\n")  # 76-column lines, as mail has them
    assert decode_cte(wrapped, b"BASE64") == data
    assert decode_cte(quopri.encodestring(data), b"Quoted-Printable") == data


def test_identity_encodings_and_leniency() -> None:
    for name in (b"", b"7bit", b"8BIT", b" binary "):
        assert decode_cte(b"as \x00 is", name) == b"as \x00 is"
    assert decode_cte(b"aGVs bG8=\r\n", b"base64") == b"hello", "spaces and line breaks skipped"
    assert decode_cte(b"aGVsbG8", b"base64") == b"hello", "missing padding is mended, not an error"
    assert decode_cte(b"aGVsbG8gd", b"base64") == b"hello ", "a lone last letter is dropped"
    assert decode_cte(b"caf=C3=A9 l=\r\nong", b"quoted-printable") == "café long".encode()


def test_unknown_encoding() -> None:
    with pytest.raises(UnknownCte):
        decode_cte(b"begin 644 x", b"x-uuencode")


def test_quoted_printable_drops_transport_padding() -> None:
    # RFC 2045 §6.7 rule 3: trailing blanks on an encoded line are padding; "=" blanks CRLF is soft
    assert decode_cte(b"line one   \r\nsoft = \t \r\nbreak\t\r\nkept=20\r\n", b"quoted-printable") == (
        b"line one\r\nsoft break\r\nkept \r\n"
    )
    assert decode_cte(b"bare lf \t\nend  ", b"quoted-printable") == b"bare lf\nend", "LF and the last line too"
    assert decode_cte(b"inner  blanks stay", b"quoted-printable") == b"inner  blanks stay"
    assert decode_cte(b"bad =ZZ and =4", b"quoted-printable") == b"bad =ZZ and =4", "malformed kept as is"
