"""One IMAP connection's session: the state machine (RFC 9051 §3, RFC 3501 §3), command dispatch
and the untagged updates owed to the client (RFC 9051 §7.5.1).

The server reads and writes; the session decides. The command loop (command_loop.py) dispatches
through the command registry (registry.py); the handlers live in commands/, one module per family.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from dataclasses import dataclass, field
from typing import Protocol

import grpc
from mailstack.services.common.auth_log import AuthResult, new_session_id, session_auth_event
from mailstack.services.common.config import Settings
from mailstack.services.common.read_ahead import ReadAhead, ReadAheadBudget
from mailstack.services.common.span_attributes import Attributes
from mailstack.storage.events.base import ChangeEvent
from mailstack.v1 import mailstore_pb2_grpc as pbg

from .contexts import UpdateContexts
from .limits import CommandRate, ConnectionLimits
from .mailbox_index import MailboxIndex
from .mailbox_view import Change, MailboxView
from .mailstore import ImapMailstore, MetadataWanted
from .notifier import Notifier
from .notify import NotifyState
from .protocol import CommandReceiver
from .protocol.encoder import Buffer
from .replies import ClientGone, EndSession
from .shared_reads import SharedReads, tick

log = logging.getLogger("mailstack.imap")

MAX_HINTS = 64  # change events remembered for one refresh decision


class State(enum.Enum):
    NOT_AUTHENTICATED = "not authenticated"
    AUTHENTICATED = "authenticated"
    SELECTED = "selected"
    LOGOUT = "logout"


__all__ = ["ClientGone", "Connection", "EndSession", "Services", "Session", "State"]


class Connection(Protocol):
    receiver: CommandReceiver

    @property
    def tls(self) -> bool: ...
    @property
    def can_start_tls(self) -> bool: ...
    @property
    def remote_ip(self) -> str: ...
    @property
    def local_ip(self) -> str: ...
    def span_attributes(self, user: str) -> Attributes: ...
    async def send(self, buffers: list[Buffer]) -> None:
        """Write the buffers in order, as they are (writelines: a body literal is not copied)."""

    async def read_more(self, wait: float | None) -> None: ...
    async def start_tls(self, ready: bytes) -> None: ...
    @property
    def compressing(self) -> bool: ...
    def start_compression(self) -> None:
        """RFC 4978: compress both ways from the next octet on."""

    def awaiting_literal(self) -> None:
        """A synchronizing literal's continuation went out: acknowledge its octets at once."""


@dataclass
class Services:
    """What every session of one server shares."""

    settings: Settings
    stub: pbg.MailstoreAsyncStub
    notifier: Notifier
    limits: ConnectionLimits
    stopping: bool = False
    sessions: set[Session] = field(default_factory=set)
    # bytes all sessions hold fetched ahead of FETCH BODY[] (commands/fetch.py)
    read_ahead: ReadAheadBudget = field(default_factory=lambda: ReadAheadBudget(0))
    # each mailbox's UIDs, flags and MODSEQs as last selected here (mailbox_index.py, ADR 0041)
    index: MailboxIndex = field(default_factory=lambda: MailboxIndex(0))
    reads: SharedReads = field(default_factory=SharedReads)  # one change-log read per event, not per session


