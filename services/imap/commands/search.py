"""SEARCH and UID SEARCH (RFC 9051 §6.4.4, RFC 3501 §6.4.4; ESEARCH RFC 4731; MODSEQ RFC 7162 §3.1.5).
The key tree is translated for the mailstore; sequence numbers and \\Recent are this session's."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mailstack.v1 import mailstore_pb2 as pb

from ..errors import bad, no
from ..mailbox_view import MailboxView
from ..protocol import (
    Command,
    Search,
    SearchAge,
    SearchAll,
    SearchAnd,
    SearchDate,
    SearchFlag,
    SearchHeader,
    SearchKey,
    SearchModSeq,
    SearchNot,
    SearchOr,
    SearchSequence,
    SearchSize,
    SearchText,
)
from ..protocol.encoder import quoted, untagged
from .common import selected_view, set_text, uid_set

if TYPE_CHECKING:
    from ..session import Reply, Session

CALL_TIMEOUT = 120.0
# Protobuf (upb) refuses messages nested deeper than 100 levels; SearchRequest and a leaf key's own
# messages (UidSet -> ranges) take a few of them.
MAX_WIRE_DEPTH = 90
CHARSETS = {"UTF-8", "US-ASCII"}
_DATE_OPS = {"before": pb.DATE_BEFORE, "on": pb.DATE_ON, "since": pb.DATE_SINCE}


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


def translate(key: SearchKey, view: MailboxView, depth: int = 0) -> tuple[pb.SearchKey, bool]:
    """(mailstore key, whether MODSEQ was used). `depth` counts protobuf message levels: a tree
    past MAX_WIRE_DEPTH is BAD here, where the mailstore could not decode it (protobuf's limit)."""
    if depth > MAX_WIRE_DEPTH:
        raise bad("search criteria nested too deeply")
    if isinstance(key, SearchAll):
        return pb.SearchKey(all=True), False
    if isinstance(key, SearchAnd | SearchOr):
        # SearchKey -> SearchKeys -> SearchKey: two levels per compound
        parts = [translate(k, view, depth + 2) for k in _operands(key)]
        keys = pb.SearchKeys(keys=[p[0] for p in parts])
        used = any(p[1] for p in parts)
        return (_compound("and", keys) if isinstance(key, SearchAnd) else _compound("or", keys)), used
    if isinstance(key, SearchNot):
        inner, used = translate(key.key, view, depth + 1)
        return _not(inner), used
    if isinstance(key, SearchFlag):
        if key.flag.lower() == "\\recent":
            # \Recent is the session's own (RFC 3501 §2.3.2): a UID set, never the store's
            recent = pb.SearchKey(uids=uid_set(view.recent)) if view.recent else _not(pb.SearchKey(all=True))
            return (recent if key.present else _not(recent)), False
        return (pb.SearchKey(flag_set=key.flag) if key.present else pb.SearchKey(flag_unset=key.flag)), False
    if isinstance(key, SearchSequence):
        uids = [u for _, u in view.resolve(key.sequence_set, key.uid)]  # `$`: the saved result (RFC 5182)
        return (pb.SearchKey(uids=uid_set(uids)) if uids else _not(pb.SearchKey(all=True))), False
    if isinstance(key, SearchHeader):
        return pb.SearchKey(header=pb.HeaderKey(name=key.field, value=_text(key.value))), False
    if isinstance(key, SearchText):
        value = _text(key.value)
        return (pb.SearchKey(body=value) if key.body_only else pb.SearchKey(text=value)), False
    if isinstance(key, SearchDate):
        field = pb.DATE_SENT if key.sent else pb.DATE_INTERNAL
        date = pb.DateKey(field=field, op=_DATE_OPS[key.relation], date=key.date.isoformat())
        return pb.SearchKey(date=date), False
    if isinstance(key, SearchSize):
        return (pb.SearchKey(larger=key.size) if key.larger else pb.SearchKey(smaller=key.size)), False
    if isinstance(key, SearchModSeq):
        return pb.SearchKey(modseq=key.modseq), True
    if isinstance(key, SearchAge):
        raise no("OLDER/YOUNGER (WITHIN) is not supported", "CANNOT")
    raise bad("unsupported search key")


async def search(session: Session, command: Command) -> Reply | None:
    # Command: RFC 9051 §6.4.4; RETURN options RFC 4731 §3.1; SAVE RFC 5182 §2
    view = selected_view(session.view)
    args = command.args
    assert isinstance(args, Search)
    if args.returns is None or "SAVE" not in args.returns:
        return await _search(session, view, command, args)
    try:
        return await _search(session, view, command, args)
    except BaseException:
        view.saved = []  # RFC 5182 §2.1: a SEARCH ... SAVE that fails leaves the result empty
        raise


async def _search(session: Session, view: MailboxView, command: Command, args: Search) -> Reply | None:
    if args.charset is not None and args.charset.upper() not in CHARSETS:
        raise no("unsupported charset", "BADCHARSET (UTF-8 US-ASCII)")
    key, modseq_used = translate(args.key, view)
    if modseq_used:
        session.condstore = True
    reply = await session.stub.Search(
        pb.SearchRequest(account=session.account, mailbox=view.name, key=key), timeout=CALL_TIMEOUT
    )
    # Only messages the client knows, numbered as it knows them.
    hits = [(seq, uid) for uid in reply.uids if (seq := view.seq_of(uid)) is not None]
    numbers = [uid if command.uid else seq for seq, uid in hits]
    modseq = max((view.modseqs.get(uid, 0) for _, uid in hits), default=0)
    if args.returns is not None:
        returns = set(args.returns) or {"ALL"}
        if "SAVE" in returns:
            # RFC 5182 §2.1: with MIN and/or MAX only those are kept; UIDs, so that `$` survives
            # expunges and works in UID and non-UID commands alike.
            extremes = [f(hits) for f, name in ((min, "MIN"), (max, "MAX")) if name in returns and hits]
            view.saved = [uid for _, uid in (extremes if {"MIN", "MAX"} & returns else hits)]
            returns.discard("SAVE")
            if not returns:
                return None  # RFC 5182 §2.4: SAVE alone returns no ESEARCH
        parts = [b"ESEARCH (TAG " + quoted(command.tag) + b")"]
        if command.uid:
            parts.append(b"UID")
        if numbers:
            if "MIN" in returns:
                parts.append(b"MIN %d" % min(numbers))
            if "MAX" in returns:
                parts.append(b"MAX %d" % max(numbers))
            if "ALL" in returns:
                parts.append(b"ALL " + set_text(numbers).encode("ascii"))
        if "COUNT" in returns:
            parts.append(b"COUNT %d" % len(numbers))
        if modseq_used and numbers:
            parts.append(b"MODSEQ %d" % modseq)
        session.untagged(untagged(b" ".join(parts)))
        return None
    line = b"SEARCH" + b"".join(b" %d" % n for n in numbers)
    if modseq_used and numbers:
        line += b" (MODSEQ %d)" % modseq  # RFC 7162 §3.1.5
    session.untagged(untagged(line))
    return None


HANDLERS = {"SEARCH": search}
