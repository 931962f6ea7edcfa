"""SEARCH criteria (RFC 3501 §6.4.4, RFC 9051 §6.4.4, MODSEQ from RFC 7162 §3.1.5, OLDER/YOUNGER
from RFC 5032) parsed into a small key tree; the IMAP session translates it for the mailstore."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TypeAlias

from .grammar import DIGITS, GrammarError, Reader
from .sequence import SequenceSet, parse_sequence_set

MAX_DEPTH = 64  # nesting of "(" / NOT / OR; deeper is refused, not recursed into
# The mailstore evaluates every key against every message, and each string is compared with every
# message's text: both are bounded per command (more is a BAD), so one SEARCH costs at most
# MAX_KEYS * messages evaluations and MAX_TEXT_BYTES of needles. Real clients send tens of keys.
MAX_KEYS = 1000
MAX_TEXT_BYTES = 64 * 1024  # all the strings of one SEARCH (header values, BODY, TEXT) together


@dataclass(frozen=True, slots=True)
class SearchAll:
    pass


@dataclass(frozen=True, slots=True)
class SearchAnd:
    keys: tuple[SearchKey, ...]


@dataclass(frozen=True, slots=True)
class SearchOr:
    left: SearchKey
    right: SearchKey


@dataclass(frozen=True, slots=True)
class SearchNot:
    key: SearchKey


@dataclass(frozen=True, slots=True)
class SearchFlag:
    """A system flag ("\\Seen", "\\Recent") or keyword; `present` False for UNSEEN, UNKEYWORD..."""

    flag: str
    present: bool = True


@dataclass(frozen=True, slots=True)
class SearchSequence:
    sequence_set: SequenceSet
    uid: bool = False


@dataclass(frozen=True, slots=True)
class SearchHeader:
    """HEADER field value; FROM/TO/CC/BCC/SUBJECT are HEADER with that field. `value` is in the
    command's CHARSET (undecoded: an unknown charset is NO [BADCHARSET], decided by the session)."""

    field: str
    value: bytes


@dataclass(frozen=True, slots=True)
class SearchText:
    """BODY (body_only) or TEXT (header and body)."""

    value: bytes
    body_only: bool


@dataclass(frozen=True, slots=True)
class SearchDate:
    """BEFORE/ON/SINCE on the internal date, or SENTBEFORE/SENTON/SENTSINCE on the Date header."""

    relation: Literal["before", "on", "since"]
    date: datetime.date
    sent: bool = False
    saved: bool = False  # SAVEDBEFORE/SAVEDON/SAVEDSINCE on the save date (RFC 8514 §4)


@dataclass(frozen=True, slots=True)
class SearchSize:
    larger: bool
    size: int


@dataclass(frozen=True, slots=True)
class SearchModSeq:
    """MODSEQ [entry-name entry-type] modseq: messages with modseq >= value (RFC 7162 §3.1.5)."""

    modseq: int
    entry_name: str | None = None
    entry_type: str | None = None


@dataclass(frozen=True, slots=True)
class SearchSaveDateSupported:
    """SAVEDATESUPPORTED: every message when the mailbox keeps save dates (RFC 8514 §4)."""


@dataclass(frozen=True, slots=True)
class SearchObjectId:
    """EMAILID / THREADID objectid (RFC 8474 §5.4)."""

    kind: Literal["EMAILID", "THREADID"]
    value: str


@dataclass(frozen=True, slots=True)
class SearchAge:
    """OLDER/YOUNGER n seconds (RFC 5032 WITHIN)."""

    older: bool
    seconds: int


SearchKey: TypeAlias = (
    SearchAll
    | SearchAnd
    | SearchOr
    | SearchNot
    | SearchFlag
    | SearchSequence
    | SearchHeader
    | SearchText
    | SearchDate
    | SearchSize
    | SearchModSeq
    | SearchAge
    | SearchSaveDateSupported
    | SearchObjectId
)