class Session:
    def __init__(self, services: Services, conn: Connection) -> None:
        self.services = services
        self.settings = services.settings
        self.stub = services.stub
        self.conn = conn
        self.state = State.NOT_AUTHENTICATED
        self.account = ""
        self.logged_in_at = 0.0  # unix time, for `mailstack who`
        self.kicked = False  # `mailstack kick` ended it: the goodbye says so
        self.view: MailboxView | None = None
        self.condstore = False  # RFC 7162 §3.1: enabled by ENABLE or a CONDSTORE-aware command
        self.qresync = False  # RFC 7162 §3.2.3: ENABLE QRESYNC (expunges then go out as VANISHED)
        self.utf8 = False  # RFC 6855 §3: ENABLE UTF8=ACCEPT (UTF-8 mailbox names and strings)
        self.rev2 = False  # RFC 9051 §6.3.1: ENABLE IMAP4rev2 (rev2 rules: no \Recent, ESEARCH answers)
        self.notify: NotifyState | None = None  # RFC 5465: what NOTIFY SET asked for
        self.dirty = False  # a hint said the selected mailbox changed
        # The hints behind `dirty` when they are all flag/new events (None: another reason, or too
        # many): if the view already holds each of them (this session's own STORE), no refresh.
        self._hints: list[ChangeEvent] | None = None
        self._opening: str | None = None  # the mailbox SELECT is reading; its hints count already
        self._hinted = 0  # the tick of the latest hint: a shared read sent before it is too old
        self.wake = asyncio.Event()  # set with dirty; IDLE waits on it
        self.auth_failures = 0
        self.session_id = new_session_id()  # in the login and logout log lines
        self.auth_method = ""  # LOGIN or PLAIN, once logged in
        self.waiting = False  # between commands: safe to interrupt for shutdown
        self.rate = CommandRate(self.settings.imap_commands_per_second)
        self._last_refresh = time.monotonic()
        self._out: list[Buffer] = []  # what goes out at the next flush, in order, never joined
        # Whole bodies of the next messages, fetched when a client downloads one message after
        # another (commands/fetch.py); of the selected mailbox only (select() drops them).
        self.ahead = ReadAhead(services.read_ahead, "imap read-ahead")
        self.last_body_uid = 0  # the UID of the last lone FETCH BODY[] in this mailbox
        self.contexts = UpdateContexts()  # RFC 5267 §4.3: SEARCH/SORT RETURN (UPDATE) kept live

    @property
    def mailstore(self) -> ImapMailstore:
        """The mailstore as this session's account sees it (handlers call it, never the stub)."""
        return ImapMailstore(self.stub, self.account)

    # ---- output

    def untagged(self, data: bytes) -> None:
        """Queue a complete response line (or several); sent before the command's completion."""
        self._out.append(data)

    def untagged_buffers(self, buffers: list[Buffer]) -> None:
        """Queue a response made of several buffers (a FETCH response with its literals): they go
        to the connection as they are, so a body is never copied here."""
        self._out += buffers

    @property
    def has_output(self) -> bool:
        return bool(self._out)

    async def flush(self) -> None:
        if self._out:
            out, self._out = self._out, []
            await self.conn.send(out)

    async def send(self, data: bytes) -> None:
        self._out.append(data)
        await self.flush()

    # ---- the command loop

    @property
    def read_timeout(self) -> float:
        if self.state == State.NOT_AUTHENTICATED:
            return float(self.settings.imap_preauth_timeout)
        return float(self.settings.imap_autologout)  # RFC 9051 §5.4: at least 30 minutes

    # ---- changes of the selected mailbox

    def on_event(self, event: ChangeEvent) -> None:
        """A hint from the notifier (never blocks): remember it, wake an IDLE (or a NOTIFY wait)."""
        if self.notify is not None and self.notify.hint(event, self.view.name if self.view else None):
            self.wake.set()
        if (
            event.kind == "resync"
            or (self.view is not None and event.mailbox == self.view.name)
            or (self._opening is not None and event.mailbox == self._opening)
        ):
            if self.view is not None and self.view.holds(event.kind, event.uids, event.modseq):
                return  # this session's own change, already applied
            if not self.dirty:
                self._hints = []
            if self._hints is not None and event.kind in ("flags", "new", "expunge") and len(self._hints) < MAX_HINTS:
                self._hints.append(event)
            else:
                self._hints = None
            self.dirty = True
            self._hinted = tick()
            self.wake.set()

    def mark_dirty(self) -> None:
        """The selected mailbox changed in a way only the change log tells: refresh at the next point."""
        self.dirty = True
        self._hints = None
        self._hinted = tick()

    async def refresh(self, shared: bool = False) -> bool:
        """Read the change log since the view's MODSEQ (RFC 7162 §3.2.5.2 style catch-up); False when
        the read failed (the view may be behind; the next opportunity tries again).

        `shared`: waiting for news (IDLE, NOTIFY between commands), a read sent after the latest
        hint will do, another session's too. After a command, only a read sent from now on: one
        sent after a hint but before this session's own write (an EXPUNGE, a STORE) would not show
        that write, and the session would miss what its own command did."""
        view = self.view
        if view is None:
            return False
        hinted = self._hinted if self.dirty and shared else tick()
        self.dirty = False
        self._hints = None
        self.wake.clear()
        self._last_refresh = time.monotonic()
        try:
            reply = await self.services.reads.changes(self.mailstore, view.name, view.modseq, hinted)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                raise EndSession("the selected mailbox was deleted") from None
            self.mark_dirty()  # try again at the next opportunity
            return False
        if reply.uidvalidity != view.uidvalidity:
            raise EndSession("the selected mailbox was replaced (UIDVALIDITY changed)")
        changes = reply.changes
        if reply.pruned_modseq > view.modseq:  # the log lost expunges since this view: list what is left
            changes = changes + await self._gone_from_listing(view, reply.highestmodseq)
        new = view.apply(changes, reply.highestmodseq)
        if new and not view.readonly and not view.no_recent:
            # RFC 3501 §2.3.2: \Recent in exactly one session: whoever claims first
            try:
                recent = await self.services.reads.claim_recent(self.mailstore, view.name, view.uidvalidity, new)
            except grpc.RpcError as e:
                # A write, never retried (ADR 0035): its replica died under it. The new messages are
                # announced anyway, without \Recent here (advisory); failing the NOOP or IDLE that
                # asked for news would tell the client less, not more.
                log.info("\\Recent not claimed for %s: %s", view.name, e.code())
                return True
            view.recent.update(recent)
        return True

    async def _gone_from_listing(self, view: MailboxView, modseq: int) -> list[Change]:
        """Expunges of the view's messages told by a listing of their UID range (a session idle for
        longer than change_log_days; in practice sessions refresh every few minutes)."""
        if not view.uids:
            return []
        present: set[int] = set()
        listing = self.mailstore.listing(view.name, MetadataWanted(), span=(view.uids[0], view.uids[-1]))
        async for batch in listing:
            present.update(m.uid for m in batch.messages)
        return [Change(uid, modseq, "expunge", ()) for uid in view.uids if uid not in present]

    async def pending_updates(
        self, always_refresh: bool = True, allow_expunge: bool = True, waiting: bool = False
    ) -> None:
        """Send the untagged updates owed after a command (RFC 9051 §7.5.1). `always_refresh`: read
        the change log even without a hint (NOOP, CHECK, IDLE: the client asks for news);
        `allow_expunge`: False while a FETCH/STORE/SEARCH by sequence number runs; `waiting`: IDLE
        or NOTIFY between commands, where a read shared with other sessions will do (refresh)."""
        view = self.view
        if view is None:
            return
        hints = self._hints
        if self.dirty and hints and not always_refresh:
            if all(view.holds(e.kind, e.uids, e.modseq) for e in hints):
                self.dirty = False  # only this session's own changes, applied since they arrived
                self._hints = None
        if self.dirty or always_refresh:
            await self.refresh(shared=waiting)
        # RFC 5267 §4.3: context updates only where EXPUNGE may go (REMOVEFROM must precede it)
        contexts = self.contexts if allow_expunge else None
        for line in await contexts.removals(self.mailstore, view) if contexts else []:
            self.untagged(line)
        for line in view.updates(allow_expunge, self.condstore, self.qresync):
            self.untagged(line)
        for line in contexts.additions(view) if contexts else []:
            self.untagged(line)

    def poll_due(self) -> bool:
        return time.monotonic() - self._last_refresh >= self.settings.imap_poll_interval

    # ---- helpers for handlers

    def enable_condstore(self) -> None:
        """A CONDSTORE-enabling command (RFC 7162 §3.1): the first one while a mailbox is selected
        tells its HIGHESTMODSEQ in an untagged OK (SELECT sent it before CONDSTORE was on)."""
        if self.condstore:
            return
        self.condstore = True
        if self.view is not None:
            highest = max(self.view.modseq, max(self.view.modseqs.values(), default=0))
            self.untagged(b"* OK [HIGHESTMODSEQ %d] Highest\r\n" % highest)

    def select(self, view: MailboxView | None) -> None:
        self.view = view
        self.contexts.clear()  # RFC 5267 §4.3: updates end when the mailbox is no longer selected
        self.ahead.drop()
        self.last_body_uid = 0
        self.state = State.SELECTED if view is not None else State.AUTHENTICATED
        # A hint that came while the view was read may postdate the listing: refresh for it.
        self.dirty = view is not None and view.name == self._opening and self.dirty
        self._hints = None
        self._opening = None
        self.wake.clear()

    def opening(self, name: str) -> None:
        """SELECT starts reading `name`: from now on its change events mark the session dirty, so a
        change after the status read is either in the listing or refreshed for (not lost)."""
        self.dirty = False
        self._opening = name

    def logged_in(self, account: str) -> None:
        self.account = account
        self.logged_in_at = time.time()
        self.state = State.AUTHENTICATED
        self.conn.receiver.max_literal = self.settings.max_message_size  # was PREAUTH_MAX_LITERAL
        self.services.notifier.add(account, self.on_event)

    def auth_event(self, result: AuthResult, user: str, method: str) -> None:
        session_auth_event(result, "imap", self.conn, self.session_id, user, method)

    def close(self) -> None:
        self.ahead.drop()
        if self.account:
            self.auth_event("logout", self.account, self.auth_method)
            self.services.notifier.remove(self.account, self.on_event)
            self.services.limits.logout(self.account)
            self.account = ""
