"""SEARCH keys (protocol/search.py) translated for the mailstore's Search call: sequence numbers,
`$` and \\Recent become this session's UID sets (RFC 9051 §6.4.4, RFC 5182, RFC 3501 §2.3.2)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from mailstack.v1 import mailstore_pb2 as pb

from .mailbox_view import MailboxView
from .mailstore import uid_set
from .protocol import (
    SearchAge,
    SearchAll,
    SearchAnd,
    SearchDate,
    SearchFlag,
    SearchHeader,
    SearchKey,
    SearchModSeq,
    SearchNot,
    SearchObjectId,
    SearchOr,
    SearchSaveDateSupported,
    SearchSequence,
    SearchSize,
    SearchText,
)
from .replies import bad

EMAILID_PREFIX = "M"  # RFC 8474 objectid: "M" + the blob key (letters, digits, "-")

# Protobuf (upb) refuses messages nested deeper than 100 levels; SearchRequest and a leaf key's own
# messages (UidSet -> ranges) take a few of them.
MAX_WIRE_DEPTH = 90
_DATE_OPS = {"before": pb.DATE_BEFORE, "on": pb.DATE_ON, "since": pb.DATE_SINCE}
Translated = tuple[pb.SearchKey, bool]  # (mailstore key, whether MODSEQ was used)


def _text(value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise bad("search text is not UTF-8") from None


def _compound(kind: str, keys: pb.SearchKeys) -> pb.SearchKey:
    # "and"/"or"/"not" are Python keywords: set the oneof field by name.
    out = pb.SearchKey()
    getattr(out, kind).CopyFrom(keys)
    return out


def _not(inner: pb.SearchKey) -> pb.SearchKey:
    out = pb.SearchKey()
    getattr(out, "not").CopyFrom(inner)
    return out


def _nothing() -> pb.SearchKey:
    return _not(pb.SearchKey(all=True))


def _children(key: SearchAnd | SearchOr) -> tuple[SearchKey, ...]:
    return key.keys if isinstance(key, SearchAnd) else (key.left, key.right)


def _operands(key: SearchAnd | SearchOr) -> list[SearchKey]:
    """The operands of an AND or OR with nested ANDs in an AND (ORs in an OR) lifted into it:
    `OR OR OR a b c d` is one OR of four keys, not three levels (the mailstore's SearchKeys are
    n-ary), so a client's long OR chain stays shallow on the wire."""
    stack = list(reversed(_children(key)))
    out: list[SearchKey] = []
    while stack:
        item = stack.pop()
        if isinstance(item, SearchAnd | SearchOr) and type(item) is type(key):
            stack.extend(reversed(_children(item)))
        else:
            out.append(item)
    return out


def _compound_key(key: SearchAnd | SearchOr, view: MailboxView, depth: int) -> Translated:
    # SearchKey -> SearchKeys -> SearchKey: two levels per compound
    parts = [translate(k, view, depth + 2) for k in _operands(key)]
    keys = pb.SearchKeys(keys=[p[0] for p in parts])
    return _compound("and" if isinstance(key, SearchAnd) else "or", keys), any(p[1] for p in parts)


def _not_key(key: SearchNot, view: MailboxView, depth: int) -> Translated:
    inner, used = translate(key.key, view, depth + 1)
    return _not(inner), used


def _flag_key(key: SearchFlag, view: MailboxView, depth: int) -> Translated:
    if key.flag.lower() == "\\recent":
        # \Recent is the session's own (RFC 3501 §2.3.2): a UID set, never the store's
        recent = pb.SearchKey(uids=uid_set(view.recent)) if view.recent else _nothing()
        return (recent if key.present else _not(recent)), False
    return (pb.SearchKey(flag_set=key.flag) if key.present else pb.SearchKey(flag_unset=key.flag)), False


def _sequence_key(key: SearchSequence, view: MailboxView, depth: int) -> Translated:
    uids = [u for _, u in view.resolve(key.sequence_set, key.uid)]  # `$`: the saved result (RFC 5182)
    return (pb.SearchKey(uids=uid_set(uids)) if uids else _nothing()), False


def _text_key(key: SearchText, view: MailboxView, depth: int) -> Translated:
    value = _text(key.value)
    return (pb.SearchKey(body=value) if key.body_only else pb.SearchKey(text=value)), False


def _date_key(key: SearchDate, view: MailboxView, depth: int) -> Translated:
    field = pb.DATE_SAVED if key.saved else pb.DATE_SENT if key.sent else pb.DATE_INTERNAL
    return pb.SearchKey(date=pb.DateKey(field=field, op=_DATE_OPS[key.relation], date=key.date.isoformat())), False


def _age_key(key: SearchAge, view: MailboxView, depth: int) -> Translated:
    # RFC 5032 §3: the interval is counted back from the server's current time
    cutoff = int(time.time()) - key.seconds
    return (pb.SearchKey(internal_before=cutoff) if key.older else pb.SearchKey(internal_since=cutoff)), False


def _object_id_key(key: SearchObjectId, view: MailboxView, depth: int) -> Translated:
    # RFC 8474 §5.4: EMAILID is "M" + the body's blob key (commands/fetch.py); THREADID is always NIL
    # here (no threads are kept), so no message has one.
    if key.kind == "EMAILID" and key.value.startswith(EMAILID_PREFIX) and len(key.value) > 1:
        return pb.SearchKey(blob_key=key.value[len(EMAILID_PREFIX) :]), False
    return _nothing(), False


_BY_TYPE: dict[type, Callable[[Any, MailboxView, int], Translated]] = {
    SearchAll: lambda key, view, depth: (pb.SearchKey(all=True), False),
    SearchAnd: _compound_key,
    SearchOr: _compound_key,
    SearchNot: _not_key,
    SearchFlag: _flag_key,
    SearchSequence: _sequence_key,
    SearchHeader: lambda key, view, depth: (
        pb.SearchKey(header=pb.HeaderKey(name=key.field, value=_text(key.value))),
        False,
    ),
    SearchText: _text_key,
    SearchDate: _date_key,
    SearchSize: lambda key, view, depth: (
        pb.SearchKey(larger=key.size) if key.larger else pb.SearchKey(smaller=key.size),
        False,
    ),
    SearchModSeq: lambda key, view, depth: (pb.SearchKey(modseq=key.modseq), True),
    SearchAge: _age_key,
    SearchSaveDateSupported: lambda key, view, depth: (pb.SearchKey(all=True), False),  # RFC 8514 §4
    SearchObjectId: _object_id_key,
}


def translate(key: SearchKey, view: MailboxView, depth: int = 0) -> Translated:
    """(mailstore key, whether MODSEQ was used). `depth` counts protobuf message levels: a tree
    past MAX_WIRE_DEPTH is BAD here, where the mailstore could not decode it (protobuf's limit)."""
    if depth > MAX_WIRE_DEPTH:
        raise bad("search criteria nested too deeply")
    handler = _BY_TYPE.get(type(key))
    if handler is None:
        raise bad("unsupported search key")
    return handler(key, view, depth)


def uses_recent(key: SearchKey) -> bool:
    """Whether a key tree holds RECENT, NEW or OLD (keys IMAP4rev2 removed, RFC 9051 Appendix E).
    The parser bounds the depth (MAX_WIRE_DEPTH)."""
    if isinstance(key, SearchFlag):
        return key.flag.lower() == "\\recent"
    if isinstance(key, SearchNot):
        return uses_recent(key.key)
    if isinstance(key, SearchAnd | SearchOr):
        return any(uses_recent(k) for k in _children(key))
    return False
