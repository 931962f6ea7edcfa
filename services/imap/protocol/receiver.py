"""The byte-fed command receiver (sans-IO, after h11 and Stalwart's imap-proto receiver).

The server feeds whatever it read with `receive_data()` and calls `next_event()` until it gets
NEED_DATA. The receiver frames commands: a line that ends in a literal header (RFC 3501 §4.3,
RFC 7888 LITERAL+, RFC 3516 literal8) is followed by that many raw octets and then the rest of
the command. A framed command is parsed by `parser.parse_command`.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable

from .events import NEED_DATA, Event, LiteralTooBig, NeedData, NeedLiteral, ParseError
from .grammar import TAG_CHARS
from .parser import Grammar, parse_command

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


class ReceiverState(enum.Enum):
    """Where the receiver is in the byte stream (after Stalwart's receiver state and h11's explicit
    states)."""

    LINE = "line"  # reading a line of a command (or a raw line: next_line)
    LITERAL = "literal"  # copying a literal's octets into the command
    SKIP = "skip"  # dropping a refused LITERAL+ literal's octets, then DISCARD
    DISCARD = "discard"  # dropping the rest of a refused command, through its LITERAL+ literals
    DISCARD_LINE = "discard line"  # dropping the rest of an over-long raw line (next_line)
    FAILED = "failed"  # after a fatal error nothing more is framed


class CommandReceiver:
    """Frames and parses client commands with `grammar` (the registry's). `utf8` (set by the
    session after ENABLE UTF8=ACCEPT, RFC 6855) makes mailbox names UTF-8 instead of modified
    UTF-7 for the following commands."""

    def __init__(self, grammar: Grammar, max_line: int = 64 * 1024, max_literal: int = 64 * 1024 * 1024) -> None:
        self.grammar = grammar  # the commands it parses (registry.GRAMMAR)
        self.max_line = max_line
        self.max_literal = max_literal
        self.utf8 = False
        self.state = ReceiverState.LINE
        self._buffer = bytearray()
        self._scan_from = 0  # where the CRLF search resumes in _buffer
        self._command = bytearray()  # the command framed so far (lines, CRLFs, literal octets)
        self._tag: str | None = None
        self._left = 0  # octets still to copy (LITERAL) or to drop (SKIP)

    @property
    def current_tag(self) -> str | None:
        """Tag of the command being framed (for answering a NeedLiteral with NO/BAD)."""
        return self._tag

    def receive_data(self, data: bytes) -> None:
        if self.state is not ReceiverState.FAILED:
            self._buffer += data

    def reject_literal(self) -> None:
        """After a synchronizing NeedLiteral the server may refuse the literal (e.g. NO [TOOBIG]
        for APPENDLIMIT) instead of sending "+": the client then sends nothing more for this command."""
        if self.state is not ReceiverState.LITERAL or not self._left:
            raise RuntimeError("reject_literal() called without a pending literal")
        self._left = 0
        self.state = ReceiverState.LINE
        self._reset_command()

    def take_pending(self) -> bytes:
        """The octets received and not framed yet, handed back (the receiver keeps none): after
        COMPRESS (RFC 4978 §3) what the client sent behind the command is compressed already and
        must go through the decompressor first. Only valid between commands."""
        if self._command or self.state is not ReceiverState.LINE:
            raise RuntimeError("take_pending() called in the middle of a command")
        pending = bytes(self._buffer)
        self._buffer = bytearray()
        self._scan_from = 0
        return pending

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
        self.state = ReceiverState.FAILED
        self._buffer = bytearray()
        self._reset_command()
        self._left = 0
        return ParseError(tag, message, fatal=True)

    def _end_of_discarded_line(self, line: bytes) -> ParseError | None:
        """A line of a refused command ended: continue only through a LITERAL+ literal."""
        header = _literal_header(line)
        if header is None or header[1]:
            # no literal, or a synchronizing one the client will not send without our "+"
            self.state = ReceiverState.LINE
            return None
        size = header[0]
        if size is None:
            return self._fail(None, "literal size out of range")
        self.state, self._left = ReceiverState.SKIP, size
        return None

    # ---- next_event: one step per state; None means "state changed, go on"

    def next_event(self) -> Event:
        while True:
            event = self._STEPS[self.state](self)
            if event is not None:
                return event

    def _step_failed(self) -> Event | None:
        return NEED_DATA

    def _take(self) -> bytearray:
        """Up to the octets still owed (SKIP, LITERAL) from the buffer."""
        count = min(self._left, len(self._buffer))
        taken = self._buffer[:count]
        del self._buffer[:count]
        self._left -= count
        self._scan_from = 0
        return taken

    def _step_skip(self) -> Event | None:
        self._take()
        if self._left:
            return NEED_DATA
        self.state = ReceiverState.DISCARD
        return None

    def _step_literal(self) -> Event | None:
        self._command += self._take()
        if self._left:
            return NEED_DATA
        self.state = ReceiverState.LINE
        return None

    def _step_discard(self) -> Event | None:
        end = self._find_crlf()
        if end < 0:
            self._trim_discarded()
            return NEED_DATA
        line = self._consume_line(end)
        if self.state is ReceiverState.DISCARD_LINE:
            self.state = ReceiverState.LINE
            return None
        return self._end_of_discarded_line(line)

    def _step_line(self) -> Event | None:
        end = self._find_crlf()
        if end < 0 and len(self._buffer) <= self.max_line + 1:
            return NEED_DATA
        if end < 0 or end > self.max_line:
            # the line stays in the buffer and is dropped in the DISCARD state
            tag = self._tag if self._command else _guess_tag(self._buffer[: self.max_line])
            self._reset_command()
            self.state = ReceiverState.DISCARD
            return ParseError(tag, "command line too long")
        line = self._consume_line(end)
        if not self._command:
            if not line:
                return None  # a stray empty line between commands is ignored
            self._tag = _guess_tag(line)
        self._command += line
        header = _literal_header(line)
        if header is None:
            data = bytes(self._command)
            self._reset_command()
            return parse_command(self.grammar, data, self.utf8)
        return self._literal_announced(*header)

    def _literal_announced(self, size: int | None, synchronizing: bool) -> Event | None:
        tag = self._tag
        if size is None:
            if not synchronizing:
                return self._fail(tag, "literal size out of range")  # its octets can't be told apart
            self._reset_command()  # the client sends nothing before our "+": just refuse the command
            return ParseError(tag, "literal size out of range")
        # the whole command is bounded too, or chains of small literals could grow it forever
        if size > self.max_literal or len(self._command) + size > self.max_literal + self.max_line:
            self._reset_command()
            if not synchronizing:
                self.state, self._left = ReceiverState.SKIP, size
            else:
                self.state = ReceiverState.LINE
            return LiteralTooBig(tag, size, synchronizing)
        self._command += b"\r\n"
        self.state, self._left = ReceiverState.LITERAL, size
        return NeedLiteral(size, True) if synchronizing else None

    _STEPS: dict[ReceiverState, Callable[[CommandReceiver], Event | None]] = {
        ReceiverState.FAILED: _step_failed,
        ReceiverState.SKIP: _step_skip,
        ReceiverState.LITERAL: _step_literal,
        ReceiverState.DISCARD: _step_discard,
        ReceiverState.DISCARD_LINE: _step_discard,
        ReceiverState.LINE: _step_line,
    }

    def next_line(self) -> bytes | NeedData | ParseError:
        """The next raw line without its CRLF: an AUTHENTICATE response (RFC 3501 §6.2.2) or IDLE's
        DONE (RFC 2177). Only valid between commands. An over-long line gives ParseError(None, ...)
        and is dropped up to its CRLF."""
        if self._command or self.state not in (ReceiverState.LINE, ReceiverState.DISCARD_LINE, ReceiverState.FAILED):
            raise RuntimeError("next_line() called in the middle of a command")
        while True:
            if self.state is ReceiverState.FAILED:
                return NEED_DATA
            end = self._find_crlf()
            if self.state is ReceiverState.DISCARD_LINE:
                if end < 0:
                    self._trim_discarded()
                    return NEED_DATA
                self._consume_line(end)
                self.state = ReceiverState.LINE
                continue
            if end < 0 and len(self._buffer) <= self.max_line + 1:
                return NEED_DATA
            if end < 0 or end > self.max_line:
                self.state = ReceiverState.DISCARD_LINE
                return ParseError(None, "line too long")
            return self._consume_line(end)
