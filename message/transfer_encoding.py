"""BINARY (RFC 3516, RFC 9051 §6.4.5): a part's content with its Content-Transfer-Encoding undone."""

from __future__ import annotations

import binascii
import re

IDENTITY = frozenset({b"", b"7bit", b"8bit", b"binary"})
_NOT_BASE64 = re.compile(rb"[^A-Za-z0-9+/]")
_PADDING = re.compile(rb"[ \t]+(?=\r?\n|\Z)")  # blanks at the end of an encoded line


class UnknownCte(ValueError):
    """An encoding this server cannot undo: NO [UNKNOWN-CTE] (RFC 3516 §4.3)."""


def decode_base64(data: bytes) -> bytes:
    """Lenient base64 (RFC 2045 §6.8): characters outside the alphabet skipped, missing padding
    mended; never raises."""
    letters = _NOT_BASE64.sub(b"", data)  # "=" goes too: the padding is made again
    if len(letters) % 4 == 1:
        letters = letters[:-1]  # a lone last letter carries no whole octet
    try:
        return binascii.a2b_base64(letters + b"=" * (-len(letters) % 4))
    except (binascii.Error, ValueError):
        return b""


def decode_quoted_printable(data: bytes) -> bytes:
    """Quoted-printable (RFC 2045 §6.7). Rule 3: blanks at the end of an encoded line are
    transport padding and go, so "=" then blanks then a line break is a soft break. Malformed
    "=" sequences stay as they are (the robust reading of the RFC's note 1); never raises."""
    return binascii.a2b_qp(_PADDING.sub(b"", data))


def decode_cte(data: bytes, encoding: bytes) -> bytes:
    """Decoded content of a part whose Content-Transfer-Encoding is `encoding`. Lenient, as mail
    readers are: base64 skips characters outside its alphabet and mends missing padding."""
    name = encoding.strip().lower()
    if name in IDENTITY:
        return data
    if name == b"base64":
        return decode_base64(data)
    if name == b"quoted-printable":
        return decode_quoted_printable(data)
    raise UnknownCte(encoding.decode("ascii", "replace"))
