"""Response encoding (RFC 1939 §3, RFC 2449 §8 extended response codes).

Multi-line responses are dot-stuffed and CRLF-normalised incrementally (`DotStuffer`), chunk by
chunk, so a large message is never held whole; `BodyLineLimit` cuts a body after n lines for TOP.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

CRLF = b"\r\n"
TERMINATOR = b".\r\n"
_DOT_LINE = re.compile(rb"\r\n\.")


def _line_text(text: str) -> bytes:
    # A status line is one line: never let a CR or LF from a value split it.
    return text.replace("\r", " ").replace("\n", " ").encode("utf-8", errors="replace")


def _status(indicator: bytes, text: str, code: str | None) -> bytes:
    parts = [indicator]
    if code:
        parts.append(b"[" + code.encode("ascii") + b"]")  # RFC 2449 §8: resp-code in brackets
    if text:
        parts.append(_line_text(text))
    return b" ".join(parts) + CRLF


def ok(text: str = "", code: str | None = None) -> bytes:
    """+OK [CODE] text CRLF"""
    return _status(b"+OK", text, code)


def err(text: str = "", code: str | None = None) -> bytes:
    """-ERR [CODE] text CRLF (codes: IN-USE, LOGIN-DELAY, SYS/TEMP, SYS/PERM, AUTH; RFC 2449, 3206)."""
    return _status(b"-ERR", text, code)


def multiline(first: bytes, lines: Iterable[bytes | str]) -> bytes:
    """A status line, then each line dot-stuffed, then the terminating "." (RFC 1939 §3)."""
    out = [first]
    for line in lines:
        data = line.encode("utf-8") if isinstance(line, str) else line
        out.append(b"." + data + CRLF if data.startswith(b".") else data + CRLF)
    out.append(TERMINATOR)
    return b"".join(out)


class DotStuffer:
    """Turns a message's raw bytes, fed in chunks split anywhere (even inside a CRLF), into the body
    of a multi-line response: every line end becomes CRLF (a bare LF or CR too), a line starting
    with "." gets another "." (RFC 1939 §3), and `finish()` ends the last line and adds ".".
    `crlf=True` says the bytes have only CRLF line ends already (the mailstore found it at delivery),
    which skips the check for bare ones.
    """

    def __init__(self, crlf: bool = False) -> None:
        self._crlf = crlf
        self._at_line_start = True  # the last byte emitted ended a line (or nothing emitted yet)
        self._pending_cr = False  # a CR ended the last chunk: its LF may be in the next one

    def feed(self, chunk: bytes) -> bytes:
        if self._pending_cr:
            chunk = b"\r" + chunk
            self._pending_cr = False
        if chunk.endswith(b"\r"):
            chunk = chunk[:-1]
            self._pending_cr = True
        if not chunk:
            return b""
        data = chunk
        if not self._crlf:
            # Stored mail is nearly always CRLF: counting (no copies) proves it; else normalise.
            crlf = data.count(CRLF)
            if crlf != data.count(b"\n") or crlf != data.count(b"\r"):
                data = data.replace(CRLF, b"\n").replace(b"\r", b"\n").replace(b"\n", CRLF)
        # re.sub: its literal search beats bytes.replace, split+join and even `in` (measured on
        # 27 KB messages: 30 us with a dot on every line, 9 us with none, where `in` alone takes 19)
        data = _DOT_LINE.sub(b"\r\n..", data)
        if self._at_line_start and data.startswith(b"."):
            data = b"." + data
        self._at_line_start = data.endswith(CRLF)
        return data

    def finish(self) -> bytes:
        """The end of the response: a CRLF if the message's last line had none, then ".CRLF"."""
        tail = b""
        if self._pending_cr:
            self._pending_cr = False
            self._at_line_start = True
            tail = CRLF
        if not self._at_line_start:
            tail += CRLF
        self._at_line_start = True
        return tail + TERMINATOR


class BodyLineLimit:
    """Passes the first `lines` lines of a body and then nothing (TOP msg n, RFC 1939 §7).
    A line ends at LF; `done` turns True once the limit is reached, so the caller can stop reading."""

    def __init__(self, lines: int) -> None:
        self._left = lines
        self.done = lines <= 0

    def feed(self, chunk: bytes) -> bytes:
        if self.done:
            return b""
        end = -1
        for _ in range(self._left):
            end = chunk.find(b"\n", end + 1)
            if end < 0:
                return chunk
            self._left -= 1
        # the limit was reached inside this chunk, after the LF at `end`
        self.done = True
        return chunk[: end + 1]
