"""Reading the DATA section: lines, dot-unstuffing, and the checks aiosmtpd lacks.

aiosmtpd's own DATA loop replies without enhanced codes, allows 1001-octet lines
and passes bare CR / bare LF through; this one refuses lines over 1000 octets
(RFC 5321 §4.5.3.1.6) and any bare CR or LF (RFC 5321 §2.3.8, against SMTP
smuggling: see docs/adr/0005-smtp-bare-newlines-and-submission-refusals.md). It still reads up to the
terminating <CRLF>.<CRLF> before answering (RFC 5321 §4.2.5), so a refused
message never leaves its rest to be read as commands.
"""

from __future__ import annotations

import asyncio
import enum
import io
from collections.abc import Callable
from dataclasses import dataclass

from mailstack.services.smtp.inflight import Reservation

MAX_LINE = 1000  # octets including CRLF, after removing a transparency dot


class DataProblem(enum.Enum):
    TOO_BIG = "too_big"
    LINE_TOO_LONG = "line_too_long"
    BARE_NEWLINE = "bare_newline"
    INSUFFICIENT_STORAGE = "insufficient_storage"  # the in-flight budget is spent (inflight.py)


@dataclass
class DataResult:
    content: bytes  # empty when there is a problem
    problem: DataProblem | None


async def read_data(
    reader: asyncio.StreamReader, max_size: int, on_progress: Callable[[], None], room: Reservation | None = None
) -> DataResult:
    """Read one DATA section up to and including the lone "." line.

    The content goes into one growing buffer, which becomes the returned bytes without a copy
    (BytesIO.getvalue shares it); `room` is reserved as it grows and given back on a problem.
    A client that disconnects midway raises (CancelledError from aiosmtpd, or
    IncompleteReadError): nothing is returned, so nothing is delivered."""
    buffer = io.BytesIO()
    size = 0
    problem: DataProblem | None = None
    mid_line = False  # the previous read was a piece of an overlong line
    while True:
        try:
            line = await reader.readuntil(b"\r\n")
        except asyncio.LimitOverrunError as err:
            line = await reader.read(err.consumed)
            if problem is None:
                problem = DataProblem.LINE_TOO_LONG
                buffer = _dropped(room)
            mid_line = True
            on_progress()
            continue
        on_progress()
        if mid_line:  # the end of an overlong line
            mid_line = False
            continue
        if line == b".\r\n":
            break
        if line[:1] == b".":
            line = line[1:]
        if problem is not None:
            continue  # keep reading to the end, keep nothing
        size += len(line)
        problem = _line_problem(line, size, max_size, room)
        if problem is not None:
            buffer = _dropped(room)
        else:
            buffer.write(line)
    if problem is not None:
        return DataResult(b"", problem)
    return DataResult(buffer.getvalue(), None)


def _line_problem(line: bytes, size: int, max_size: int, room: Reservation | None) -> DataProblem | None:
    """What is wrong with one unstuffed content line; `size` counts the content up to and with it."""
    if len(line) > MAX_LINE:
        return DataProblem.LINE_TOO_LONG
    if b"\r" in line[:-2] or b"\n" in line[:-2]:
        return DataProblem.BARE_NEWLINE
    if max_size and size > max_size:
        return DataProblem.TOO_BIG
    if room is not None and size > room.held and not room.cover(size):  # a call per STEP, not per line
        return DataProblem.INSUFFICIENT_STORAGE
    return None


def _dropped(room: Reservation | None) -> io.BytesIO:
    """What a refused transaction keeps: nothing, and none of the budget."""
    if room is not None:
        room.release()
    return io.BytesIO()


def check_lines(content: bytes) -> DataProblem | None:
    """The DATA section's line rules for a message sent with BDAT (RFC 3030 without BINARYMIME:
    still lines of at most 1000 octets, and no bare CR or LF). Scans in place: a split into
    lines would copy the whole message once more."""
    crlf = content.count(b"\r\n")
    if content.count(b"\r") != crlf or content.count(b"\n") != crlf:
        return DataProblem.BARE_NEWLINE
    start, end = 0, len(content)
    while start <= end:  # one step per line
        stop = content.find(b"\r\n", start)
        stop = end if stop < 0 else stop
        if stop - start + 2 > MAX_LINE:
            return DataProblem.LINE_TOO_LONG
        start = stop + 2
    return None


async def read_chunk(
    reader: asyncio.StreamReader, size: int, sink: io.BytesIO | None, on_progress: Callable[[], None]
) -> None:
    """Exactly `size` octets of a BDAT chunk (RFC 3030 §2), in pieces, written to `sink`; without a
    sink the chunk is read all the same (or its bytes would be taken for commands) and dropped."""
    left = size
    while left:
        piece = await reader.readexactly(min(left, 64 * 1024))
        left -= len(piece)
        on_progress()
        if sink is not None:
            sink.write(piece)
