"""One POP3 session: the state machine (RFC 1939 §3) and the command handlers.

The session decides; the server reads, feeds the receiver and writes. Which commands each state
allows is data (STATE_COMMANDS). Deletions are only marks until QUIT in the TRANSACTION state
enters UPDATE (RFC 1939 §6): a dropped connection, a timeout or a shutdown deletes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import itertools
import logging
import os
import socket
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Protocol, cast

from mailstack.services.common.auth_log import AuthResult, new_session_id, session_auth_event
from mailstack.services.common.config import Settings
from mailstack.services.common.metrics import (
    COMMAND_SECONDS,
    CONNECTIONS,
    OTHER_COMMAND,
    POP3_DELETED,
    POP3_READ_AHEAD_BYTES,
    POP3_RETRIEVED,
    SESSIONS,
    count_command,
)
from mailstack.services.common.read_ahead import ReadAhead, ReadAheadBudget
from mailstack.services.common.span_attributes import Attributes
from mailstack.services.common.telemetry import tracing_enabled, untraced
from mailstack.v1 import mailstore_pb2 as pb
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from prometheus_client import Histogram

from .mailstore import AuthFailed, AuthThrottled, Lease, MailstoreError, MessageGone, Pop3Mailstore, Snapshot
from .protocol import BodyLineLimit, Command, DotStuffer, LineTooLong, SaslError, decode_plain, err, multiline, ok
from .read_ahead import MAX_MESSAGES, PER_SESSION

log = logging.getLogger("mailstack.pop3")
tracer = trace.get_tracer("mailstack.pop3")
OPEN_SESSIONS = SESSIONS.labels("pop3")
CONNECTIONS_ADMITTED = CONNECTIONS.labels("pop3")

IMPLEMENTATION = "mailstack"
LEASE_PREFIX = "pop3:"  # the maildrop lock of an account is the lease "pop3:<account>"
_holder_counter = itertools.count(1)


class State(enum.Enum):
    AUTHORIZATION = "AUTHORIZATION"
    TRANSACTION = "TRANSACTION"
    UPDATE = "UPDATE"


# RFC 1939 §4-§6, RFC 2449 (CAPA), RFC 2595 (STLS), RFC 5034 (AUTH). APOP is not offered.
STATE_COMMANDS: dict[State, frozenset[str]] = {
    State.AUTHORIZATION: frozenset({"CAPA", "USER", "PASS", "AUTH", "STLS", "QUIT"}),
    State.TRANSACTION: frozenset({"CAPA", "STAT", "LIST", "UIDL", "RETR", "TOP", "DELE", "RSET", "NOOP", "QUIT"}),
    State.UPDATE: frozenset(),
}
KNOWN_COMMANDS = frozenset().union(*STATE_COMMANDS.values())


class Connection(Protocol):
    """What the session needs of the server's connection."""

    @property
    def tls(self) -> bool: ...
    @property
    def can_start_tls(self) -> bool: ...
    @property
    def remote_ip(self) -> str: ...
    @property
    def local_ip(self) -> str: ...
    async def send(self, data: bytes) -> None: ...
    async def read_line(self) -> bytes | LineTooLong | None:
        """The next raw line (a SASL response); None when the client went away."""

    async def start_tls(self, reply: bytes) -> None:
        """Send reply, then run the TLS handshake as the server."""


def _stuffed(data: bytes, crlf: bool) -> bytes:
    """A body as RETR sends it: dot-stuffed and terminated. Done as it arrives (read_ahead.py), while
    the bytes are still in the CPU's cache and while RETR would wait on the mailstore anyway: the
    stuffing is a third of RETR's CPU when every line starts with a dot."""
    stuffer = DotStuffer(crlf)
    return stuffer.feed(data) + stuffer.finish()


