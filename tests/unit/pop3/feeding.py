"""Feed a POP3 CommandReceiver whole, byte by byte, split at every position and with a
following command, and check the events are always the same (after h11's test helper)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from mailstack.services.pop3.protocol import Command, CommandReceiver, Event, NeedData

from tests.fixtures.feeding import Feeder

FEEDER = Feeder(CommandReceiver, NeedData, b"NOOP\r\n", Command("NOOP"))
drain, feed = FEEDER.drain, FEEDER.feed


def assert_events(data: bytes, expected: Sequence[Event], **limits: int) -> None:
    FEEDER.assert_events(data, list(expected), True, **limits)


def stuff(chunks: Iterable[bytes], crlf: bool = False) -> bytes:
    from mailstack.services.pop3.protocol import DotStuffer

    stuffer = DotStuffer(crlf)
    return b"".join(stuffer.feed(c) for c in chunks) + stuffer.finish()


def stuff_every_split(data: bytes) -> bytes:
    """Dot-stuff `data` whole, byte by byte and split at every position; all must agree. Input with
    only CRLF line ends is also stuffed as the mailstore marks it (crlf=True): the same bytes."""
    whole = stuff([data])
    modes = [False]
    if data.count(b"\r\n") == data.count(b"\r") == data.count(b"\n"):
        modes.append(True)
    for crlf in modes:
        assert stuff([data], crlf) == whole
        assert stuff([data[i : i + 1] for i in range(len(data))], crlf) == whole
        for i in range(len(data) + 1):
            assert stuff([data[:i], data[i:]], crlf) == whole, f"split at {i}, crlf={crlf}"
    return whole
