"""Events returned by `CommandReceiver.next_event()` (sans-IO, after h11's event model)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias


@dataclass(frozen=True, slots=True)
class NeedData:
    """More bytes are needed before another event can be produced."""


NEED_DATA = NeedData()


@dataclass(frozen=True, slots=True)
class LineTooLong:
    """A line exceeded the receiver's limit; it is discarded up to its line end. Answer -ERR."""


@dataclass(frozen=True, slots=True)
class Command:
    """One command line. `name` is upper-case ("RETR"); `args` are the space-separated words after
    it; `rest` is everything after the keyword and one space, for PASS (passwords may hold spaces)."""

    name: str
    args: tuple[str, ...] = ()
    rest: str = ""


Event: TypeAlias = Command | LineTooLong | NeedData
