"""One IMAP connection's session: the state machine (RFC 9051 §3, RFC 3501 §3), command dispatch
and the untagged updates owed to the client (RFC 9051 §7.5.1).

The server reads and writes; the session decides. Which commands each state allows is data
(STATE_COMMANDS); the handlers live in commands/, one module per command family.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from dataclasses import dataclass, field
from typing import Protocol

import grpc
from mailstack.services.common.auth_log import AuthResult, auth_event, new_session_id
from mailstack.services.common.config import Settings
from mailstack.services.common.read_ahead import ReadAhead, ReadAheadBudget
from mailstack.storage.events.base import ChangeEvent
from mailstack.v1 import mailstore_pb2 as pb
from mailstack.v1 import mailstore_pb2_grpc as pbg

from . import telemetry
from .errors import ImapError, from_grpc
from .limits import CommandRate, ConnectionLimits
from .mailbox_view import Change, MailboxView
from .notifier import Notifier
from .protocol import Command, CommandReceiver, LiteralTooBig, NeedData, NeedLiteral, ParseError
from .protocol.encoder import continuation, tagged, untagged_status

log = logging.getLogger("mailstack.imap")

CALL_TIMEOUT = 60.0
MAX_HINTS = 64  # change events remembered for one refresh decision


class State(enum.Enum):
    NOT_AUTHENTICATED = "not authenticated"
    AUTHENTICATED = "authenticated"
    SELECTED = "selected"
    LOGOUT = "logout"


# RFC 9051 §6.1-6.4 (and the extensions' own sections): commands valid in each state.
ANY_STATE = frozenset({"CAPABILITY", "NOOP", "LOGOUT", "ID"})
STATE_COMMANDS: dict[State, frozenset[str]] = {
    State.NOT_AUTHENTICATED: ANY_STATE | {"STARTTLS", "AUTHENTICATE", "LOGIN"},
    State.AUTHENTICATED: ANY_STATE
    | {"SELECT", "EXAMINE", "CREATE", "DELETE", "RENAME", "SUBSCRIBE", "UNSUBSCRIBE", "LIST", "LSUB"}
    | {"STATUS", "APPEND", "NAMESPACE", "ENABLE", "IDLE", "GETQUOTA", "GETQUOTAROOT", "SETQUOTA"},
    State.LOGOUT: frozenset(),
}
STATE_COMMANDS[State.SELECTED] = STATE_COMMANDS[State.AUTHENTICATED] | {
    "CHECK",
    "CLOSE",
    "UNSELECT",
    "EXPUNGE",
    "SEARCH",
    "FETCH",
    "STORE",
    "COPY",
    "MOVE",
}
# RFC 9051 §7.5.1: no EXPUNGE while these run without UID (sequence numbers must stay put).
NO_EXPUNGE_DURING = frozenset({"FETCH", "STORE", "SEARCH"})
# Commands after which the change log is read even without a hint (the client asks for news).
# SELECT/EXAMINE are not among them: hints for the mailbox being opened are kept (see opening()).
ALWAYS_REFRESH = frozenset({"NOOP", "CHECK", "IDLE"})


class ClientGone(Exception):
    """The client closed the connection."""


class EndSession(Exception):
    """Close the connection after sending `* BYE text`."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


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
    async def send(self, data: bytes) -> None: ...
    async def read_more(self, wait: float | None) -> None: ...
    async def start_tls(self, ready: bytes) -> None: ...


@dataclass
class Reply:
    """The tagged completion of a command."""

    status: str = "OK"
    text: str = "completed"
    code: str | None = None


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


