"""Feed a POP3 CommandReceiver whole, byte by byte, split at every position and with a
following command, and check the events are always the same (after h11's test helper)."""

from __future__ import annotations

from collections.abc import Iterable

from mailstack.services.pop3.protocol import Command, CommandReceiver, Event, NeedData

FOLLOWER = b"NOOP\r\n"
FOLLOWER_EVENT = Command("NOOP")


def drain(receiver: CommandReceiver) -> list[Event]:
    events: list[Event] = []
    for _ in range(100_000):
        event = receiver.next_event()
        if isinstance(event, NeedData):
            return events
        events.append(event)
    raise AssertionError("receiver produced events without end")


def feed(chunks: Iterable[bytes], **limits: int) -> list[Event]:
    receiver = CommandReceiver(**limits)
    events: list[Event] = []
    for chunk in chunks:
        receiver.receive_data(chunk)
        events += drain(receiver)
    return events


def assert_events(data: bytes, expected: list[Event], **limits: int) -> None:
    assert feed([data], **limits) == expected
    assert feed([data[i : i + 1] for i in range(len(data))], **limits) == expected
    for i in range(len(data) + 1):
        assert feed([data[:i], data[i:]], **limits) == expected, f"split at {i}"
    assert feed([data + FOLLOWER], **limits) == [*expected, FOLLOWER_EVENT]
    assert feed([data, FOLLOWER], **limits) == [*expected, FOLLOWER_EVENT]


def stuff(chunks: Iterable[bytes]) -> bytes:
    from mailstack.services.pop3.protocol import DotStuffer

    stuffer = DotStuffer()
    return b"".join(stuffer.feed(c) for c in chunks) + stuffer.finish()


def stuff_every_split(data: bytes) -> bytes:
    """Dot-stuff `data` whole, byte by byte and split at every position; all must agree."""
    whole = stuff([data])
    assert stuff([data[i : i + 1] for i in range(len(data))]) == whole
    for i in range(len(data) + 1):
        assert stuff([data[:i], data[i:]]) == whole, f"split at {i}"
    return whole
