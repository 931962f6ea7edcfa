"""SEARCH and UID SEARCH (RFC 9051 §6.4.4, RFC 3501 §6.4.4; ESEARCH RFC 4731; MODSEQ RFC 7162 §3.1.5).
The key tree is translated for the mailstore; sequence numbers and \\Recent are this session's."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..contexts import UpdateContext, partial_item
from ..mailbox_view import MailboxView
from ..protocol import Command, Search
from ..protocol.encoder import quoted, set_text, untagged
from ..replies import Reply, bad, no
from ..search_keys import MAX_WIRE_DEPTH, translate, uses_recent
from .common import selected_view

if TYPE_CHECKING:
    from ..session import Session

__all__ = ["MAX_WIRE_DEPTH", "search"]

CHARSETS = {"UTF-8", "US-ASCII"}


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
    session.contexts.check_tag(command.tag, args.returns)
    if args.charset is not None and args.charset.upper() not in CHARSETS:
        raise no("unsupported charset", "BADCHARSET (UTF-8 US-ASCII)")
    if session.rev2 and uses_recent(args.key):
        raise bad("RECENT, NEW and OLD are not IMAP4rev2 search keys")  # RFC 9051 Appendix E
    key, modseq_used = translate(args.key, view)
    if modseq_used:
        session.enable_condstore()
    found = await session.mailstore.search(view.name, key)
    # Only messages the client knows, numbered as it knows them.
    hits = [(seq, uid) for uid in found if (seq := view.seq_of(uid)) is not None]
    numbers = [uid if command.uid else seq for seq, uid in hits]
    returns = args.returns if args.returns is not None or not session.rev2 else ()
    if returns is not None:  # RFC 9051 §6.4.4: a rev2 session's SEARCH is RETURN (ALL)
        if "UPDATE" in returns:  # RFC 5267 §4.3
            context = UpdateContext(command.tag, command.uid, args.key, None, [u for _, u in hits])
            for refusal in session.contexts.start(context, view):
                session.untagged(refusal)
        line = _esearch(view, command, returns, hits, modseq_used, args.partial)
        if line:
            session.untagged(line)
        return None
    line = b"SEARCH" + b"".join(b" %d" % n for n in numbers)
    if modseq_used and numbers:
        line += b" (MODSEQ %d)" % _highest(view, hits)  # RFC 7162 §3.1.5
    session.untagged(untagged(line))
    return None


def _save(view: MailboxView, returns: set[str], hits: list[tuple[int, int]]) -> None:
    """RFC 5182 §2.4: with MIN and/or MAX and neither ALL nor COUNT only those are kept, else the
    whole result; UIDs, so that `$` survives expunges and works in UID and non-UID commands alike."""
    if {"ALL", "COUNT"} & returns or not {"MIN", "MAX"} & returns:
        view.saved = [uid for _, uid in hits]
        return
    extremes = [f(hits) for f, name in ((min, "MIN"), (max, "MAX")) if name in returns and hits]
    view.saved = [uid for _, uid in extremes]


def _esearch(
    view: MailboxView,
    command: Command,
    wanted: tuple[str, ...],
    hits: list[tuple[int, int]],
    with_modseq: bool,
    partial: tuple[int, int] | None = None,
) -> bytes | None:
    """The ESEARCH response (RFC 4731 §3.1), None for SAVE alone (RFC 5182 §2.4)."""
    returns = (set(wanted) or {"ALL"}) - {"CONTEXT", "UPDATE"}  # RFC 5267 §4.2-4.3: no data of their own
    if "SAVE" in returns:
        _save(view, returns, hits)
        returns.discard("SAVE")
        if not returns:
            return None
    numbers = [uid if command.uid else seq for seq, uid in hits]
    parts = [b"ESEARCH (TAG " + quoted(command.tag) + b")"]
    if command.uid:
        parts.append(b"UID")
    if numbers:
        parts += _extremes(numbers, returns)
    if "COUNT" in returns:
        parts.append(b"COUNT %d" % len(numbers))
    if partial is not None:  # RFC 5267 §4.4, in mailbox order
        parts.append(partial_item(partial, [b"%d" % n for n in numbers], ordered=False))
    if with_modseq and numbers:
        # RFC 4731 §3.2: with MIN and/or MAX alone, the highest MODSEQ of the messages returned
        returned = hits
        if partial is None and not returns & {"ALL", "COUNT"}:
            returned = [f(hits) for f, name in ((min, "MIN"), (max, "MAX")) if name in returns]
        parts.append(b"MODSEQ %d" % _highest(view, returned))
    return untagged(b" ".join(parts))


def _highest(view: MailboxView, hits: list[tuple[int, int]]) -> int:
    return max((view.modseqs.get(uid, 0) for _, uid in hits), default=0)


def _extremes(numbers: list[int], returns: set[str]) -> list[bytes]:
    parts = []
    if "MIN" in returns:
        parts.append(b"MIN %d" % min(numbers))
    if "MAX" in returns:
        parts.append(b"MAX %d" % max(numbers))
    if "ALL" in returns:
        parts.append(b"ALL " + set_text(numbers).encode("ascii"))
    return parts
