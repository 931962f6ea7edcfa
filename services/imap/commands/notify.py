"""NOTIFY (RFC 5465): the command, the delivery of notifications at any time (between commands,
after a command, during IDLE) and the wait for the client that lets them out."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

import grpc
from mailstack.v1 import mailstore_pb2 as pb

from ..notify import SUPPORTED_EVENTS, NotifySpec, NotifyState
from ..protocol import Command, Fetch, Notify, SequenceSet
from ..protocol.encoder import mailbox, untagged, untagged_status
from ..replies import ImapError, Reply, no
from ..session import State
from .common import mailbox_attributes
from .fetch import fetch
from .mailboxes import _status_line

if TYPE_CHECKING:
    from ..session import Session

log = logging.getLogger("mailstack.imap")

# RFC 5465 §3.1 (the STATUS indicator: MESSAGES UIDNEXT UIDVALIDITY, as in its example), §5.3 (UNSEEN)
STATUS_ITEMS = ("MESSAGES", "UIDNEXT", "UIDVALIDITY", "UNSEEN")


async def notify(session: Session, command: Command) -> Reply | None:
    # Command: RFC 5465 §3.1 (NOTIFY SET / NOTIFY NONE)
    args = command.args
    assert isinstance(args, Notify)
    if args.groups is None:
        session.notify = None
        return None
    unsupported = [e for g in args.groups for e in g.events if e not in SUPPORTED_EVENTS]
    if unsupported:
        # RFC 5465 §3.1: NO with the events the server does support
        raise no(f"{unsupported[0]} is not supported", "BADEVENT (" + " ".join(SUPPORTED_EVENTS) + ")")
    # the baseline is read once this account's events flow: a change after it is then told
    if await session.services.notifier.wait_live(session.account) and session.view is not None:
        session.mark_dirty()
    state = NotifyState(NotifySpec(args.groups))
    if state.spec.uses_subscriptions:
        state.subscribed = await _subscriptions(session)
    # The baseline the first hints are compared with; with STATUS it is sent (RFC 5465 §3.1).
    for name, line in await _statuses(session, state):
        state.last_status[name] = line
        if args.status:
            session.untagged(line)
    session.notify = state
    return None


async def _subscriptions(session: Session) -> set[str]:
    reply = await session.mailstore.list_mailboxes(subscribed_only=True)
    return {m.name for m in reply.mailboxes if m.subscribed}


def _items(session: Session) -> tuple[str, ...]:
    return (*STATUS_ITEMS, "HIGHESTMODSEQ") if session.condstore else STATUS_ITEMS


async def _statuses(session: Session, state: NotifyState) -> list[tuple[str, bytes]]:
    """The STATUS line of every watched mailbox but the selected one, from one call."""
    tree = await session.mailstore.list_mailboxes(with_status=True)
    selected = session.view.name if session.view is not None else None
    existing = [m for m in tree.mailboxes if not m.nonexistent and m.name != selected]
    watched = set(state.spec.watched((m.name for m in existing), state.subscribed))
    return [(m.name, _status_line(m.name, m.status, _items(session), session)) for m in existing if m.name in watched]


def due(session: Session) -> bool:
    """Whether notifications wait to go out."""
    state = session.notify
    if state is None:
        return False
    return state.has_pending or (session.dirty and session.view is not None and state.pushes_selected)


async def deliver(session: Session, allow_expunge: bool | None = None, waiting: bool = False) -> None:
    """Queue the notifications owed (RFC 5465 §5); the caller flushes. A mailstore failure keeps
    them owed for the next chance. `allow_expunge`: after a command, whether it allows EXPUNGE
    (not after a FETCH, STORE or SEARCH by sequence number, RFC 9051 §7.5.1; IDLE does); None
    between commands, where only the `selected` filter sends them (`selected-delayed` waits, §6.1).
    `waiting`: IDLE or between commands, where a change-log read shared with other sessions will do
    (Session.refresh)."""
    state = session.notify
    if state is None or session.state == State.LOGOUT:
        return
    if state.overflow:
        # RFC 5465 §5.8: then as if NOTIFY NONE
        session.untagged(untagged_status("OK", "too many changes: NOTIFY is off", "NOTIFICATIONOVERFLOW"))
        session.notify = None
        return
    try:
        await _deliver(session, state, allow_expunge, waiting)
    except grpc.RpcError as e:
        log.info("NOTIFY delivery failed", extra={"grpc_code": e.code().name})


async def _deliver(session: Session, state: NotifyState, allow_expunge: bool | None, waiting: bool) -> None:
    if state.subscriptions_stale:
        state.subscriptions_stale = False
        state.subscribed = await _subscriptions(session)
    if session.dirty and session.view is not None and state.pushes_selected:
        await _selected(session, state, allow_expunge, waiting)
    if state.list_due:
        await _lists(session, state)
    if state.resync:
        state.resync = False
        state.status_due.clear()
        for name, line in await _statuses(session, state):
            _status(session, state, name, line)
    state.status_due.discard(session.view.name if session.view is not None else "")
    for name in sorted(state.status_due):
        try:
            reply = await session.mailstore.status(name)
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.NOT_FOUND:
                raise
            state.last_status.pop(name, None)  # deleted: MailboxName tells it, if asked
        else:
            _status(session, state, name, _status_line(name, reply, _items(session), session))
        state.status_due.discard(name)


def _status(session: Session, state: NotifyState, name: str, line: bytes) -> None:
    if state.last_status.get(name) != line:  # a hint may be this session's own or a duplicate
        state.last_status[name] = line
        session.untagged(line)


async def _lists(session: Session, state: NotifyState) -> None:
    """RFC 5465 §5.4 MailboxName, §5.5 SubscriptionChange: each name's LIST response as it is now
    (\\NonExistent once deleted). A name gone whose UIDVALIDITY another mailbox now has was
    renamed to it: one LIST of the new name with OLDNAME (the hints of a RENAME carry it)."""
    due = dict(state.list_due)
    found: dict[str, pb.Mailbox | None] = {}
    for name in due:
        reply = await session.mailstore.list_mailboxes(name)
        found[name] = next((m for m in reply.mailboxes if m.name == name), None)
    renamed = await _renames(session, {n: due[n] for n, m in found.items() if m is None and due[n]}, found)
    subscribed = any("SubscriptionChange" in g.events for g in state.spec.groups)
    for name in sorted(set(due) | set(renamed)):
        state.list_due.pop(name, None)
        if found[name] is None and name in renamed.values():
            continue  # told by the new name's OLDNAME
        attributes = _list_attributes(state, name, found[name], subscribed)
        if state.last_list.get(name) == attributes and name not in renamed:
            continue  # a repeated hint, or the second hint of a RENAME told already
        state.last_list[name] = attributes
        line = b"LIST " + attributes + b' "/" ' + mailbox(name, session.utf8)
        if name in renamed:
            line += b' ("OLDNAME" (' + mailbox(renamed[name], session.utf8) + b"))"  # RFC 5465 §5.4
        session.untagged(untagged(line))


async def _renames(session: Session, gone: dict[str, int], found: dict[str, pb.Mailbox | None]) -> dict[str, str]:
    """New name -> old name for the names gone whose UIDVALIDITY a mailbox has now (adds it to found)."""
    if not gone:
        return {}
    tree = await session.mailstore.list_mailboxes()
    holders = {m.uidvalidity: m for m in tree.mailboxes if not m.nonexistent and m.uidvalidity}
    renamed: dict[str, str] = {}
    for old, uidvalidity in gone.items():
        holder = holders.get(uidvalidity)
        if holder is not None:
            renamed[holder.name] = old
            found[holder.name] = holder
    return renamed


def _list_attributes(state: NotifyState, name: str, item: pb.Mailbox | None, subscribed: bool) -> bytes:
    if item is not None:
        return mailbox_attributes(item, subscribed)
    if subscribed and name in state.subscribed:
        return b"(\\NonExistent \\Subscribed)"
    return b"(\\NonExistent)"


async def _selected(session: Session, state: NotifyState, allow_expunge: bool | None, waiting: bool) -> None:
    """The selected mailbox's updates, unsolicited (RFC 5465 §5.1-§5.3), with MessageNew's fetch
    attributes for the new messages."""
    view, group = session.view, state.spec.selected
    assert view is not None and group is not None
    last = view.uids[-1] if view.uids else 0
    expunge = group.filter == "SELECTED" if allow_expunge is None else allow_expunge
    await session.pending_updates(True, expunge, waiting)
    new = [uid for uid in view.uids if uid > last]
    if group.fetch and new:
        items = Fetch(SequenceSet(((new[0], new[-1]),)), group.fetch)
        with contextlib.suppress(ImapError):  # a message gone meanwhile: its FETCH is skipped
            await fetch(session, Command("*", "FETCH", items, uid=True))


async def wait_for_client(session: Session, wait: float) -> None:
    """Read more of the client's next command (as conn.read_more), sending notifications as they
    come meanwhile. Raises TimeoutError after `wait` seconds without the command."""
    read = asyncio.ensure_future(session.conn.read_more(wait))
    try:
        while True:
            if due(session):
                session.waiting = False  # a shutdown waits for the notifications to go out
                await deliver(session, waiting=True)
                await session.flush()
                session.waiting = True
            if session.notify is None:
                await read
                return
            wake = asyncio.ensure_future(session.wake.wait())
            try:
                done, _ = await asyncio.wait(
                    {read, wake}, timeout=session.settings.imap_poll_interval, return_when="FIRST_COMPLETED"
                )
            finally:
                wake.cancel()
            if read in done:
                read.result()
                return
            session.wake.clear()
            if not done and session.view is not None and session.notify.pushes_selected:
                session.mark_dirty()  # a catch-up poll, as IDLE does
    finally:
        if not read.done():
            read.cancel()
            with contextlib.suppress(BaseException):
                await read
