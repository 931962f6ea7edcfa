"""Feed a CommandReceiver whole, byte by byte, split at every position and with a following
command, and check the events are always the same (after h11's test helper)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

from mailstack.services.imap.protocol import Command, CommandReceiver, Event, NeedData, NeedLiteral, NoArguments
from mailstack.services.imap.registry import GRAMMAR

from tests.fixtures.feeding import Feeder

FEEDER = Feeder(partial(CommandReceiver, GRAMMAR), NeedData, b"Z9 NOOP\r\n", Command("Z9", "NOOP", NoArguments()))
drain, feed = FEEDER.drain, FEEDER.feed
FOLLOWER, FOLLOWER_EVENT = FEEDER.follower, FEEDER.follower_event


def events_for(data: bytes, **limits: int) -> list[Event]:
    return feed([data], **limits)


def assert_events(data: bytes, expected: Sequence[Event], complete: bool = True, **limits: int) -> None:
    """`complete`: the input ends at a command boundary, so a following command must still parse."""
    FEEDER.assert_events(data, list(expected), complete, **limits)


def parse_one(data: bytes) -> Command:
    """The single command in `data` (literal continuation requests ignored)."""
    events = [e for e in events_for(data) if not isinstance(e, NeedLiteral)]
    assert len(events) == 1 and isinstance(events[0], Command), events
    return events[0]