_FLAG_KEYS: dict[str, SearchKey] = {
    "ANSWERED": SearchFlag("\\Answered"),
    "DELETED": SearchFlag("\\Deleted"),
    "DRAFT": SearchFlag("\\Draft"),
    "FLAGGED": SearchFlag("\\Flagged"),
    "RECENT": SearchFlag("\\Recent"),
    "SEEN": SearchFlag("\\Seen"),
    "UNANSWERED": SearchFlag("\\Answered", False),
    "UNDELETED": SearchFlag("\\Deleted", False),
    "UNDRAFT": SearchFlag("\\Draft", False),
    "UNFLAGGED": SearchFlag("\\Flagged", False),
    "UNSEEN": SearchFlag("\\Seen", False),
    "OLD": SearchFlag("\\Recent", False),
    # NEW = RECENT UNSEEN
    "NEW": SearchAnd((SearchFlag("\\Recent"), SearchFlag("\\Seen", False))),
    "ALL": SearchAll(),
    "SAVEDATESUPPORTED": SearchSaveDateSupported(),
}
_ADDRESS_KEYS = {"BCC": "Bcc", "CC": "Cc", "FROM": "From", "SUBJECT": "Subject", "TO": "To"}
_DATE_KEYS: dict[str, tuple[Literal["before", "on", "since"], bool]] = {
    "BEFORE": ("before", False),
    "ON": ("on", False),
    "SINCE": ("since", False),
    "SENTBEFORE": ("before", True),
    "SENTON": ("on", True),
    "SENTSINCE": ("since", True),
}

_SAVED_DATE_KEYS: dict[str, Literal["before", "on", "since"]] = {
    "SAVEDBEFORE": "before",
    "SAVEDON": "on",
    "SAVEDSINCE": "since",
}
OBJECTID_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def _header_field_name(reader: Reader) -> str:
    # header-fld-name = astring  (field names are printable US-ASCII without ":", RFC 5322 §3.6.8)
    raw = reader.astring()
    if not raw or any(c < 33 or c > 126 or c == 0x3A for c in raw):
        raise GrammarError("invalid header field name")
    return raw.decode("ascii")


def _keyword(reader: Reader) -> str:
    flag = reader.flag()
    if flag.startswith("\\"):
        raise GrammarError("KEYWORD takes a keyword, not a system flag")
    return flag


def _modseq(reader: Reader, name: str, depth: int) -> SearchKey:
    # search-modsequence = "MODSEQ" [search-modseq-ext] SP mod-sequence-valzer
    # search-modseq-ext = SP entry-name SP entry-type-req
    # entry-name = DQUOTE "/flags/" attr-flag DQUOTE; entry-type-req = "priv" / "shared" / "all"
    if reader.peek() != 0x22:
        return SearchModSeq(reader.number64())
    entry = reader.quoted().decode("ascii", "replace")
    if not entry.lower().startswith("/flags/"):
        raise GrammarError("invalid MODSEQ entry name")
    reader.sp()
    entry_type = reader.keyword().lower()
    if entry_type not in ("priv", "shared", "all"):
        raise GrammarError("invalid MODSEQ entry type")
    reader.sp()
    return SearchModSeq(reader.number64(), entry, entry_type)


def _header(reader: Reader, name: str, depth: int) -> SearchKey:
    field = _header_field_name(reader)
    reader.sp()
    return SearchHeader(field, reader.astring())


def _or(reader: Reader, name: str, depth: int) -> SearchKey:
    left = parse_search_key(reader, depth + 1)
    reader.sp()
    return SearchOr(left, parse_search_key(reader, depth + 1))


def _date(reader: Reader, name: str, depth: int) -> SearchKey:
    relation, sent = _DATE_KEYS[name]
    return SearchDate(relation, reader.date(), sent)


def _saved_date(reader: Reader, name: str, depth: int) -> SearchKey:
    # search-key =/ "SAVEDBEFORE" SP date / "SAVEDON" SP date / "SAVEDSINCE" SP date (RFC 8514 §6)
    return SearchDate(_SAVED_DATE_KEYS[name], reader.date(), saved=True)


def _object_id(reader: Reader, name: str, depth: int) -> SearchKey:
    # search-key =/ "EMAILID" SP objectid / "THREADID" SP objectid (RFC 8474 §7)
    # objectid = 1*255(ALPHA / DIGIT / "_" / "-")
    value = reader.take_while(OBJECTID_CHARS)
    if not value or len(value) > 255:
        raise GrammarError("invalid objectid")
    return SearchObjectId("EMAILID" if name == "EMAILID" else "THREADID", value.decode("ascii"))


