"""SEARCH evaluation over one message (RFC 3501 §6.4.4, RFC 7162 §3.1.5 MODSEQ).

Pure: the caller gives what the metadata store keeps (flags, dates, size, header block) and, only
when `needs_body(key)`, the raw message. Text keys match case-insensitively as substrings of the
decoded text: RFC 2047 encoded words in headers, Content-Transfer-Encoding and charset in text
parts. Flags and keywords match case-insensitively (RFC 3501 §9: atoms are case-insensitive).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from email.utils import parsedate_tz
from typing import Protocol

from mailstack.message.addresses import parse_addresses
from mailstack.message.body_parts import is_message, is_multipart
from mailstack.message.encoded_words import decode_charset, decode_header_value, header_text
from mailstack.message.headers import field_value, header_values, split_fields
from mailstack.message.mime import is_text, param, parse_message
from mailstack.message.transfer_encoding import decode_base64, decode_quoted_printable
from mailstack.v1 import mailstore_pb2 as pb


class SearchableMessage(Protocol):
    """What SEARCH needs of a message without reading its body (storage's MessageRecord fits)."""

    @property
    def uid(self) -> int: ...
    @property
    def modseq(self) -> int: ...
    @property
    def flags(self) -> Sequence[str]: ...
    @property
    def internal_date(self) -> int: ...  # unix seconds
    @property
    def tz_offset(self) -> int: ...  # minutes east of UTC of the internal date
    @property
    def size(self) -> int: ...
    @property
    def sent_date(self) -> int | None: ...  # unix seconds of the Date: header
    @property
    def header(self) -> bytes: ...  # raw top-level header block
    @property
    def save_date(self) -> int: ...  # unix seconds it was stored in the mailbox (RFC 8514)
    @property
    def blob_key(self) -> str: ...  # its body's blob, shared by its copies (RFC 8474 EMAILID)


@dataclass(frozen=True)
class MessageFacts:
    """A plain SearchableMessage."""

    uid: int
    modseq: int
    flags: tuple[str, ...]
    internal_date: int
    tz_offset: int
    size: int
    sent_date: int | None
    header: bytes
    save_date: int = 0
    blob_key: str = ""


_ADDRESS_FIELDS = frozenset({b"from", b"to", b"cc", b"bcc", b"sender", b"reply-to"})


def _address_texts(value: bytes) -> Iterator[str]:
    """Each address of an address field as ENVELOPE gives it: "mailbox@host" (comments and
    blanks inside the addr-spec gone, RFC 5322 §3.4.1) and, with a display name, "name <...>"."""
    for address in parse_addresses(value):
        if not address.host:
            continue  # a group's start or end marker (RFC 3501 §7.4.2)
        spec = (address.mailbox + b"@" + address.host).decode("utf-8", "replace")
        yield spec
        if address.name:
            yield f"{decode_header_value(address.name)} <{spec}>"


def _decoded_body(raw: bytes, part: pb.BodyPart) -> str:
    data = raw[part.body_offset : part.end_offset]
    encoding = part.encoding.strip().lower()
    if encoding == b"quoted-printable":
        data = decode_quoted_printable(data)
    elif encoding == b"base64":
        data = decode_base64(data)
    charset = param(part.params, b"charset")
    return decode_charset(data, charset.decode("latin-1") if charset else None)


def _body_texts(raw: bytes, part: pb.BodyPart) -> Iterator[str]:
    """Decoded text parts, and the headers of encapsulated messages, in order."""
    if is_multipart(part):
        for child in part.parts:
            yield from _body_texts(raw, child)
    elif is_message(part) and part.parts:
        inner = part.parts[0]
        yield header_text(raw[inner.header_offset : inner.body_offset])
        yield from _body_texts(raw, inner)
    elif is_text(part):
        yield _decoded_body(raw, part)


def body_text(raw: bytes) -> str:
    """The searchable text of a raw message's body (what BODY matches)."""
    return "\n".join(_body_texts(raw, parse_message(raw).structure))


# ---------------------------------------------------------------- evaluation


def needs_body(key: pb.SearchKey) -> bool:
    """Whether evaluating `key` needs the message body (BODY or TEXT anywhere in the tree)."""
    kind = key.WhichOneof("key")
    if kind in ("body", "text"):
        return True
    if kind in ("and", "or"):
        return any(needs_body(k) for k in getattr(key, kind).keys)
    if kind == "not":
        return needs_body(getattr(key, "not"))
    return False


def _in_set(value: int, uid_set: pb.UidSet, largest: int | None) -> bool:
    """Membership in a sequence set where 0 stands for "*" (RFC 3501 §9 seq-number): n:* with
    n > largest still contains the largest. With `largest` unknown, "*" is only an open bound."""
    for r in uid_set.ranges:
        first, last = r.first or largest, r.last or largest
        if first is None or last is None:
            bound = first or last
            if bound is None or value >= bound:
                return True
        elif min(first, last) <= value <= max(first, last):
            return True
    return False


def _day(unix: int, offset_minutes: int) -> date:
    return datetime.fromtimestamp(unix + offset_minutes * 60, UTC).date()


def _sent_offset(header: bytes) -> int:
    """Zone offset in minutes of the Date: header, so SENT* compares the sender's day."""
    value = header_values(header).get(b"date")
    if not value:
        return 0
    try:
        parsed = parsedate_tz(value.decode("latin-1"))
    except Exception:  # the email package raises several kinds on odd dates
        return 0
    return (parsed[9] or 0) // 60 if parsed else 0


class _Evaluation:
    """One message against one key tree; decoded texts are computed at most once."""

    def __init__(self, msg: SearchableMessage, seq: int, max_uid: int, body: bytes | None, max_seq: int | None):
        self.msg, self.seq, self.max_uid, self.body, self.max_seq = msg, seq, max_uid, body, max_seq
        self._header: str | None = None
        self._body: str | None = None
        self._flags = {f.lower() for f in msg.flags}

    def header_text(self) -> str:
        if self._header is None:
            self._header = header_text(self.msg.header).casefold()
        return self._header

    def body_text(self) -> str:
        if self._body is None:
            if self.body is None:
                raise ValueError("BODY and TEXT need the message body")
            self._body = body_text(self.body).casefold()
        return self._body

    def header_matches(self, key: pb.HeaderKey) -> bool:
        """The field's decoded text contains the string; for FROM/TO/CC/BCC (and the other address
        fields) also its addresses as ENVELOPE shows them (RFC 3501 §6.4.4)."""
        name = key.name.encode("utf-8", "surrogateescape").lower()
        needle = key.value.casefold()
        for fname, text in split_fields(self.msg.header):
            if fname.lower() != name:
                continue
            value = field_value(text)
            if not needle or needle in decode_header_value(value).casefold():
                return True
            if name in _ADDRESS_FIELDS and any(needle in t.casefold() for t in _address_texts(value)):
                return True
        return False

    def date_matches(self, key: pb.DateKey) -> bool:
        wanted = date.fromisoformat(key.date)
        if key.field == pb.DATE_SENT:
            if self.msg.sent_date is None:
                return False
            day = _day(self.msg.sent_date, _sent_offset(self.msg.header))
        elif key.field == pb.DATE_SAVED:
            day = _day(self.msg.save_date, 0)  # stored in UTC (RFC 8514 §4: the save date's day)
        else:
            day = _day(self.msg.internal_date, self.msg.tz_offset)
        if key.op == pb.DATE_BEFORE:
            return day < wanted
        if key.op == pb.DATE_ON:
            return day == wanted
        return day >= wanted

    def text_matches(self, text: str) -> bool:
        needle = text.casefold()
        return needle in self.header_text() or needle in self.body_text()

    def flag_set(self, flag: str) -> bool:
        return flag.lower() in self._flags

    def matches(self, key: pb.SearchKey) -> bool:
        kind = key.WhichOneof("key")
        matcher = _MATCHERS.get(kind) if kind else None
        if matcher is None:
            raise ValueError("empty search key")
        return matcher(self, key)


# One rule per search key (RFC 3501 §6.4.4; MODSEQ: RFC 7162 §3.1.5), by the SearchKey oneof's name.
_MATCHERS: dict[str, Callable[[_Evaluation, pb.SearchKey], bool]] = {
    "all": lambda e, k: True,
    "and": lambda e, k: all(e.matches(sub) for sub in getattr(k, "and").keys),
    "or": lambda e, k: any(e.matches(sub) for sub in getattr(k, "or").keys),
    "not": lambda e, k: not e.matches(getattr(k, "not")),
    "flag_set": lambda e, k: e.flag_set(k.flag_set),
    "flag_unset": lambda e, k: not e.flag_set(k.flag_unset),
    "uids": lambda e, k: _in_set(e.msg.uid, k.uids, e.max_uid),
    "seqs": lambda e, k: _in_set(e.seq, k.seqs, e.max_seq),
    "date": lambda e, k: e.date_matches(k.date),
    "larger": lambda e, k: e.msg.size > k.larger,
    "smaller": lambda e, k: e.msg.size < k.smaller,
    "header": lambda e, k: e.header_matches(k.header),
    "body": lambda e, k: k.body.casefold() in e.body_text(),
    "text": lambda e, k: e.text_matches(k.text),
    "modseq": lambda e, k: e.msg.modseq >= k.modseq,
    "internal_before": lambda e, k: e.msg.internal_date < k.internal_before,  # RFC 5032 OLDER
    "internal_since": lambda e, k: e.msg.internal_date >= k.internal_since,  # RFC 5032 YOUNGER
    "blob_key": lambda e, k: e.msg.blob_key == k.blob_key,  # RFC 8474 EMAILID
}


def matches(
    key: pb.SearchKey,
    msg: SearchableMessage,
    seq: int,
    max_uid: int,
    body: bytes | None,
    *,
    max_seq: int | None = None,
) -> bool:
    """Whether message `msg` (sequence number `seq`) matches `key`.

    `body` is the raw message, needed only when `needs_body(key)`. `max_seq` (the number of
    messages) resolves "*" in sequence sets; without it "n:*" has no upper bound.
    Raises ValueError for a malformed key (an empty SearchKey, a bad date).
    """
    return _Evaluation(msg, seq, max_uid, body, max_seq).matches(key)
