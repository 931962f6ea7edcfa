"""Feed a CommandReceiver whole, byte by byte, split at every position and with a following
command, and check the events are always the same (after h11's test helper)."""

from __future__ import annotations

from collections.abc import Iterable

from mailstack.services.imap.protocol import Command, CommandReceiver, Event, NeedData, NeedLiteral, NoArguments

FOLLOWER = b"Z9 NOOP\r\n"
FOLLOWER_EVENT = Command("Z9", "NOOP", NoArguments())


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


def events_for(data: bytes, **limits: int) -> list[Event]:
    return feed([data], **limits)


def assert_events(data: bytes, expected: list[Event], complete: bool = True, **limits: int) -> None:
    """`complete`: the input ends at a command boundary, so a following command must still parse."""
    assert feed([data], **limits) == expected
    assert feed([data[i : i + 1] for i in range(len(data))], **limits) == expected
    for i in range(len(data) + 1):
        assert feed([data[:i], data[i:]], **limits) == expected, f"split at {i}"
    if complete:
        assert feed([data + FOLLOWER], **limits) == [*expected, FOLLOWER_EVENT]
        assert feed([data, FOLLOWER], **limits) == [*expected, FOLLOWER_EVENT]


def parse_one(data: bytes) -> Command:
    """The single command in `data` (literal continuation requests ignored)."""
    events = [e for e in events_for(data) if not isinstance(e, NeedLiteral)]
    assert len(events) == 1 and isinstance(events[0], Command), events
    return events[0]