# The keys followed by SP and an argument: keyword -> (reader after the SP, keyword, depth) -> key
_KEYS_WITH_ARGUMENT: dict[str, Callable[[Reader, str, int], SearchKey]] = {
    **{name: (lambda r, n, d: SearchHeader(_ADDRESS_KEYS[n], r.astring())) for name in _ADDRESS_KEYS},
    **dict.fromkeys(_DATE_KEYS, _date),
    **dict.fromkeys(("BODY", "TEXT"), lambda r, n, d: SearchText(r.astring(), body_only=n == "BODY")),
    **dict.fromkeys(("KEYWORD", "UNKEYWORD"), lambda r, n, d: SearchFlag(_keyword(r), n == "KEYWORD")),
    "HEADER": _header,
    **dict.fromkeys(("LARGER", "SMALLER"), lambda r, n, d: SearchSize(n == "LARGER", r.number64())),
    **dict.fromkeys(("OLDER", "YOUNGER"), lambda r, n, d: SearchAge(n == "OLDER", r.nz_number())),
    "UID": lambda r, n, d: SearchSequence(parse_sequence_set(r), uid=True),
    "NOT": lambda r, n, d: SearchNot(parse_search_key(r, d + 1)),
    "OR": _or,
    "MODSEQ": _modseq,
    **dict.fromkeys(("SAVEDBEFORE", "SAVEDON", "SAVEDSINCE"), _saved_date),
    **dict.fromkeys(("EMAILID", "THREADID"), _object_id),
}


def parse_search_key(reader: Reader, depth: int = 0) -> SearchKey:
    if depth > MAX_DEPTH:
        raise GrammarError("search criteria nested too deeply")
    c = reader.peek()
    if c == 0x28:  # "(" search-key *(SP search-key) ")"
        keys = reader.sequence(lambda: parse_search_key(reader, depth + 1))
        if not keys:
            raise GrammarError("empty search key list")
        return keys[0] if len(keys) == 1 else SearchAnd(keys)
    if c is not None and (c in DIGITS or c in b"*$"):
        return SearchSequence(parse_sequence_set(reader))
    name = reader.keyword()
    if name in _FLAG_KEYS:
        return _FLAG_KEYS[name]
    parse = _KEYS_WITH_ARGUMENT.get(name)
    if parse is None:
        raise GrammarError(f"unknown search key {name}")
    reader.sp()
    return parse(reader, name, depth)


def parse_search_keys(reader: Reader) -> SearchKey:
    """search-key *(SP search-key), up to the end of the command; several keys are ANDed.

    Raises GrammarError (BAD) past MAX_DEPTH, MAX_KEYS or MAX_TEXT_BYTES."""
    keys = [parse_search_key(reader)]
    while not reader.at_end():
        reader.sp()
        keys.append(parse_search_key(reader))
    key = keys[0] if len(keys) == 1 else SearchAnd(tuple(keys))
    count, text = search_size(key)
    if count > MAX_KEYS:
        raise GrammarError(f"more than {MAX_KEYS} search keys")
    if text > MAX_TEXT_BYTES:
        raise GrammarError(f"search strings longer than {MAX_TEXT_BYTES} bytes together")
    return key


def search_size(key: SearchKey) -> tuple[int, int]:
    """(number of keys in the tree, bytes of its strings); the tree is at most MAX_DEPTH deep."""
    if isinstance(key, SearchAnd):
        sizes = [search_size(k) for k in key.keys]
    elif isinstance(key, SearchOr):
        sizes = [search_size(key.left), search_size(key.right)]
    elif isinstance(key, SearchNot):
        sizes = [search_size(key.key)]
    elif isinstance(key, SearchHeader):
        return 1, len(key.field) + len(key.value)
    elif isinstance(key, SearchText):
        return 1, len(key.value)
    else:
        return 1, 0
    return 1 + sum(n for n, _ in sizes), sum(t for _, t in sizes)
