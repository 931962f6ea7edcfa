"""The byte-fed command receiver (sans-IO, after h11 and Stalwart's imap-proto receiver).

The server feeds whatever it read with `receive_data()` and calls `next_event()` until it gets
NEED_DATA. The receiver frames commands: a line that ends in a literal header (RFC 3501 §4.3,
RFC 7888 LITERAL+, RFC 3516 literal8) is followed by that many raw octets and then the rest of
the command. A framed command is parsed by `parser.parse_command`.
"""

from __future__ import annotations

import re

from .events import NEED_DATA, Event, LiteralTooBig, NeedData, NeedLiteral, ParseError
from .grammar import TAG_CHARS
from .parser import parse_command

# literal = "{" number64 ["+"] "}" CRLF *CHAR8;  literal8 = "~{" number64 "}" CRLF *OCTET
_LITERAL_HEADER = re.compile(rb"~?\{(\d+)(\+?)\}\Z")
_DIGITS_TO_END = re.compile(rb"\d+\+?\}")
# A header is recognised from the last _WINDOW octets of a line only, so that a line whose
# start had to be dropped (while discarding) is judged exactly like the same line seen whole.
_WINDOW = 32
_MAX_SIZE_DIGITS = 20


def _literal_header(line: bytes) -> tuple[int | None, bool] | None:
    """(size, synchronizing) when the line ends in a literal header; size None when the size has
    too many digits to be honoured (the stream then cannot be resynchronised)."""
    window = line[-_WINDOW:]
    match = _LITERAL_HEADER.search(window)
    if match:
        digits, plus = match.groups()
        return (int(digits) if len(digits) <= _MAX_SIZE_DIGITS else None), not plus
    if len(line) > _WINDOW and _DIGITS_TO_END.fullmatch(window):
        return None, not window.endswith(b"+}")
    return None


def _guess_tag(line: bytes | bytearray) -> str | None:
    """The tag of a command that could not be parsed whole, if its first word is a valid tag."""
    space = line.find(b" ")
    if space <= 0 or not set(line[:space]) <= TAG_CHARS:
        return None
    return bytes(line[:space]).decode("ascii")


