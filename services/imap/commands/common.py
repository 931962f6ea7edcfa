"""Small helpers shared by the command handlers."""

from __future__ import annotations

from collections.abc import Iterable

from mailstack.v1 import mailstore_pb2 as pb

from ..errors import bad, no
from ..mailbox_view import MailboxView
from ..protocol import Command, SequenceSet

# RFC 6154 §2 special-use attributes <-> the mailstore's enum
SPECIAL_USE_ATTRIBUTES = {
    pb.SPECIAL_USE_SENT: "\\Sent",
    pb.SPECIAL_USE_DRAFTS: "\\Drafts",
    pb.SPECIAL_USE_TRASH: "\\Trash",
    pb.SPECIAL_USE_JUNK: "\\Junk",
    pb.SPECIAL_USE_ARCHIVE: "\\Archive",
    pb.SPECIAL_USE_ALL: "\\All",
    pb.SPECIAL_USE_FLAGGED: "\\Flagged",
}
SPECIAL_USE_BY_NAME = {v.lower(): k for k, v in SPECIAL_USE_ATTRIBUTES.items()}


def ranges_of(uids: Iterable[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for uid in sorted(set(uids)):
        if out and uid == out[-1][1] + 1:
            out[-1] = (out[-1][0], uid)
        else:
            out.append((uid, uid))
    return out


def uid_set(uids: Iterable[int]) -> pb.UidSet:
    return pb.UidSet(ranges=[pb.UidRange(first=a, last=b) for a, b in ranges_of(uids)])


def set_text(numbers: Iterable[int]) -> str:
    """A sequence-set string "1:3,7" (COPYUID, APPENDUID, ESEARCH ALL)."""
    return ",".join(str(a) if a == b else f"{a}:{b}" for a, b in ranges_of(numbers))


def selected_view(view: MailboxView | None) -> MailboxView:
    if view is None:
        raise bad("no mailbox selected")
    return view


def resolve(view: MailboxView, command: Command, sequence_set: SequenceSet) -> list[tuple[int, int]]:
    """(seq, uid) pairs of a command's set; `$` (RFC 5182) is not offered."""
    if sequence_set.saved:
        raise bad("$ (SEARCHRES) is not supported")
    if not command.uid and view.exists == 0 and sequence_set.items:
        raise bad("no messages in the mailbox")  # RFC 9051 §6.4.4: a sequence number must exist
    return view.resolve(sequence_set, command.uid)


def writable(view: MailboxView) -> None:
    if view.readonly:
        raise no("mailbox is read-only (EXAMINE)", "READ-ONLY")
