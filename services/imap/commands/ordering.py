"""SORT, THREAD and their UID forms (RFC 5256), SORT=DISPLAY (RFC 5957), ESORT (RFC 5267 §3).

The matching messages and what they are ordered by come in one Search call (envelope, dates, size,
References from the metadata; no body is read); the order is computed here (sorting.py, threads.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..contexts import UpdateContext, partial_item
from ..mailbox_view import MailboxView
from ..protocol import Command
from ..protocol.encoder import quoted, untagged
from ..protocol.ordering import CancelUpdate, Sort, Thread
from ..protocol.search import SearchKey
from ..replies import Reply, no
from ..search_keys import translate
from ..sorting import OrderedMessage, sort_messages
from ..threads import ordered_subject, references, thread_list
from .common import selected_view

if TYPE_CHECKING:
    from ..session import Session

CHARSETS = {"UTF-8", "US-ASCII"}
THREAD_ALGORITHMS = {"ORDEREDSUBJECT": ordered_subject, "REFERENCES": references}


async def _matching(
    session: Session, view: MailboxView, charset: str, key: SearchKey, references: bool = False
) -> tuple[list[OrderedMessage], bool]:
    """The messages the client knows that match `key`, with their sort data, in sequence order;
    and whether the key used MODSEQ (RFC 7162 §3.1.5)."""
    if charset not in CHARSETS:  # RFC 5256 §3: an unsupported charset is NO [BADCHARSET]
        raise no(f"unsupported charset {charset}", "BADCHARSET (UTF-8 US-ASCII)")
    wire_key, modseq_used = translate(key, view)
    if modseq_used:
        session.condstore = True
    found = await session.mailstore.sort_data(view.name, wire_key, references)
    messages = [OrderedMessage(seq, uid, data) for uid, data in found if (seq := view.seq_of(uid)) is not None]
    return messages, modseq_used


def _highest_modseq(view: MailboxView, messages: list[OrderedMessage]) -> int | None:
    # RFC 7162 §3.1.5: with MODSEQ in the criteria, the highest MODSEQ of the messages answered
    return max(view.modseqs.get(m.uid, 0) for m in messages) if messages else None


async def sort(session: Session, command: Command) -> Reply | None:
    # Command: RFC 5256 §3 SORT, RFC 5957 §3 DISPLAYFROM/DISPLAYTO, RFC 5267 §3 SORT RETURN
    view = selected_view(session.view)
    args = command.args
    assert isinstance(args, Sort)
    session.contexts.check_tag(command.tag, args.returns)
    messages, modseq_used = await _matching(session, view, args.charset, args.key)
    ordered = sort_messages(messages, args.criteria)
    numbers = [m.uid if command.uid else m.seq for m in ordered]
    if args.returns is None:
        modseq = _highest_modseq(view, ordered) if modseq_used else None
        tail = b" (MODSEQ %d)" % modseq if modseq is not None else b""
        session.untagged(untagged(b"SORT" + b"".join(b" %d" % n for n in numbers) + tail))
        return None
    if "UPDATE" in args.returns:  # RFC 5267 §4.3 (CONTEXT=SORT)
        context = UpdateContext(command.tag, command.uid, args.key, args.criteria, [m.uid for m in ordered])
        for line in session.contexts.start(context, view):
            session.untagged(line)
    modseq = _highest_modseq(view, ordered) if modseq_used else None
    session.untagged(_esort(command, args.returns, numbers, args.partial, modseq))
    return None


def _esort(
    command: Command,
    wanted: tuple[str, ...],
    numbers: list[int],
    partial: tuple[int, int] | None,
    modseq: int | None,
) -> bytes:
    """RFC 5267 §3: ESEARCH's answer with MIN/MAX the first/last in sort order and ALL in sort order
    (a comma list: a range would lose the order); PARTIAL (§4.4) a window of that order."""
    returns = (set(wanted) or {"ALL"}) - {"CONTEXT", "UPDATE"}
    parts = [b"ESEARCH (TAG " + quoted(command.tag) + b")"]
    if command.uid:
        parts.append(b"UID")
    if numbers and "MIN" in returns:
        parts.append(b"MIN %d" % numbers[0])
    if numbers and "MAX" in returns:
        parts.append(b"MAX %d" % numbers[-1])
    if numbers and "ALL" in returns:
        parts.append(b"ALL " + b",".join(b"%d" % n for n in numbers))
    if "COUNT" in returns:
        parts.append(b"COUNT %d" % len(numbers))
    if partial is not None:
        parts.append(partial_item(partial, [b"%d" % n for n in numbers], ordered=True))
    if modseq is not None:  # RFC 7162 §3.1.5, as ESEARCH has it (RFC 4731 §3.2)
        parts.append(b"MODSEQ %d" % modseq)
    return untagged(b" ".join(parts))


async def cancelupdate(session: Session, command: Command) -> Reply | None:
    # Command: RFC 5267 §4.3.5 CANCELUPDATE
    selected_view(session.view)
    args = command.args
    assert isinstance(args, CancelUpdate)
    unknown = session.contexts.cancel(args.tags)
    if unknown:
        raise no(f"no update context for tag {unknown[0]}")
    return None


async def thread(session: Session, command: Command) -> Reply | None:
    # Command: RFC 5256 §4 THREAD (algorithms §2.2 ORDEREDSUBJECT, §2.3 REFERENCES)
    view = selected_view(session.view)
    args = command.args
    assert isinstance(args, Thread)
    messages, _ = await _matching(session, view, args.charset, args.key, args.algorithm == "REFERENCES")
    roots = THREAD_ALGORITHMS[args.algorithm](messages)
    number = {m.seq: m.uid if command.uid else m.seq for m in messages}
    data = thread_list(roots, number)
    session.untagged(untagged(b"THREAD " + data if data else b"THREAD"))
    return None
