"""Modified UTF-7 mailbox names (RFC 3501 §5.1.3), checked against imapclient's codec too."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from imapclient import imap_utf7
from mailstack.services.imap.protocol import decode_mailbox_name, encode_mailbox_name


@pytest.mark.parametrize(
    ("name", "wire"),
    [
        ("INBOX", b"INBOX"),
        ("&", b"&-"),
        ("Tom & Jerry", b"Tom &- Jerry"),
        ("Entwürfe", b"Entw&APw-rfe"),
        ("~peter/mail/台北/日本語", b"~peter/mail/&U,BTFw-/&ZeVnLIqe-"),
        ("😀", b"&2D3eAA-"),
        ("a😀€b", b"a&2D3eACCs-b"),
        ("tab\there", b"tab&AAk-here"),
    ],
)
def test_known_encodings(name: str, wire: bytes) -> None:
    assert encode_mailbox_name(name) == wire
    assert decode_mailbox_name(wire) == name
    assert imap_utf7.encode(name) == wire


def test_inbox_is_case_insensitive() -> None:
    assert decode_mailbox_name(b"inbox") == "INBOX"
    assert decode_mailbox_name(b"InBoX") == "INBOX"
    assert decode_mailbox_name(b"inbox/sub") == "inbox/sub"
    assert decode_mailbox_name(b"inbox", utf8=True) == "INBOX"


@pytest.mark.parametrize(
    "wire",
    [b"&", b"&AOk", b"&Jjo!-", b"&AGE-", b"&AOk-&AOk-", b"&AOl-", b"a\xc3\xa9", b"a\x01b", b"&2D0-", b"&A-"],
)
def test_invalid_or_non_canonical(wire: bytes) -> None:
    with pytest.raises(ValueError):
        decode_mailbox_name(wire)


def test_utf8_mode() -> None:
    assert encode_mailbox_name("Entwürfe & co", utf8=True) == "Entwürfe & co".encode()
    assert decode_mailbox_name("Entwürfe & co".encode(), utf8=True) == "Entwürfe & co"
    with pytest.raises(ValueError):
        decode_mailbox_name(b"\xff", utf8=True)


@given(st.text(st.characters(exclude_categories=["Cs"]), max_size=30))
def test_round_trip(name: str) -> None:
    wire = encode_mailbox_name(name)
    assert wire.isascii()
    expected = "INBOX" if name.upper() == "INBOX" else name
    assert decode_mailbox_name(wire) == expected
    assert imap_utf7.decode(wire) == name
