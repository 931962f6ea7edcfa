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
from collections.abc import Callable
from dataclasses import dataclass

MAX_LINE = 1000  # octets including CRLF, after removing a transparency dot


class DataProblem(enum.Enum):
    TOO_BIG = "too_big"
    LINE_TOO_LONG = "line_too_long"
    BARE_NEWLINE = "bare_newline"


@dataclass
class DataResult:
    content: bytes  # empty when there is a problem
    problem: DataProblem | None


async def read_data(reader: asyncio.StreamReader, max_size: int, on_progress: Callable[[], None]) -> DataResult:
    """Read one DATA section up to and including the lone "." line.

    A client that disconnects midway raises (CancelledError from aiosmtpd, or
    IncompleteReadError): nothing is returned, so nothing is delivered."""
    parts: list[bytes] = []
    size = 0
    problem: DataProblem | None = None
    mid_line = False  # the previous read was a piece of an overlong line
    while True:
        try:
            line = await reader.readuntil(b"\r\n")
        except asyncio.LimitOverrunError as err:
            line = await reader.read(err.consumed)
            problem = problem or DataProblem.LINE_TOO_LONG
            parts.clear()
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
        if len(line) > MAX_LINE:
            problem = DataProblem.LINE_TOO_LONG
        elif b"\r" in line[:-2] or b"\n" in line[:-2]:
            problem = DataProblem.BARE_NEWLINE
        else:
            size += len(line)
            if max_size and size > max_size:
                problem = DataProblem.TOO_BIG
        if problem is not None:
            parts.clear()
        else:
            parts.append(line)
    if problem is not None:
        return DataResult(b"", problem)
    return DataResult(b"".join(parts), None)


def check_lines(content: bytes) -> DataProblem | None:
    """The DATA section's line rules for a message sent with BDAT (RFC 3030 without BINARYMIME:
    still lines of at most 1000 octets, and no bare CR or LF)."""
    lines = content.split(b"\r\n")
    for line in lines:
        if b"\r" in line or b"\n" in line:
            return DataProblem.BARE_NEWLINE
    if any(len(line) + 2 > MAX_LINE for line in lines):
        return DataProblem.LINE_TOO_LONG
    return None


async def read_chunk(
    reader: asyncio.StreamReader, size: int, keep: bool, on_progress: Callable[[], None]
) -> list[bytes]:
    """Exactly `size` octets of a BDAT chunk (RFC 3030 §2), in pieces; [] when not `keep` (the
    chunk is read all the same, or its bytes would be taken for commands)."""
    parts: list[bytes] = []
    left = size
    while left:
        piece = await reader.readexactly(min(left, 64 * 1024))
        left -= len(piece)
        on_progress()
        if keep:
            parts.append(piece)
    return parts
