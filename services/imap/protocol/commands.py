"""Typed arguments of every IMAP command (RFC 3501 §6, RFC 9051 §6 and the extensions the
server announces). One frozen dataclass per argument shape; `Command.args` holds one of them."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import TypeAlias

from .fetch import FetchItem
from .ordering import CancelUpdate, Sort, Thread
from .search import SearchKey
from .sequence import SequenceSet


@dataclass(frozen=True, slots=True)
class NoArguments:
    """CAPABILITY NOOP LOGOUT STARTTLS CHECK CLOSE UNSELECT EXPUNGE IDLE NAMESPACE."""


@dataclass(frozen=True, slots=True)
class Authenticate:
    """AUTHENTICATE mechanism [initial-response] (RFC 4959 SASL-IR). The response is the raw
    base64 text; b"=" stands for an empty initial response."""

    mechanism: str
    initial_response: bytes | None = None


@dataclass(frozen=True, slots=True)
class Login:
    username: str
    password: str


@dataclass(frozen=True, slots=True)
class QresyncParameters:
    """QRESYNC (uidvalidity modseq [known-uids] [(seq-match)]) of SELECT/EXAMINE (RFC 7162 §3.2.5)."""

    uidvalidity: int
    modseq: int
    known_uids: SequenceSet | None = None
    known_sequence_set: SequenceSet | None = None
    known_uid_set: SequenceSet | None = None


@dataclass(frozen=True, slots=True)
class Select:
    """SELECT and EXAMINE (read-only is the command name)."""

    mailbox: str
    condstore: bool = False
    qresync: QresyncParameters | None = None


@dataclass(frozen=True, slots=True)
class MailboxArgument:
    """DELETE SUBSCRIBE UNSUBSCRIBE GETQUOTAROOT."""

    mailbox: str


@dataclass(frozen=True, slots=True)
class Create:
    mailbox: str
    special_use: tuple[str, ...] = ()  # CREATE ... (USE (\Sent)) (RFC 6154 §3)


@dataclass(frozen=True, slots=True)
class Rename:
    mailbox: str
    new_name: str


@dataclass(frozen=True, slots=True)
class ListMailboxes:
    """LIST with LIST-EXTENDED (RFC 5258), SPECIAL-USE (RFC 6154) and LIST-STATUS (RFC 5819).
    `status` is None when no STATUS return option was given."""

    reference: str
    patterns: tuple[str, ...]
    selection: frozenset[str] = frozenset()
    returns: frozenset[str] = frozenset()
    status: tuple[str, ...] | None = None
    extended: bool = False  # selection options, several patterns or return options were used


@dataclass(frozen=True, slots=True)
class Lsub:
    reference: str
    pattern: str


@dataclass(frozen=True, slots=True)
class Status:
    mailbox: str
    items: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class AppendMessage:
    flags: tuple[str, ...]
    date_time: datetime.datetime | None
    data: bytes
    binary: bool = False  # sent as literal8 (RFC 3516 §4.4)
    # CATENATE (RFC 4469 §5): the parts to join, in order, instead of `data` (which is b"" then)
    parts: tuple[CatenatePart, ...] | None = None


@dataclass(frozen=True, slots=True)
class CatenatePart:
    """cat-part = "TEXT" SP literal / "URL" SP astring (RFC 4469 §5): `text` or `url`."""

    text: bytes | None = None
    url: str | None = None
    binary: bool = False  # TEXT as literal8 (RFC 3516 §4.4)


@dataclass(frozen=True, slots=True)
class Append:
    """APPEND; several messages with MULTIAPPEND (RFC 3502)."""

    mailbox: str
    messages: tuple[AppendMessage, ...]


@dataclass(frozen=True, slots=True)
class SequenceArgument:
    """UID EXPUNGE sequence-set (RFC 4315 §2.1)."""

    sequence_set: SequenceSet


@dataclass(frozen=True, slots=True)
class Search:
    """`returns` is None for a plain SEARCH, else the RETURN options (RFC 4731 ESEARCH; an empty
    tuple means ALL). `charset` is None when not given."""

    key: SearchKey
    charset: str | None = None
    returns: tuple[str, ...] | None = None
    partial: tuple[int, int] | None = None  # RFC 5267 §4.4 PARTIAL low:high


@dataclass(frozen=True, slots=True)
class Fetch:
    sequence_set: SequenceSet
    items: tuple[FetchItem, ...]
    changed_since: int | None = None
    vanished: bool = False


@dataclass(frozen=True, slots=True)
class Store:
    """`mode` is "+", "-" or "" (replace)."""

    sequence_set: SequenceSet
    mode: str
    silent: bool
    flags: tuple[str, ...]
    unchanged_since: int | None = None


@dataclass(frozen=True, slots=True)
class CopyMove:
    """COPY and MOVE (RFC 6851)."""

    sequence_set: SequenceSet
    mailbox: str


@dataclass(frozen=True, slots=True)
class Id:
    """ID (RFC 2971); params None for NIL."""

    params: tuple[tuple[str, str | None], ...] | None


@dataclass(frozen=True, slots=True)
class Enable:
    capabilities: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Compress:
    """COMPRESS mechanism (RFC 4978 §3); DEFLATE is the only one."""

    mechanism: str


@dataclass(frozen=True, slots=True)
class QuotaRoot:
    """GETQUOTA root (RFC 9208 §4.2)."""

    root: str


@dataclass(frozen=True, slots=True)
class SetQuota:
    root: str
    limits: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class NotifyGroup:
    """One event-group of NOTIFY SET (RFC 5465 §8): a mailbox filter ("SELECTED", "SELECTED-DELAYED",
    "INBOXES", "PERSONAL", "SUBSCRIBED", "SUBTREE", "MAILBOXES"), its names (SUBTREE, MAILBOXES),
    the events as written (canonical case; () for NONE) and MessageNew's fetch attributes."""

    filter: str
    mailboxes: tuple[str, ...]
    events: tuple[str, ...]
    fetch: tuple[FetchItem, ...] = ()


@dataclass(frozen=True, slots=True)
class Notify:
    """NOTIFY SET [STATUS] groups, or NOTIFY NONE (groups None)."""

    groups: tuple[NotifyGroup, ...] | None
    status: bool = False


Arguments: TypeAlias = (
    NoArguments
    | Authenticate
    | Login
    | Select
    | MailboxArgument
    | Create
    | Rename
    | ListMailboxes
    | Lsub
    | Status
    | Append
    | SequenceArgument
    | Search
    | Fetch
    | Store
    | CopyMove
    | Id
    | Enable
    | QuotaRoot
    | SetQuota
    | Compress
    | Notify
    | Sort
    | Thread
    | CancelUpdate
)