class Session:
    def __init__(self, services: Services, conn: Connection) -> None:
        self.services = services
        self.settings = services.settings
        self.stub = services.stub
        self.conn = conn
        self.state = State.NOT_AUTHENTICATED
        self.account = ""
        self.view: MailboxView | None = None
        self.condstore = False  # RFC 7162 §3.1: enabled by ENABLE or a CONDSTORE-aware command
        self.qresync = False  # RFC 7162 §3.2.3: ENABLE QRESYNC (expunges then go out as VANISHED)
        self.utf8 = False  # RFC 6855 §3: ENABLE UTF8=ACCEPT (UTF-8 mailbox names and strings)
        self.dirty = False  # a hint said the selected mailbox changed
        # The hints behind `dirty` when they are all flag/new events (None: another reason, or too
        # many): if the view already holds each of them (this session's own STORE), no refresh.
        self._hints: list[ChangeEvent] | None = None
        self._opening: str | None = None  # the mailbox SELECT is reading; its hints count already
        self.wake = asyncio.Event()  # set with dirty; IDLE waits on it
        self.auth_failures = 0
        self.session_id = new_session_id()  # in the login and logout log lines
        self.auth_method = ""  # LOGIN or PLAIN, once logged in
        self.waiting = False  # between commands: safe to interrupt for shutdown
        self._rate = CommandRate(self.settings.imap_commands_per_second)
        self._last_refresh = time.monotonic()
        self._out: list[bytes] = []
        # Whole bodies of the next messages, fetched when a client downloads one message after
        # another (commands/fetch.py); of the selected mailbox only (select() drops them).
        self.ahead = ReadAhead(services.read_ahead, "imap read-ahead")
        self.last_body_uid = 0  # the UID of the last lone FETCH BODY[] in this mailbox

    # ---- output

    def untagged(self, data: bytes) -> None:
        """Queue a complete response line (or several); sent before the command's completion."""
        self._out.append(data)

    async def flush(self) -> None:
        if self._out:
            data = b"".join(self._out)
            self._out.clear()
            await self.conn.send(data)

    async def send(self, data: bytes) -> None:
        self._out.append(data)
        await self.flush()

    # ---- the command loop

    @property
    def read_timeout(self) -> float:
        if self.state == State.NOT_AUTHENTICATED:
            return float(self.settings.imap_preauth_timeout)
        return float(self.settings.imap_autologout)  # RFC 9051 §5.4: at least 30 minutes

    async def run(self, greeting: bytes) -> None:
        await self.send(greeting)
        loop = asyncio.get_running_loop()
        # The timeout is a deadline for a whole command, set when the wait for it starts: a client
        # that sends a byte now and then (slowloris) does not keep its connection for ever.
        deadline: float | None = None
        while self.state != State.LOGOUT:
            event = self.conn.receiver.next_event()
            if isinstance(event, NeedData):
                if deadline is None:
                    deadline = loop.time() + self.read_timeout
                self.waiting = True
                try:
                    await self.conn.read_more(max(0.0, deadline - loop.time()))
                except TimeoutError:
                    raise EndSession("autologout: idle for too long") from None
                finally:
                    self.waiting = False
                continue
            deadline = None
            if isinstance(event, NeedLiteral):
                # RFC 3501 §7.5: a synchronizing literal waits for our continuation
                await self.send(continuation("ready for literal data"))
                continue
            if isinstance(event, LiteralTooBig):
                # RFC 7888 §4 / RFC 9051 §7.1: refused literal; the receiver drops its octets
                await self.send(
                    tagged(event.tag or "*", "NO", "literal too big", "TOOBIG")
                    if event.tag
                    else untagged_status("NO", "literal too big", "TOOBIG")
                )
                continue
            if isinstance(event, ParseError):
                if event.fatal:
                    raise EndSession(event.message)
                line = tagged(event.tag, "BAD", event.message) if event.tag else untagged_status("BAD", event.message)
                await self.send(line)
                continue
            delay = self._rate.delay()
            if delay > 0:
                telemetry.commands_slowed += 1  # slowed, never refused
                await asyncio.sleep(delay)
            await self.execute(event)

    async def execute(self, command: Command) -> None:
        from .commands import HANDLERS

        if command.name not in STATE_COMMANDS[self.state]:
            await self.send(tagged(command.tag, "BAD", f"{command.name} not allowed in the {self.state.value} state"))
            return
        handler = HANDLERS[command.name]
        reply: Reply | ImapError
        with telemetry.command_span(command.name, command.uid):
            try:
                reply = await handler(self, command) or Reply()
            except ImapError as e:
                reply = e
            except grpc.RpcError as e:
                reply = from_grpc(e)
                if e.code() not in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.ALREADY_EXISTS):
                    log.info("%s failed: %s", command.name, e.code())
            if self.state == State.SELECTED and self.view is not None:
                await self.pending_updates(command)
            if reply.status:  # "" when the handler answered already (STARTTLS)
                self.untagged(tagged(command.tag, reply.status, reply.text, reply.code))
            await self.flush()

    # ---- changes of the selected mailbox

    def on_event(self, event: ChangeEvent) -> None:
        """A hint from the notifier (never blocks): remember it, wake an IDLE."""
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
            self.wake.set()

    def mark_dirty(self) -> None:
        """The selected mailbox changed in a way only the change log tells: refresh at the next point."""
        self.dirty = True
        self._hints = None

    async def refresh(self) -> None:
        """Read the change log since the view's MODSEQ (RFC 7162 §3.2.5.2 style catch-up)."""
        view = self.view
        if view is None:
            return
        self.dirty = False
        self._hints = None
        self.wake.clear()
        self._last_refresh = time.monotonic()
        try:
            reply = await self.stub.GetChanges(
                pb.GetChangesRequest(account=self.account, mailbox=view.name, since_modseq=view.modseq),
                timeout=CALL_TIMEOUT,
            )
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                raise EndSession("the selected mailbox was deleted") from None
            self.mark_dirty()  # try again at the next opportunity
            return
        if reply.uidvalidity != view.uidvalidity:
            raise EndSession("the selected mailbox was replaced (UIDVALIDITY changed)")
        kinds = {pb.CHANGE_NEW: "new", pb.CHANGE_FLAGS: "flags", pb.CHANGE_EXPUNGE: "expunge"}
        changes = [Change(c.uid, c.modseq, kinds.get(c.kind, "flags"), tuple(c.flags)) for c in reply.changes]
        if reply.pruned_modseq > view.modseq:  # the log lost expunges since this view: list what is left
            changes += await self._gone_from_listing(view, reply.highestmodseq)
        new = view.apply(changes, reply.highestmodseq)
        if new and not view.readonly:
            # RFC 3501 §2.3.2: \Recent in exactly one session: whoever claims first
            claim = await self.stub.ClaimRecent(
                pb.ClaimRecentRequest(account=self.account, mailbox=view.name), timeout=CALL_TIMEOUT
            )
            view.recent.update(u for u in new if claim.first_uid <= u < claim.uidnext)

    async def _gone_from_listing(self, view: MailboxView, modseq: int) -> list[Change]:
        """Expunges of the view's messages told by a listing of their UID range (a session idle for
        longer than change_log_days; in practice sessions refresh every few minutes)."""
        if not view.uids:
            return []
        request = pb.FetchMetadataRequest(
            account=self.account,
            mailbox=view.name,
            uids=pb.UidSet(ranges=[pb.UidRange(first=view.uids[0], last=view.uids[-1])]),
            fields=pb.MetadataFields(),
        )
        present: set[int] = set()
        async for batch in self.stub.FetchMetadata(request, timeout=CALL_TIMEOUT):
            present.update(m.uid for m in batch.messages)
        return [Change(uid, modseq, "expunge", ()) for uid in view.uids if uid not in present]

    async def pending_updates(self, command: Command | None) -> None:
        view = self.view
        if view is None:
            return
        name = command.name if command is not None else "IDLE"
        hints = self._hints
        if self.dirty and hints and name not in ALWAYS_REFRESH:
            if all(view.holds(e.kind, e.uids, e.modseq) for e in hints):
                self.dirty = False  # only this session's own changes, applied since they arrived
                self._hints = None
        if self.dirty or name in ALWAYS_REFRESH:
            await self.refresh()
        allow_expunge = command is None or command.uid or name not in NO_EXPUNGE_DURING
        for line in view.updates(allow_expunge, self.condstore, self.qresync):
            self.untagged(line)

    def poll_due(self) -> bool:
        return time.monotonic() - self._last_refresh >= self.settings.imap_poll_interval

    # ---- helpers for handlers

    def select(self, view: MailboxView | None) -> None:
        self.view = view
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
        self.state = State.AUTHENTICATED
        self.services.notifier.add(account, self.on_event)

    def auth_event(self, result: AuthResult, user: str, method: str) -> None:
        auth_event(
            result,
            protocol="imap",
            user=user,
            remote_ip=self.conn.remote_ip,
            local_ip=self.conn.local_ip,
            method=method,
            tls=self.conn.tls,
            session=self.session_id,
        )

    def close(self) -> None:
        self.ahead.drop()
        if self.account:
            self.auth_event("logout", self.account, self.auth_method)
            self.services.notifier.remove(self.account, self.on_event)
            self.services.limits.logout(self.account)
            self.account = ""