def read_ahead_budget(settings: Settings) -> ReadAheadBudget:
    """The process's bound on the bytes its sessions hold fetched ahead (shown as a gauge)."""
    return ReadAheadBudget(settings.pop3_read_ahead_bytes, POP3_READ_AHEAD_BYTES.set)


class _ReplyWatch:
    """The connection, noting how each command's first reply begins (+OK or -ERR: the metric's result)."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self.first = b""  # reset before each command

    def __getattr__(self, name: str) -> object:
        return getattr(self._conn, name)

    async def send(self, data: bytes) -> None:
        if not self.first:
            self.first = data[:4]
        await self._conn.send(data)

    async def start_tls(self, reply: bytes) -> None:
        """STLS: the +OK goes out from the connection itself, right before the handshake."""
        if not self.first:
            self.first = reply[:4]
        await self._conn.start_tls(reply)


@functools.cache  # one histogram child per command name (bounded: KNOWN_COMMANDS and OTHER_COMMAND)
def _command_seconds(label: str) -> Histogram:
    return COMMAND_SECONDS.labels("pop3", label)


def uidl_value(uidvalidity: int, uid: int) -> str:
    """Unique and stable across sessions (RFC 1939 §7: 1..70 chars in 0x21..0x7E)."""
    return f"{uidvalidity:08x}{uid:08x}"


def new_holder_id() -> str:
    """A lease holder id unique per session across all pop3 processes."""
    return f"{socket.gethostname()}:{os.getpid()}:{next(_holder_counter)}"


def capabilities(*, tls: bool, can_start_tls: bool, plaintext_ok: bool) -> list[str]:
    """RFC 2449 §6; USER and SASL only where a login would be accepted (RFC 2595 §4)."""
    caps = ["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"]
    if tls or plaintext_ok:
        caps += ["USER", "SASL PLAIN"]
    if not tls and can_start_tls:
        caps.append("STLS")
    caps.append(f"IMPLEMENTATION {IMPLEMENTATION}")
    return caps


class Pop3Session:
    def __init__(
        self,
        settings: Settings,
        mailstore: Pop3Mailstore,
        connection: Connection,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        read_ahead: ReadAheadBudget | None = None,  # the process's, shared by its sessions
    ) -> None:
        self.settings = settings
        self._budget = read_ahead if read_ahead is not None else read_ahead_budget(settings)
        self.mailstore = mailstore
        self._replies = _ReplyWatch(connection)
        self.conn = cast(Connection, self._replies)
        self.state = State.AUTHORIZATION
        self.account = ""
        self.logged_in_at = 0.0  # unix time the maildrop was opened, for `mailstack who`
        self.holder = new_holder_id()
        self._sleep = sleep
        self._user: str | None = None  # from USER, waiting for PASS
        self._auth_failures = 0
        self.session_id = new_session_id()  # in the login and logout log lines
        self._auth_method = ""  # USER or PLAIN, once logged in
        self._snapshot = Snapshot(0, ())
        self._deleted: set[int] = set()  # message numbers marked by DELE
        # bodies fetched ahead of their RETR, held dot-stuffed and terminated
        self._ahead = ReadAhead(self._budget, f"pop3 read-ahead {self.holder}")
        self._renewal: asyncio.Task[None] | None = None
        self._lease_held = False
        self._closed = False
        OPEN_SESSIONS.inc()
        CONNECTIONS_ADMITTED.inc()

    # ------------------------------------------------------------------ plumbing

    @property
    def lease_name(self) -> str:
        return f"{LEASE_PREFIX}{self.account}"

    @property
    def greeting(self) -> bytes:
        return ok(f"{self.settings.hostname} POP3 server ready")

    async def handle(self, command: Command) -> bool:
        """Answer one command; True when the connection is to be closed."""
        # Unknown commands share one label: clients must not be able to grow the metric without bound.
        label = command.name if command.name in KNOWN_COMMANDS else OTHER_COMMAND
        self._replies.first = b""
        start = time.perf_counter()
        try:
            if not tracing_enabled():  # no span nobody collects (RETR is the hot path)
                return await self._dispatch(command)
            attributes = self._span_attributes()
            with tracer.start_as_current_span(f"POP3 {label}", kind=SpanKind.SERVER, attributes=attributes):
                return await self._dispatch(command)
        finally:
            _command_seconds(label).observe(time.perf_counter() - start)
            first = self._replies.first
            count_command("pop3", label, "ok" if first.startswith(b"+OK") else "err" if first == b"-ERR" else "error")

    def _span_attributes(self) -> Attributes:
        attributes: Attributes = {"pop3.state": self.state.value}
        span_attributes = getattr(self._replies, "span_attributes", None)  # a test's connection may lack it
        if span_attributes is not None:
            attributes.update(span_attributes(self.account))
        return attributes

    async def _dispatch(self, command: Command) -> bool:
        if command.name not in KNOWN_COMMANDS:
            await self.conn.send(err("unknown command"))
            return False
        if command.name not in STATE_COMMANDS[self.state]:
            await self.conn.send(err(f"{command.name} not allowed in the {self.state.value} state"))
            return False
        handler = getattr(self, f"_cmd_{command.name.lower()}")
        try:
            return bool(await handler(command))
        except MailstoreError as e:
            await self.conn.send(err(str(e), "SYS/TEMP" if e.temporary else "SYS/PERM"))
            return False

    async def close(self) -> None:
        """The connection ended (QUIT, drop, timeout or shutdown): give the maildrop lock back.
        Nothing is deleted here: only QUIT enters the UPDATE state."""
        if self._closed:
            return
        self._closed = True
        OPEN_SESSIONS.dec()
        if self._auth_method:
            self._auth_event("logout", self.account, self._auth_method)
        filling = self._ahead.drop()
        if filling is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await filling
        if self._renewal is not None:
            self._renewal.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewal
            self._renewal = None
        await self._release_lease()

    async def _release_lease(self) -> None:
        if self._lease_held:
            self._lease_held = False
            try:
                await self.mailstore.release_lease(self.lease_name, self.holder)
            except MailstoreError as e:
                log.warning("maildrop lease not released (it expires by itself)", extra={"lease": self.lease_name,
                                                                                         "error": str(e)})  # fmt: skip

    async def _renew_lease(self) -> None:
        ttl = self.settings.pop3_lease_ttl
        while True:
            await asyncio.sleep(ttl / 3)
            try:
                with untraced():  # a renewal every ttl/3 while the session lasts: not part of any command's trace
                    renewed = await self.mailstore.acquire_lease(self.lease_name, self.holder, ttl)
                if not renewed:
                    log.warning(
                        "maildrop lock taken over; this session keeps no lock", extra={"lease": self.lease_name}
                    )
                    return
            except MailstoreError as e:
                log.warning("maildrop lease not renewed, retrying", extra={"lease": self.lease_name, "error": str(e)})

    # ------------------------------------------------------------------ AUTHORIZATION

    def _plaintext_refused(self) -> bool:
        return not self.conn.tls and not self.settings.allow_plaintext_auth

    async def _cmd_capa(self, command: Command) -> None:
        caps = capabilities(
            tls=self.conn.tls,
            can_start_tls=self.conn.can_start_tls,
            plaintext_ok=self.settings.allow_plaintext_auth,
        )
        await self.conn.send(multiline(ok("capability list follows"), caps))

    async def _cmd_stls(self, command: Command) -> None:
        # RFC 2595 §4
        if self.conn.tls or not self.conn.can_start_tls:
            await self.conn.send(err("TLS not available here" if not self.conn.tls else "already using TLS"))
            return
        await self.conn.start_tls(ok("begin TLS negotiation"))
        self._user = None  # forget what was learned before TLS

    async def _cmd_user(self, command: Command) -> None:
        if self._plaintext_refused():
            await self.conn.send(err("plaintext authentication disallowed, use STLS", "AUTH"))
            return
        if not command.rest:
            await self.conn.send(err("USER needs a name"))
            return
        self._user = command.rest
        await self.conn.send(ok("send PASS"))

    async def _cmd_pass(self, command: Command) -> bool:
        if self._plaintext_refused():
            await self.conn.send(err("plaintext authentication disallowed, use STLS", "AUTH"))
            return False
        if self._user is None:
            await self.conn.send(err("USER first"))
            return False
        user, self._user = self._user, None
        return await self._login(user, command.rest, "", "USER")

    async def _cmd_auth(self, command: Command) -> bool:
        # RFC 5034; "AUTH" alone lists the mechanisms (a common extension, RFC 5034 §4 note).
        if not command.args:
            await self.conn.send(multiline(ok("mechanisms follow"), ["PLAIN"]))
            return False
        if self._plaintext_refused():
            await self.conn.send(err("plaintext authentication disallowed, use STLS", "AUTH"))
            return False
        if command.args[0].upper() != "PLAIN" or len(command.args) > 2:
            await self.conn.send(err("unsupported mechanism (PLAIN only)"))
            return False
        if len(command.args) == 2:
            response = command.args[1].encode("ascii", errors="replace")
            if response == b"=":  # RFC 5034 §4: "=" is an empty initial response
                response = b""
        else:
            await self.conn.send(b"+ \r\n")
            line = await self.conn.read_line()
            if line is None:
                return True
            if isinstance(line, LineTooLong):
                await self.conn.send(err("SASL response too long"))
                return False
            response = line.strip()
        if response == b"*":  # RFC 5034 §4: the client cancels
            await self.conn.send(err("authentication cancelled"))
            return False
        try:
            authzid, authcid, password = decode_plain(response)
        except SaslError as e:
            await self.conn.send(err(str(e)))
            return False
        return await self._login(authcid, password, authzid, "PLAIN")

    def _auth_event(self, result: AuthResult, user: str, method: str) -> None:
        session_auth_event(result, "pop3", self.conn, self.session_id, user, method)

    async def _login(self, username: str, password: str, authzid: str, method: str) -> bool:
        # The mailstore counts the attempt for this IP and account across all protocols (ADR 0011).
        ttl = self.settings.pop3_lease_ttl
        lease = Lease(LEASE_PREFIX, self.holder, ttl)
        try:  # the login takes the maildrop lock in the same call
            account, locked, snapshot = await self.mailstore.authenticate(
                username, password, authzid, self.conn.remote_ip, lease
            )
        except (AuthFailed, AuthThrottled) as e:
            # Slowed and limited: each failure waits, the last one ends the connection.
            # RFC 3206: [AUTH] for credentials, [SYS/TEMP] for a refusal that goes away later.
            throttled = isinstance(e, AuthThrottled)
            self._auth_event("throttled" if throttled else "failed", username, method)
            await self._sleep(self.settings.pop3_auth_failure_delay_ms / 1000)
            if throttled:  # not a failure of this connection: the mailstore hashed nothing
                await self.conn.send(err("too many login attempts, try again later", "SYS/TEMP"))
                return False
            self._auth_failures += 1
            if self._auth_failures >= self.settings.pop3_max_auth_failures:
                await self.conn.send(err("authentication failed; too many failures, closing", "AUTH"))
                return True
            await self.conn.send(err("authentication failed", "AUTH"))
            return False
        self._auth_event("ok", account, method)
        self.account = account
        if not locked:
            await self.conn.send(err("maildrop is locked by another POP3 session", "IN-USE"))
            return False
        self._auth_method = method  # logged in: a logout line follows
        self._lease_held = True
        try:
            self._snapshot = snapshot if snapshot is not None else await self.mailstore.snapshot(account)
        except MailstoreError:
            await self._release_lease()
            raise
        self._renewal = asyncio.create_task(self._renew_lease(), name=f"pop3 lease {self.holder}")
        self.state = State.TRANSACTION
        self.logged_in_at = time.time()
        count, octets = self._totals()
        await self.conn.send(ok(f"maildrop has {count} messages ({octets} octets)"))
        return False

    async def _cmd_quit(self, command: Command) -> bool:
        if self.state is State.AUTHORIZATION:
            await self.conn.send(ok("bye"))
            return True
        # RFC 1939 §6: the UPDATE state removes the messages marked deleted, then the lock is released.
        self.state = State.UPDATE
        uids = [self._snapshot.messages[n - 1].uid for n in sorted(self._deleted)]
        try:
            expunged = await self.mailstore.delete(self.account, uids)
        except MailstoreError as e:
            await self.close()
            code = "SYS/TEMP" if e.temporary else "SYS/PERM"
            await self.conn.send(err("some deleted messages not removed", code))
            return True
        # unlocked before the reply: a client that reconnects at once must not meet [IN-USE]
        await self.close()
        POP3_DELETED.inc(len(expunged))
        left = len(self._snapshot.messages) - len(expunged)
        await self.conn.send(ok(f"bye ({left} messages left)"))
        return True

    # ------------------------------------------------------------------ TRANSACTION

    def _totals(self) -> tuple[int, int]:
        live = [m for n, m in enumerate(self._snapshot.messages, 1) if n not in self._deleted]
        return len(live), sum(m.size for m in live)

    def _message_number(self, word: str) -> int | None:
        """A valid, not deleted message number (RFC 1939 §5), else None."""
        if not word.isdigit() or len(word) > 10:
            return None
        number = int(word)
        if not 1 <= number <= len(self._snapshot.messages) or number in self._deleted:
            return None
        return number

    async def _no_such_message(self) -> None:
        await self.conn.send(err("no such message"))

    async def _cmd_stat(self, command: Command) -> None:
        count, octets = self._totals()
        await self.conn.send(ok(f"{count} {octets}"))

    async def _cmd_noop(self, command: Command) -> None:
        await self.conn.send(ok())

    async def _listing(self, command: Command, value: Callable[[int], str]) -> None:
        if command.args:
            number = self._message_number(command.args[0])
            if number is None:
                await self._no_such_message()
                return
            await self.conn.send(ok(f"{number} {value(number)}"))
            return
        lines = [f"{n} {value(n)}" for n in range(1, len(self._snapshot.messages) + 1) if n not in self._deleted]
        await self.conn.send(multiline(ok(f"{len(lines)} messages"), lines))

    async def _cmd_list(self, command: Command) -> None:
        await self._listing(command, lambda n: str(self._snapshot.messages[n - 1].size))

    async def _cmd_uidl(self, command: Command) -> None:
        # RFC 1939 §7; a message imported from another server keeps the UIDL it had there (issue 16)
        uidvalidity = self._snapshot.uidvalidity
        messages = self._snapshot.messages
        await self._listing(command, lambda n: messages[n - 1].uidl or uidl_value(uidvalidity, messages[n - 1].uid))

    async def _cmd_dele(self, command: Command) -> None:
        number = self._message_number(command.args[0]) if command.args else None
        if number is None:
            await self._no_such_message()
            return
        self._deleted.add(number)
        await self.conn.send(ok(f"message {number} deleted"))

    async def _cmd_rset(self, command: Command) -> None:
        self._deleted.clear()
        count, octets = self._totals()
        await self.conn.send(ok(f"maildrop has {count} messages ({octets} octets)"))

    async def _cmd_retr(self, command: Command) -> bool:
        number = self._message_number(command.args[0]) if command.args else None
        if number is None:
            await self._no_such_message()
            return False
        message = self._snapshot.messages[number - 1]
        if message.uid not in self._ahead and message.size <= PER_SESSION:
            self._fetch_ahead(number)
        body = await self._ahead.take(message.uid)
        status = ok(f"{message.size} octets")
        if body is not None:  # the common case: the whole response in one write
            await self.conn.send(status + body)
            POP3_RETRIEVED.inc()
            return False
        done = await self._stream(status, [self.mailstore.body(self.account, message.uid)])
        if done:
            POP3_RETRIEVED.inc()
        return not done

    def _fetch_ahead(self, number: int) -> None:
        """Start fetching message `number` and the undeleted ones after it in one FetchBodies call,
        as far as this session's share and the process's budget allow (read_ahead.py). Each RETR
        waits only for its own message, so the client is answered while the rest still arrive;
        with nothing granted the message is streamed alone."""
        self._ahead.drop()  # skipped messages give their share back
        granted = self._budget.take(PER_SESSION)
        total = 0
        uids: list[int] = []
        for n in range(number, len(self._snapshot.messages) + 1):
            if n in self._deleted:
                continue
            message = self._snapshot.messages[n - 1]
            if total + message.size > granted or len(uids) >= MAX_MESSAGES:
                break
            total += message.size
            uids.append(message.uid)
        self._budget.give_back(granted - total)
        if uids:
            self._ahead.start(uids, total, self.mailstore.bodies(self.account, uids), _stuffed)

    async def _cmd_top(self, command: Command) -> bool:
        # RFC 1939 §7: the header, the blank line, then n lines of the body
        number = self._message_number(command.args[0]) if command.args else None
        if number is None or len(command.args) != 2:
            await self.conn.send(err("usage: TOP msg n") if number else err("no such message"))
            return False
        lines = command.args[1]
        if not lines.isdigit():
            await self.conn.send(err("the line count must be a non-negative number"))
            return False
        uid = self._snapshot.messages[number - 1].uid
        limit = BodyLineLimit(int(lines[:12]))  # more digits than that means "all lines" anyway
        header = self.mailstore.body(self.account, uid, pb.SECTION_HEADER)
        text = self._limited(self.mailstore.body(self.account, uid, pb.SECTION_TEXT), limit)
        done = await self._stream(ok("top of message follows"), [header, text])
        return not done

    @staticmethod
    async def _limited(chunks: AsyncGenerator[bytes, None], limit: BodyLineLimit) -> AsyncGenerator[bytes, None]:
        async with contextlib.aclosing(chunks):
            if limit.done:
                return  # TOP n 0: the body is never requested
            async for chunk in chunks:
                out = limit.feed(chunk)
                if out:
                    yield out
                if limit.done:
                    return  # leaving the block cancels the rest of the stream

    async def _stream(self, status: bytes, sources: list[AsyncGenerator[bytes, None]]) -> bool:
        """Send status, then the sources one after the other, dot-stuffed. The first chunk is read
        before +OK so that a missing message or a mailstore failure can still be answered -ERR.
        False when the stream broke after +OK (the response cannot be completed: close)."""
        stuffer = DotStuffer()
        try:
            try:
                first = await anext(sources[0], b"")
            except MessageGone:
                await self.conn.send(err("message was removed by another client"))
                return True
            except MailstoreError as e:
                await self.conn.send(err(str(e), "SYS/TEMP" if e.temporary else "SYS/PERM"))
                return True
            # One chunk is held back, so a message of one chunk (most mail) goes out in one write
            # together with its status line and terminator.
            pending = status + stuffer.feed(first)
            try:
                for source in sources:
                    async for chunk in source:
                        data = stuffer.feed(chunk)
                        if data:
                            await self.conn.send(pending)
                            pending = data
            except (MessageGone, MailstoreError) as e:
                await self.conn.send(pending)
                log.warning("body stream broke after +OK", extra={"account": self.account, "error": str(e)})
                return False
            await self.conn.send(pending + stuffer.finish())
            return True
        finally:
            for source in sources:
                await source.aclose()
