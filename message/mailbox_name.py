"""Mailbox names on the wire: modified UTF-7 (RFC 3501 §5.1.3), or UTF-8 once the client has
enabled UTF8=ACCEPT (RFC 6855 §3). INBOX is case-insensitive (RFC 3501 §5.1)."""

from __future__ import annotations

import base64
import binascii

_B64_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,")


def _normalise_inbox(name: str) -> str:
    return "INBOX" if name.upper() == "INBOX" else name


def encode_mailbox_name(name: str, utf8: bool = False) -> bytes:
    """mUTF-7: printable US-ASCII as itself ("&" as "&-"), everything else as "&" + modified
    BASE64 of UTF-16BE (with "," for "/", no padding) + "-"."""
    if utf8:
        return name.encode("utf-8")
    out = bytearray()
    pending: list[str] = []

    def flush() -> None:
        if pending:
            utf16 = "".join(pending).encode("utf-16-be")
            out.extend(b"&" + base64.b64encode(utf16).rstrip(b"=").replace(b"/", b",") + b"-")
            pending.clear()

    for ch in name:
        if 0x20 <= ord(ch) <= 0x7E:
            flush()
            out.extend(b"&-" if ch == "&" else ch.encode("ascii"))
        else:
            pending.append(ch)
    flush()
    return bytes(out)


def decode_mailbox_name(raw: bytes, utf8: bool = False) -> str:
    """Wire name -> str. Raises ValueError for invalid or non-canonical mUTF-7 (IMAP answers the
    command NO: the name fits the grammar but names no mailbox), or invalid UTF-8 in UTF8=ACCEPT mode."""
    if utf8:
        name = raw.decode("utf-8")
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
            raise ValueError("control character in mailbox name")
        return _normalise_inbox(name)
    parts: list[str] = []
    i = 0
    while i < len(raw):
        c = raw[i]
        if c == 0x26:  # "&"
            end = raw.find(b"-", i + 1)
            if end < 0:
                raise ValueError("unterminated mUTF-7 shift sequence")
            parts.append(_shifted(raw[i + 1 : end]))
            i = end + 1
        elif 0x20 <= c <= 0x7E:
            parts.append(chr(c))
            i += 1
        else:
            raise ValueError("8-bit or control character in mailbox name")
    name = "".join(parts)
    # only the canonical form is valid: no adjacent shifts, zero padding bits (RFC 3501 §5.1.3)
    if encode_mailbox_name(name) != raw:
        raise ValueError("non-canonical mUTF-7")
    return _normalise_inbox(name)


def _shifted(encoded: bytes) -> str:
    """The text of one shift sequence, given what is between "&" and "-" ("&-" is "&")."""
    if not encoded:
        return "&"
    if not set(encoded) <= _B64_CHARS or len(encoded) % 4 == 1:
        raise ValueError("invalid mUTF-7 base64")
    try:
        utf16 = base64.b64decode(encoded.replace(b",", b"/") + b"=" * (-len(encoded) % 4), validate=True)
        text = utf16.decode("utf-16-be")
    except (binascii.Error, UnicodeDecodeError):
        raise ValueError("invalid mUTF-7 sequence") from None
    if any(0x20 <= ord(ch) <= 0x7E for ch in text):
        raise ValueError("mUTF-7 encodes printable US-ASCII")
    return text
