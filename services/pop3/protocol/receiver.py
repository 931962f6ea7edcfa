"""The byte-fed command receiver (sans-IO): frames lines, splits them into commands.

RFC 1939 §3: commands are a keyword and arguments separated by single spaces, ended by CRLF.
RFC 2449 §4: a command line is at most 255 octets; we accept up to `max_line` (generous for long
AUTH PLAIN responses) and answer longer lines with LineTooLong, discarding up to the line end.
A bare LF is accepted as a line end too (lenient, as most servers are).
"""

from __future__ import annotations

from .events import NEED_DATA, Command, LineTooLong, NeedData

MAX_LINE = 1024


def _text(data: bytes) -> str:
    # Arguments become protobuf strings (UTF-8): invalid bytes must not raise later.
    return data.decode("utf-8", errors="replace")


def parse_line(line: bytes) -> Command:
    """keyword *(SP arg): the keyword is case-insensitive (RFC 1939 §3)."""
    keyword, _, rest = line.partition(b" ")
    return Command(_text(keyword).upper(), tuple(_text(w) for w in rest.split()), _text(rest))


class CommandReceiver:
    def __init__(self, max_line: int = MAX_LINE) -> None:
        self.max_line = max_line
        self._buffer = bytearray()
        self._scan_from = 0  # where the LF search resumes
        self._discarding = False  # dropping the rest of an over-long line

    def receive_data(self, data: bytes) -> None:
        self._buffer += data

    def clear(self) -> None:
        """Forget everything buffered: after STLS, plaintext pipelined behind it must not be
        executed inside the TLS session (RFC 2595 §4, the STARTTLS injection attacks)."""
        self._buffer = bytearray()
        self._scan_from = 0
        self._discarding = False

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def _next_raw_line(self) -> bytes | LineTooLong | NeedData:
        while True:
            end = self._buffer.find(b"\n", self._scan_from)
            if end < 0:
                self._scan_from = len(self._buffer)
                if self._discarding:
                    self._buffer.clear()
                    self._scan_from = 0
                    return NEED_DATA
                if len(self._buffer) > self.max_line + 1:  # +1: a CR may still be waiting for its LF
                    self._buffer.clear()
                    self._scan_from = 0
                    self._discarding = True
                    return LineTooLong()
                return NEED_DATA
            line = bytes(self._buffer[:end])
            del self._buffer[: end + 1]
            self._scan_from = 0
            if self._discarding:
                self._discarding = False
                continue
            if line.endswith(b"\r"):
                line = line[:-1]
            if len(line) > self.max_line:
                return LineTooLong()
            return line

    def next_event(self) -> Command | LineTooLong | NeedData:
        while True:
            line = self._next_raw_line()
            if not isinstance(line, bytes):
                return line
            if line.strip():
                return parse_line(line.strip(b" "))
            # an empty line between commands is ignored

    def next_line(self) -> bytes | LineTooLong | NeedData:
        """The next raw line without its line end: a SASL response (RFC 5034 §4)."""
        return self._next_raw_line()