class CommandReceiver:
    """Frames and parses client commands. `utf8` (set by the session after ENABLE UTF8=ACCEPT,
    RFC 6855) makes mailbox names UTF-8 instead of modified UTF-7 for the following commands."""

    def __init__(self, max_line: int = 64 * 1024, max_literal: int = 64 * 1024 * 1024) -> None:
        self.max_line = max_line
        self.max_literal = max_literal
        self.utf8 = False
        self._buffer = bytearray()
        self._scan_from = 0  # where the CRLF search resumes in _buffer
        self._command = bytearray()  # the command framed so far (lines, CRLFs, literal octets)
        self._tag: str | None = None
        self._literal_left = 0  # literal octets still to copy into _command
        self._skip_left = 0  # octets of a refused LITERAL+ literal still to drop
        self._discarding = False  # dropping the rest of a refused command
        self._discard_line = False  # dropping the rest of an over-long raw line (line mode)
        self._failed = False  # after a fatal error nothing more is framed

    @property
    def current_tag(self) -> str | None:
        """Tag of the command being framed (for answering a NeedLiteral with NO/BAD)."""
        return self._tag

    def receive_data(self, data: bytes) -> None:
        if not self._failed:
            self._buffer += data

    def reject_literal(self) -> None:
        """After a synchronizing NeedLiteral the server may refuse the literal (e.g. NO [TOOBIG]
        for APPENDLIMIT) instead of sending "+": the client then sends nothing more for this command."""
        if not self._literal_left:
            raise RuntimeError("reject_literal() called without a pending literal")
        self._literal_left = 0
        self._reset_command()

    def _reset_command(self) -> None:
        self._command = bytearray()
        self._tag = None

    def _consume_line(self, end: int) -> bytes:
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 2]
        self._scan_from = 0
        return line

    def _find_crlf(self) -> int:
        end = self._buffer.find(b"\r\n", self._scan_from)
        if end < 0:
            self._scan_from = max(0, len(self._buffer) - 1)
        return end

    def _trim_discarded(self) -> None:
        # keep only what _literal_header looks at (plus CRLF), never more than that
        if len(self._buffer) > _WINDOW + 2:
            del self._buffer[: -(_WINDOW + 2)]
            self._scan_from = len(self._buffer) - 1

    def _fail(self, tag: str | None, message: str) -> ParseError:
        self._failed = True
        self._buffer = bytearray()
        self._reset_command()
        self._literal_left = self._skip_left = 0
        return ParseError(tag, message, fatal=True)

    def _end_of_discarded_line(self, line: bytes) -> ParseError | None:
        """A line of a refused command ended: continue only through a LITERAL+ literal."""
        header = _literal_header(line)
        if header is None or header[1]:
            # no literal, or a synchronizing one the client will not send without our "+"
            self._discarding = False
            return None
        size = header[0]
        if size is None:
            return self._fail(None, "literal size out of range")
        self._skip_left = size
        return None

    def next_event(self) -> Event:
        while True:
            if self._failed:
                return NEED_DATA
            if self._skip_left:
                count = min(self._skip_left, len(self._buffer))
                del self._buffer[:count]
                self._skip_left -= count
                self._scan_from = 0
                if self._skip_left:
                    return NEED_DATA
                continue
            if self._literal_left:
                count = min(self._literal_left, len(self._buffer))
                self._command += self._buffer[:count]
                del self._buffer[:count]
                self._literal_left -= count
                self._scan_from = 0
                if self._literal_left:
                    return NEED_DATA
                continue
            end = self._find_crlf()
            if self._discarding or self._discard_line:
                if end < 0:
                    self._trim_discarded()
                    return NEED_DATA
                line = self._consume_line(end)
                if self._discard_line:
                    self._discard_line = False
                    continue
                error = self._end_of_discarded_line(line)
                if error:
                    return error
                continue
            if end < 0 and len(self._buffer) <= self.max_line + 1:
                return NEED_DATA
            if end < 0 or end > self.max_line:
                # the line stays in the buffer and is dropped by the discarding branch above
                tag = self._tag if self._command else _guess_tag(self._buffer[: self.max_line])
                self._reset_command()
                self._discarding = True
                return ParseError(tag, "command line too long")
            line = self._consume_line(end)
            if not self._command:
                if not line:
                    continue  # a stray empty line between commands is ignored
                self._tag = _guess_tag(line)
            self._command += line
            header = _literal_header(line)
            if header is None:
                data = bytes(self._command)
                self._reset_command()
                return parse_command(data, self.utf8)
            size, synchronizing = header
            tag = self._tag
            if size is None:
                return self._fail(tag, "literal size out of range")
            # the whole command is bounded too, or chains of small literals could grow it forever
            if size > self.max_literal or len(self._command) + size > self.max_literal + self.max_line:
                self._reset_command()
                if not synchronizing:
                    self._skip_left = size
                    self._discarding = True
                return LiteralTooBig(tag, size, synchronizing)
            self._command += b"\r\n"
            self._literal_left = size
            if synchronizing:
                return NeedLiteral(size, True)

    def next_line(self) -> bytes | NeedData | ParseError:
        """The next raw line without its CRLF: an AUTHENTICATE response (RFC 3501 §6.2.2) or IDLE's
        DONE (RFC 2177). Only valid between commands. An over-long line gives ParseError(None, ...)
        and is dropped up to its CRLF."""
        if self._command or self._literal_left or self._skip_left or self._discarding:
            raise RuntimeError("next_line() called in the middle of a command")
        while True:
            if self._failed:
                return NEED_DATA
            end = self._find_crlf()
            if self._discard_line:
                if end < 0:
                    self._trim_discarded()
                    return NEED_DATA
                self._consume_line(end)
                self._discard_line = False
                continue
            if end < 0 and len(self._buffer) <= self.max_line + 1:
                return NEED_DATA
            if end < 0 or end > self.max_line:
                self._discard_line = True
                return ParseError(None, "line too long")
            return self._consume_line(end)
