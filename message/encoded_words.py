"""Header and body text as str: RFC 2047 encoded words in header values, and charsets (RFC 2045 §5.1,
RFC 2046 §4.1.2), decoded leniently as mail readers do. Never raises."""

from __future__ import annotations

import binascii
import re

from mailstack.message.headers import field_value, split_fields
from mailstack.message.transfer_encoding import decode_base64


def decode_charset(data: bytes, charset: str | None) -> str:
    """Bytes in a declared charset; undeclared or unknown charsets try UTF-8, then Latin-1."""
    name = (charset or "").strip().lower()
    if name and name not in ("us-ascii", "ascii"):  # mislabelled 8-bit "us-ascii" is common
        try:
            return data.decode(name, "replace")
        except (LookupError, ValueError, TypeError):  # unknown, or not a text codec ("hex")
            pass
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


_WORD = r"=\?([^?\s]+)\?([QqBb])\?([^?\s]*)\?="
_ENCODED_WORD = re.compile(_WORD)
_ENCODED_RUN = re.compile(rf"{_WORD}(?:\s+{_WORD})*")


def _decode_run(match: re.Match[str]) -> str:
    # Adjacent encoded words: the space between them is dropped (RFC 2047 §6.2), and words of one
    # charset are joined before decoding, since a character may be split across two words.
    chunks: list[tuple[str, bytearray]] = []
    for word in _ENCODED_WORD.finditer(match.group(0)):
        charset = word.group(1).split("*", 1)[0].lower()  # RFC 2231 §5 language suffix
        payload = word.group(3).encode("utf-8")
        if word.group(2) in "Qq":
            data = binascii.a2b_qp(payload, header=True)
        else:
            data = decode_base64(payload)
        if chunks and chunks[-1][0] == charset:
            chunks[-1][1].extend(data)
        else:
            chunks.append((charset, bytearray(data)))
    return "".join(decode_charset(bytes(data), charset) for charset, data in chunks)


def decode_header_value(raw: bytes) -> str:
    """A raw header value as text, RFC 2047 encoded words decoded; never raises."""
    return _ENCODED_RUN.sub(_decode_run, _text(raw))


def header_text(header: bytes) -> str:
    """The decoded header block, one "Name: value" line per field."""
    return "\n".join(
        f"{_text(name)}: {decode_header_value(field_value(text))}" for name, text in split_fields(header) if name
    )
