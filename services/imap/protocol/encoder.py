"""Response encoding: values to wire bytes (RFC 3501 §9 / RFC 9051 §9 response grammar) and
response line builders (RFC 3501 §7)."""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypeAlias

from mailstack.message.mailbox_name import encode_mailbox_name

from .grammar import ASTRING_CHARS, MONTHS

# What goes to the connection: a list of these is written with writelines, never joined here.
Buffer: TypeAlias = bytes | memoryview

CRLF = b"\r\n"
NIL = b"NIL"
_QUOTABLE = frozenset(range(0x01, 0x80)) - {0x0A, 0x0D}


def _as_bytes(value: bytes | str) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else value


def _quotable(value: bytes, utf8: bool) -> bool:
    if set(value) <= _QUOTABLE:
        return True
    if not utf8 or 0 in value or b"\r" in value or b"\n" in value:
        return False
    try:
        value.decode("utf-8")  # UTF8=ACCEPT: quoted may carry UTF-8 (RFC 9051 QUOTED-CHAR)
    except UnicodeDecodeError:
        return False
    return True


def quoted(value: bytes | str) -> bytes:
    """quoted = DQUOTE *QUOTED-CHAR DQUOTE (caller checks the value is quotable)."""
    data = _as_bytes(value)
    return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def literal(value: bytes | str) -> bytes:
    """literal = "{" number "}" CRLF *CHAR8"""
    data = _as_bytes(value)
    return b"{%d}\r\n" % len(data) + data


def literal8(value: bytes) -> bytes:
    """literal8 = "~{" number "}" CRLF *OCTET (RFC 3516 BINARY data that may contain NUL)."""
    return b"~{%d}\r\n" % len(value) + value


@dataclass(frozen=True, slots=True)
class Literal:
    """A literal (or literal8) value whose octets pass through to the connection untouched (after
    h11's data passthrough): only its header is built, the data is never copied."""

    data: bytes | memoryview
    binary: bool = False  # literal8 (RFC 3516 §4.3: the data holds a NUL)

    def header(self) -> bytes:
        return (b"~{%d}\r\n" if self.binary else b"{%d}\r\n") % len(self.data)


FetchValue: TypeAlias = bytes | Literal


def string(value: bytes | str, utf8: bool = False) -> bytes:
    """string = quoted / literal: quoted when every octet is 7-bit (or UTF-8 under UTF8=ACCEPT)
    without NUL/CR/LF, else a literal."""
    data = _as_bytes(value)
    return quoted(data) if _quotable(data, utf8) else literal(data)


def astring(value: bytes | str, utf8: bool = False) -> bytes:
    """astring = 1*ASTRING-CHAR / string. "NIL" is quoted so it can never be read as nil."""
    data = _as_bytes(value)
    if data and set(data) <= ASTRING_CHARS and data.upper() != NIL:
        return data
    return string(data, utf8)


def nstring(value: bytes | str | None, utf8: bool = False) -> bytes:
    """nstring = string / nil"""
    return NIL if value is None else string(value, utf8)


nil_or_string = nstring


def mailbox(name: str, utf8: bool = False) -> bytes:
    """A mailbox name as astring: mUTF-7, or UTF-8 once UTF8=ACCEPT is enabled (RFC 6855 §3)."""
    return astring(encode_mailbox_name(name, utf8), utf8)


def paren_list(items: Iterable[bytes]) -> bytes:
    """ "(" [item *(SP item)] ")" """
    return b"(" + b" ".join(items) + b")"


def nil_or_list(items: Iterable[bytes]) -> bytes:
    parts = list(items)
    return paren_list(parts) if parts else NIL


def flag_list(flags: Iterable[str]) -> bytes:
    # flag-list = "(" [flag *(SP flag)] ")"
    return paren_list(f.encode("ascii") for f in flags)


def date_time(value: datetime.datetime) -> bytes:
    """date-time = DQUOTE date-day-fixed "-" date-month "-" date-year SP time SP zone DQUOTE
    (INTERNALDATE). A naive datetime is taken as UTC."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.UTC)
    offset = value.utcoffset() or datetime.timedelta(0)
    minutes = int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    minutes = abs(minutes)
    text = (
        f'"{value.day:2d}-{MONTHS[value.month - 1]}-{value.year:04d} '
        f'{value.hour:02d}:{value.minute:02d}:{value.second:02d} {sign}{minutes // 60:02d}{minutes % 60:02d}"'
    )
    return text.encode("ascii")


def _text(text: str) -> bytes:
    # text = 1*TEXT-CHAR; TEXT-CHAR = <any CHAR except CR and LF>
    clean = text.replace("\r", " ").replace("\n", " ") or "completed"
    return clean.encode("utf-8")


def _resp_text(text: str, code: bytes | str | None) -> bytes:
    # resp-text = ["[" resp-text-code "]" SP] text
    prefix = b"[" + _as_bytes(code) + b"] " if code else b""
    return prefix + _text(text)


def tagged(tag: str, status: str, text: str, code: bytes | str | None = None) -> bytes:
    """response-tagged = tag SP resp-cond-state CRLF, e.g. `A1 NO [TRYCREATE] no such mailbox`."""
    return tag.encode("ascii") + b" " + status.encode("ascii") + b" " + _resp_text(text, code) + CRLF


def untagged_status(status: str, text: str, code: bytes | str | None = None) -> bytes:
    """`* OK [UIDVALIDITY 3] ...`, `* BYE ...`, `* BAD ...` (resp-cond-state / resp-cond-bye)."""
    return b"* " + status.encode("ascii") + b" " + _resp_text(text, code) + CRLF


def untagged(data: bytes | str) -> bytes:
    """response-data = "*" SP (... mailbox-data / message-data / capability-data ...) CRLF"""
    return b"* " + _as_bytes(data) + CRLF


def continuation(text: str = "go ahead") -> bytes:
    """continue-req = "+" SP (resp-text / base64) CRLF"""
    return b"+ " + _text(text) + CRLF


def ranges_of(numbers: Iterable[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for n in sorted(set(numbers)):
        if out and n == out[-1][1] + 1:
            out[-1] = (out[-1][0], n)
        else:
            out.append((n, n))
    return out


def set_text(numbers: Iterable[int]) -> str:
    """A sequence-set string "1:3,7" (COPYUID, APPENDUID, ESEARCH ALL, VANISHED)."""
    return ranges_text(ranges_of(numbers))


def ranges_text(ranges: Iterable[tuple[int, int]]) -> str:
    """Inclusive (low, high) ranges as a sequence-set string: "1:3,7"."""
    return ",".join(str(a) if a == b else f"{a}:{b}" for a, b in ranges)


def fetch_buffers(number: int, items: Iterable[tuple[bytes, FetchValue]]) -> list[Buffer]:
    """message-data = nz-number SP "FETCH" SP msg-att: `* 12 FETCH (UID 7 BODY[] {5}\r\nhello)`,
    as buffers: the small parts between literals are joined, each literal's data is its own
    buffer, as the caller passed it."""
    out: list[Buffer] = []
    head = bytearray(b"* %d FETCH (" % number)
    for i, (name, value) in enumerate(items):
        if i:
            head += b" "
        head += name
        head += b" "
        if isinstance(value, Literal):
            head += value.header()
            out.append(bytes(head))
            out.append(value.data)
            head = bytearray()
        else:
            head += value
    head += b")\r\n"
    out.append(bytes(head))
    return out


def fetch_response(number: int, items: Iterable[tuple[bytes, FetchValue]]) -> bytes:
    """fetch_buffers as one bytes value (for tests and small responses)."""
    return b"".join(fetch_buffers(number, items))
