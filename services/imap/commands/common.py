"""Small helpers shared by the command handlers."""

from __future__ import annotations

import bisect
from typing import TYPE_CHECKING

from ..mailbox_view import MailboxView
from ..mailstore import SPECIAL_USE_ATTRIBUTES
from ..protocol import Command, SequenceSet
from ..protocol.encoder import ranges_of, ranges_text, set_text
from ..replies import bad, no

if TYPE_CHECKING:
    from mailstack.v1 import mailstore_pb2 as pb

    from ..session import Session


def selected_view(view: MailboxView | None) -> MailboxView:
    if view is None:
        raise bad("no mailbox selected")
    return view


def resolve(view: MailboxView, command: Command, sequence_set: SequenceSet) -> list[tuple[int, int]]:
    """(seq, uid) pairs of a command's set; `$` is the saved search result (RFC 5182)."""
    if not command.uid and sequence_set.items:
        # RFC 9051 §9 (seq-number): a number beyond the mailbox, or `*` in an empty one, is BAD (as
        # Dovecot answers); UID sets are not checked (RFC 9051 §6.4.9: UIDs beyond are no error)
        if view.exists == 0:
            raise bad("no messages in the mailbox")
        if any(n is not None and n > view.exists for pair in sequence_set.items for n in pair):
            raise bad(f"message sequence number beyond the last message ({view.exists})")
    return view.resolve(sequence_set, command.uid)


def writable(view: MailboxView) -> None:
    if view.readonly:
        raise no("mailbox is read-only (EXAMINE)", "READ-ONLY")


async def report_vanished(session: Session, view: MailboxView, modseq: int, within: SequenceSet | None) -> None:
    """`* VANISHED (EARLIER) uids` for the UIDs (of `within`, when given) expunged after `modseq`
    (RFC 7162 §3.2.5.2, §3.2.6), from the mailstore's change log. If the log was pruned past
    `modseq`, every UID of the range that is not in the mailbox (the RFC allows naming UIDs that
    never existed)."""
    reply = await session.mailstore.changes(view.name, modseq)
    if within is None:
        ranges = [(1, view.uidnext - 1)]
    else:  # `$` (RFC 5182) is the saved UIDs
        ranges = ranges_of(view.saved) if within.saved else within.ranges(view.uidnext - 1)
    if reply.pruned_modseq > modseq:
        text = ranges_text(gaps(ranges, view.uids))
    else:
        gone = reply.expunged()
        text = set_text(uid for uid in gone if any(low <= uid <= high for low, high in ranges))
    if text:
        session.untagged(b"* VANISHED (EARLIER) %s\r\n" % text.encode("ascii"))


def gaps(ranges: list[tuple[int, int]], present: list[int]) -> list[tuple[int, int]]:
    """The parts of sorted, merged `ranges` holding none of the sorted `present` numbers."""
    out: list[tuple[int, int]] = []
    i = 0
    for low, high in ranges:
        i = bisect.bisect_left(present, low, i)
        start = low
        while i < len(present) and present[i] <= high:
            if present[i] > start:
                out.append((start, present[i] - 1))
            start = present[i] + 1
            i += 1
        if start <= high:
            out.append((start, high))
    return out


def mailbox_attributes(item: pb.Mailbox, subscribed: bool = False) -> bytes:
    """A LIST response's attributes for one mailbox (RFC 9051 §7.3.1, RFC 5258 §3, RFC 6154 §2)."""
    attrs = ["\\NonExistent"] if item.nonexistent else []
    if item.has_children:
        attrs.append("\\HasChildren")
    elif not item.nonexistent:
        attrs.append("\\HasNoChildren")
    if SPECIAL_USE_ATTRIBUTES.get(item.special_use):
        attrs.append(SPECIAL_USE_ATTRIBUTES[item.special_use])
    if subscribed and item.subscribed:
        attrs.append("\\Subscribed")
    return ("(" + " ".join(attrs) + ")").encode("ascii")
