"""SELECT, EXAMINE, CLOSE, UNSELECT, EXPUNGE (and UID EXPUNGE)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..mailbox_view import MailboxView
from ..protocol import Command, QresyncParameters, Select, SequenceArgument
from ..protocol.encoder import mailbox, untagged, untagged_status
from ..replies import Reply, bad, no
from .common import mailbox_attributes, report_vanished, resolve, selected_view, writable
from .mailboxes import mailbox_id

if TYPE_CHECKING:
    from ..session import Session


async def open_view(session: Session, name: str, readonly: bool) -> MailboxView:
    """Read a mailbox's messages into a new view, in one call: the changes since the process's index
    of it (mailbox_index.py), or the whole listing. The MODSEQ is taken before either, so anything
    that changes meanwhile is read again from the change log (at least once)."""
    status, messages = await session.services.index.read(session.mailstore, session.account, name)
    view = MailboxView(name, readonly, status.uidvalidity, status.uidnext, status.highestmodseq, messages)
    view.mailbox_id = status.mailbox_id
    view.modseq = status.highestmodseq
    view.no_recent = session.rev2
    if readonly and status.recent and not session.rev2:
        # RFC 3501 §6.3.2: EXAMINE shows \Recent (the messages at or above the mailbox's floor: the
        # last ones) but claims nothing, so a later SELECT still gets them
        view.recent = set(view.uids[max(0, len(view.uids) - status.recent) :])
    elif not readonly and status.recent and not session.rev2:
        # RFC 3501 §2.3.2: this session is the first to see these (exactly one session gets \Recent).
        # Nothing unclaimed (the usual re-SELECT): no claim, which is a write.
        first, uidnext = await session.mailstore.claim_recent(name)
        view.recent = {u for u in view.uids if first <= u < uidnext}
    return view


async def select(session: Session, command: Command) -> Reply | None:
    # Command: RFC 3501 §6.3.1 / §6.3.2 (EXAMINE); CONDSTORE parameter RFC 7162 §3.1.8
    args = command.args
    assert isinstance(args, Select)
    readonly = command.name == "EXAMINE"
    if args.qresync is not None and not session.qresync:
        raise bad("QRESYNC parameter without ENABLE QRESYNC")  # RFC 7162 §3.2.5
    if session.view is not None and (session.qresync or session.rev2):
        # RFC 7162 §3.2.11; RFC 9051 §6.3.2: also before a SELECT that fails
        session.untagged(untagged_status("OK", "previous mailbox closed", "CLOSED"))
    session.select(None)  # RFC 9051 §6.3.2: a failed SELECT leaves no mailbox selected
    if command.invalid_mailbox:
        raise no(command.invalid_mailbox, "CANNOT")  # fits the grammar, names no mailbox: not BAD
    if args.condstore:
        session.condstore = True
    session.opening(args.mailbox)
    view = await open_view(session, args.mailbox, readonly)
    for line in view.flags_announcement():
        session.untagged(line)
    session.untagged(untagged(b"%d EXISTS" % view.exists))
    if session.rev2:
        await _list_response(session, args.mailbox)  # RFC 9051 §6.3.2: no RECENT, no UNSEEN; a LIST
    else:
        _rev1_responses(session, view)
    session.untagged(untagged_status("OK", "UIDs valid", f"UIDVALIDITY {view.uidvalidity}"))
    session.untagged(untagged_status("OK", "predicted next UID", f"UIDNEXT {view.uidnext}"))
    session.untagged(untagged_status("OK", "highest", f"HIGHESTMODSEQ {view.modseq}"))
    session.untagged(untagged_status("OK", "mailbox id", f"MAILBOXID ({mailbox_id(view.mailbox_id)})"))  # RFC 8474 §4.3
    if args.qresync is not None and args.qresync.uidvalidity == view.uidvalidity:
        await _resync(session, view, args.qresync)
    session.select(view)
    return Reply("OK", f"{command.name} completed", "READ-ONLY" if readonly else "READ-WRITE")


def _rev1_responses(session: Session, view: MailboxView) -> None:
    """RECENT and UNSEEN (RFC 3501 §6.3.1), which RFC 9051 Appendix E removed."""
    session.untagged(untagged(b"%d RECENT" % len(view.recent)))
    first_unseen = next((seq for seq, uid in enumerate(view.uids, 1) if "\\Seen" not in view.flags[uid]), 0)
    if first_unseen:
        session.untagged(untagged_status("OK", "first unseen", f"UNSEEN {first_unseen}"))


async def _list_response(session: Session, name: str) -> None:
    """RFC 9051 §6.3.2: the mailbox's LIST response, with accurate attributes."""
    reply = await session.mailstore.list_mailboxes(name)
    for item in reply.mailboxes:
        if item.name == name:
            attributes = mailbox_attributes(item)
            session.untagged(untagged(b"LIST " + attributes + b' "/" ' + mailbox(name, session.utf8)))


async def _resync(session: Session, view: MailboxView, params: QresyncParameters) -> None:
    """RFC 7162 §3.2.5.2: what changed since the client's MODSEQ: VANISHED (EARLIER) for the UIDs
    expunged (only those it names in known-uids, when it does), then FLAGS and MODSEQ of each
    message changed or added. The change log is whole, so seq-match data is not needed."""
    await report_vanished(session, view, params.modseq, params.known_uids)
    for seq, uid in enumerate(view.uids, 1):
        if view.modseqs.get(uid, 0) > params.modseq:
            session.untagged(view.flags_response(seq, uid, with_modseq=True))


async def close(session: Session, command: Command) -> Reply | None:
    # Command: RFC 9051 §6.4.1: expunge silently (not when read-only), then unselect
    view = selected_view(session.view)
    if not view.readonly:
        await session.mailstore.expunge(view.name)
    session.select(None)
    return None


async def unselect(session: Session, command: Command) -> Reply | None:
    # Command: RFC 3691 §2
    selected_view(session.view)
    session.select(None)
    return None


async def expunge(session: Session, command: Command) -> Reply | None:
    # Command: RFC 9051 §6.4.3; UID EXPUNGE RFC 4315 §2.1 (only \Deleted messages of the set)
    view = selected_view(session.view)
    writable(view)
    targets: list[int] | None = None  # all \Deleted messages
    if command.uid:
        assert isinstance(command.args, SequenceArgument)
        targets = [uid for _, uid in resolve(view, command, command.args.sequence_set)]
        if not targets:
            return None
    expunged = await session.mailstore.expunge(view.name, targets)
    for line in session.contexts.forget(view, expunged) + view.expunge_responses(expunged, session.qresync):
        session.untagged(line)
    return None
