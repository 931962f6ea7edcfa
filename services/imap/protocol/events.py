"""Events returned by `CommandReceiver.next_event()` (sans-IO, after h11's event model)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:
    from .commands import Arguments


@dataclass(frozen=True, slots=True)
class NeedData:
    """More bytes are needed before another event can be produced."""


NEED_DATA = NeedData()


@dataclass(frozen=True, slots=True)
class NeedLiteral:
    """A literal header was read. For a synchronizing literal (`{n}`) the server now sends
    "+ go ahead" (RFC 3501 §7.5); LITERAL+ literals (`{n+}`, RFC 7888) need no answer."""

    size: int
    synchronizing: bool


@dataclass(frozen=True, slots=True)
class ParseError:
    """The command could not be parsed: answer `tag BAD message` (`* BAD` when tag is None).
    `fatal` means the byte stream cannot be resynchronised: send BYE and close."""

    tag: str | None
    message: str
    fatal: bool = False


@dataclass(frozen=True, slots=True)
class LiteralTooBig:
    """A literal larger than the receiver's limit was announced (RFC 7888 §4: answer NO [TOOBIG]
    or BAD). The receiver has already arranged to discard the rest of the command."""

    tag: str | None
    size: int
    synchronizing: bool


@dataclass(frozen=True, slots=True)
class Command:
    """One complete client command. `name` is upper-case ("FETCH"); `uid` is True for the
    "UID FETCH" form of COPY/MOVE/FETCH/SEARCH/STORE/EXPUNGE (RFC 3501 §6.4.8).
    `invalid_mailbox` says why a mailbox name that fits the grammar cannot name a mailbox (not
    modified UTF-7, RFC 3501 §5.1.3): the command is answered NO, or an empty OK for LIST and LSUB
    (RFC 9051 §7.1.5 keeps BAD for syntax errors); "" when every name is valid."""

    tag: str
    name: str
    args: Arguments
    uid: bool = False
    invalid_mailbox: str = ""


Event: TypeAlias = Command | NeedData | NeedLiteral | ParseError | LiteralTooBig
