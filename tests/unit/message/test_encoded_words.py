"""RFC 2047 encoded words and charsets, decoded leniently (what SEARCH matches header text against)."""

from __future__ import annotations

from mailstack.message.encoded_words import decode_charset, decode_header_value, header_text
from mailstack.message.transfer_encoding import decode_base64


def test_decode_header_value_never_raises() -> None:
    assert decode_header_value(b"=?utf-8?b?w6k=?= =?utf-8?b?w6k=?=") == "éé"
    assert decode_header_value(b"=?utf-8?b?w6?= =?utf-8?b?mp?=") != ""  # split multibyte, bad padding
    assert decode_header_value(b"=?no-such-charset?q?caf=E9?=") == "café"
    assert decode_header_value(b"=?hex?q?abc?=") == "abc"  # a codec that is not a text encoding
    assert decode_header_value(b"=?utf-8*en?q?a_b?=") == "a b"  # RFC 2231 language suffix
    assert decode_header_value(b"plain \xff text") == "plain \xff text"
    assert decode_header_value(b"a =?utf-8?q?x?= b") == "a x b"


def test_header_text_decodes_each_field() -> None:
    header = b"Subject: =?utf-8?q?caf=C3=A9?=\r\nFrom: =?iso-8859-1?q?J=F6rg?= <j@example.test>\r\n\r\n"
    assert header_text(header) == "Subject: caf\u00e9\nFrom: J\u00f6rg <j@example.test>"


def test_decode_charset_falls_back_to_utf8_then_latin1() -> None:
    assert decode_charset("é".encode(), "us-ascii") == "é"  # mislabelled 8-bit
    assert decode_charset(b"\xe9", None) == "é"
    assert decode_charset(b"\xe9", "no-such-charset") == "é"


def test_decode_base64_is_lenient_and_never_raises() -> None:
    assert decode_base64(b"aGVs\r\nbG8") == b"hello"  # line breaks, missing padding
    assert decode_base64(b"aGVsbG8hx") == b"hello!"  # a lone last letter carries no whole octet
    assert decode_base64(b"!!!") == b""
