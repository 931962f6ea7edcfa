"""The SMTP in-flight budget and the DATA/BDAT readers that reserve it."""

from __future__ import annotations

import asyncio
import io

import pytest
from mailstack.services.smtp.data import DataProblem, check_lines, read_chunk, read_data
from mailstack.services.smtp.inflight import STEP, InflightBudget, Reservation


def test_reservation_takes_steps_and_gives_everything_back() -> None:
    budget = InflightBudget(8 * STEP)
    room = Reservation(budget)
    assert room.cover(10) and budget.used == STEP  # a whole step for the first line
    assert room.cover(STEP) and budget.used == STEP  # still inside it: no new reservation
    assert room.cover(STEP + 1) and budget.used == 2 * STEP
    room.release()
    room.release()  # idempotent
    assert budget.used == 0


def test_large_messages_leave_the_last_eighth_to_small_ones() -> None:
    budget = InflightBudget(8 * STEP)
    large = Reservation(budget)
    assert large.cover(7 * STEP)
    assert not large.cover(7 * STEP + 1)  # beyond its first step a message may not use the last eighth
    assert large.held == 7 * STEP
    small = Reservation(budget)
    assert small.cover(1000)  # a small message is still served
    assert not Reservation(budget).cover(1)  # and then nothing is left
    large.release()
    small.release()
    assert budget.used == 0 and budget.free == 8 * STEP


def test_zero_means_unbounded() -> None:
    budget = InflightBudget(0)
    assert Reservation(budget).cover(1 << 40) and budget.free > 1 << 40


async def read(wire: bytes, room: Reservation) -> tuple[bytes, DataProblem | None, bytes]:
    reader = asyncio.StreamReader(limit=1001)
    reader.feed_data(wire)
    reader.feed_eof()
    result = await read_data(reader, 0, lambda: None, room)
    return result.content, result.problem, await reader.read()


async def test_data_beyond_the_budget_is_read_to_the_end_kept_nowhere_and_refused() -> None:
    budget = InflightBudget(2 * STEP)
    other = Reservation(budget)
    assert other.cover(STEP)  # another session holds half
    room = Reservation(budget)
    line = b"a" * 998 + b"\r\n"
    wire = line * (2 * STEP // len(line)) + b".\r\nQUIT\r\n"
    content, problem, rest = await read(wire, room)
    assert (content, problem, rest) == (b"", DataProblem.INSUFFICIENT_STORAGE, b"QUIT\r\n")
    assert room.held == 0 and budget.used == STEP  # its share went back at once


async def test_data_within_the_budget_is_kept_whole() -> None:
    budget = InflightBudget(4 * STEP)
    room = Reservation(budget)
    body = b"".join(b"line %06d\r\n" % i for i in range(100_000))
    content, problem, _ = await read(body + b".\r\n", room)
    assert (content, problem) == (body, None)
    assert room.held >= len(body)


async def test_bdat_chunk_goes_into_the_sink_or_nowhere() -> None:
    reader = asyncio.StreamReader()
    reader.feed_data(b"x" * 200_000 + b"y" * 10 + b"NOOP\r\n")
    sink = io.BytesIO()
    await read_chunk(reader, 200_000, sink, lambda: None)
    await read_chunk(reader, 10, None, lambda: None)
    assert sink.getvalue() == b"x" * 200_000
    assert await reader.readexactly(6) == b"NOOP\r\n"


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", None),
        (b"a\r\nb\r\n", None),
        (b"no final newline", None),
        (b"a" * 998 + b"\r\n" + b"b" * 998, None),
        (b"a" * 999 + b"\r\n", DataProblem.LINE_TOO_LONG),
        (b"ok\r\n" + b"b" * 999, DataProblem.LINE_TOO_LONG),
        (b"bare\nLF\r\n", DataProblem.BARE_NEWLINE),
        (b"bare\rCR\r\n", DataProblem.BARE_NEWLINE),
        (b"cr at end\r", DataProblem.BARE_NEWLINE),
        (b"\r\r\n", DataProblem.BARE_NEWLINE),
        (b"a" * 2000 + b"\n", DataProblem.BARE_NEWLINE),  # bare newline is reported first, as before
    ],
)
def test_bdat_line_rules(content: bytes, problem: DataProblem | None) -> None:
    assert check_lines(content) == problem
