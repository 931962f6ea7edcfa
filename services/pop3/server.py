"""The asyncio POP3 server: plain with STLS on pop3_port, implicit TLS on pop3s_port.

It only reads, feeds the receiver and writes; the session decides. Every connection has an
inactivity autologout (RFC 1939 §3); on shutdown idle sessions are told -ERR and closed at once,
busy ones get the grace period. Neither deletes anything (only QUIT does).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable

from mailstack.services.common.auth_log import connection_refused
from mailstack.services.common.config import Settings
from mailstack.services.common.connection_limits import ConnectionLimiter
from mailstack.services.common.frontend import StreamFrontend
from mailstack.services.common.grpc_client import mailstore_stub
from mailstack.services.common.session_report import LiveSession, SessionReporter
from mailstack.services.common.stream_connection import CLOSE_TIMEOUT
from mailstack.services.common.stream_connection import StreamConnection as BaseConnection

from .mailstore import Pop3Mailstore
from .protocol import CommandReceiver, LineTooLong, NeedData, err
from .session import Pop3Session, read_ahead_budget

log = logging.getLogger("mailstack.pop3")

READ_SIZE = 64 * 1024


class _ClientGone(Exception):
    """The client closed the connection."""


class StreamConnection(BaseConnection):
    """One client connection over asyncio streams; implements session.Connection."""

    protocol = "pop3"

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        tls: bool,
        tls_context: ssl.SSLContext | None,
        idle_timeout: float,
        remote_ip: str = "",  # from a PROXY header (ADR 0007)
    ) -> None:
        super().__init__(reader, writer, tls=tls, tls_context=tls_context, read_limit=READ_SIZE, remote_ip=remote_ip)
        self.receiver = CommandReceiver()
        self.idle = False  # waiting for the client's next command (safe to cancel at shutdown)
        self._idle_timeout = idle_timeout
        self._deadline = 0.0  # of the current read (see read_more)
        self._watchdog: asyncio.TimerHandle | None = None
        self._reader_task: asyncio.Task[object] | None = None
        self._timed_out = False
        self._line_started = False  # the deadline of the command being read is set (see read_more)

    def line_done(self) -> None:
        """A whole command line arrived: the wait for the next one gets a new deadline."""
        self._line_started = False

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        transport = self.writer.transport
        if transport.get_write_buffer_size() > transport.get_write_buffer_limits()[1]:
            # a client that stops reading is as inactive as one that stops writing
            async with asyncio.timeout(self._idle_timeout):
                await self.writer.drain()

    async def read_more(self) -> None:
        """Read what the client sent into the receiver; raises TimeoutError after the idle timeout.

        One watchdog timer per connection and a deadline moved once per command line, rather than
        an asyncio.timeout per read (a timer made and cancelled for every command). The deadline is
        for the whole line: bytes of a half-sent line do not move it (a slowloris client that sends
        one byte now and then is closed at the deadline, not kept for ever)."""
        loop = asyncio.get_running_loop()
        if not self._line_started:
            self._line_started = True
            self._deadline = loop.time() + self._idle_timeout
        if self._watchdog is None:
            self._watchdog = loop.call_at(self._deadline, self._watchdog_due)
        self._reader_task = asyncio.current_task()
        try:
            data = await self.reader.read(READ_SIZE)
        except asyncio.CancelledError:
            if not self._timed_out or self._reader_task is None:
                raise
            self._reader_task.uncancel()  # our cancel, not the caller's: it becomes the timeout
            raise TimeoutError from None
        finally:
            self._reader_task = None
        if not data:
            raise _ClientGone
        self.receiver.receive_data(data)

    def _watchdog_due(self) -> None:
        self._watchdog = None
        if self._reader_task is None:
            return  # busy answering, not waiting: the next read sets a new deadline and timer
        loop = asyncio.get_running_loop()
        if loop.time() < self._deadline:  # the client was active since: wait for the new deadline
            self._watchdog = loop.call_at(self._deadline, self._watchdog_due)
            return
        self._timed_out = True
        self._reader_task.cancel()

    def close_watchdog(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    async def read_line(self) -> bytes | LineTooLong | None:
        while True:
            line = self.receiver.next_line()
            if not isinstance(line, NeedData):
                self.line_done()
                return line
            try:
                await self.read_more()
            except _ClientGone:
                return None

    def forget_pending(self) -> None:
        # RFC 2595 §4: plaintext pipelined behind STLS is dropped, never executed.
        self.receiver.clear()


class Pop3Server(StreamFrontend):
    grpc_identity = "pop3"
    READ_SIZE = READ_SIZE

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.sessions: dict[asyncio.Task[None], StreamConnection] = {}
        self._logins: dict[asyncio.Task[None], Pop3Session] = {}  # for `mailstack who` and `kick`
        self._kicked: set[asyncio.Task[None]] = set()
        self._reporter: SessionReporter | None = None
        self._mailstore: Pop3Mailstore | None = None
        self._read_ahead = read_ahead_budget(settings)
        self._limiter = ConnectionLimiter(settings.pop3_max_connections, settings.pop3_max_connections_per_ip)

    async def open(self) -> None:
        assert self.channel is not None
        self._mailstore = Pop3Mailstore(self.channel)
        settings = self.settings
        self._reporter = SessionReporter(
            mailstore_stub(self.channel), settings.session_report_seconds, self._live_sessions
        )
        self._reporter.start()
        await self.listen_streams([("POP3 (STLS)", settings.pop3_port, False), ("POP3S", settings.pop3s_port, True)])

    def waiting(self, task: asyncio.Task[None]) -> bool:
        return task in self.sessions and self.sessions[task].idle

    async def release(self) -> None:
        if self._reporter is not None:
            await self._reporter.stop()

    def _live_sessions(self) -> list[LiveSession]:
        """Sessions holding a maildrop (TRANSACTION state), for `mailstack who` and `mailstack kick`."""
        return [
            LiveSession("pop3", s.account, s.conn.remote_ip, s.conn.tls, s.logged_in_at, self._kicker(t))
            for t, s in self._logins.items()
            if s.logged_in_at
        ]

    def _cancelled_goodbye(self) -> bytes | None:
        """The last line of a session whose task was cancelled; None: not ours to end (re-raise)."""
        if asyncio.current_task() in self._kicked:  # RFC 1939 §3: no UPDATE state, nothing is deleted
            return err("session closed by the administrator", "SYS/PERM")
        if self.stopping:
            return err("server shutting down", "SYS/TEMP")
        return None

    def _kicker(self, task: asyncio.Task[None]) -> Callable[[], None]:
        def kick() -> None:
            self._kicked.add(task)
            task.cancel()

        return kick

    async def accept(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        client_address: tuple[str, int] | None = None,  # from a PROXY header
        *,
        tls: bool,
    ) -> None:
        task = asyncio.current_task()
        assert task is not None and self._mailstore is not None
        conn = StreamConnection(
            reader,
            writer,
            tls=tls,
            tls_context=None if tls else self.tls_context,
            idle_timeout=self.settings.pop3_idle_timeout,
            remote_ip=client_address[0] if client_address else "",
        )
        refusal = self._limiter.refusal(conn.remote_ip)
        if refusal is not None:
            # RFC 2449 §8.1.2 / RFC 3206 §4: a greeting -ERR with a response code, then close
            connection_refused("pop3", refusal, conn.remote_ip, conn.local_ip)
            text = "too many connections" + (" from your address" if refusal == "per_ip" else "")
            with contextlib.suppress(Exception):
                writer.write(err(f"{text}, try again later", "SYS/TEMP"))
                await asyncio.wait_for(writer.drain(), CLOSE_TIMEOUT)
            writer.close()
            return
        self._limiter.acquire(conn.remote_ip)
        self.sessions[task] = conn
        session = Pop3Session(self.settings, self._mailstore, conn, read_ahead=self._read_ahead)
        self._logins[task] = session
        try:
            await self._serve(conn, session)
        finally:
            conn.close_watchdog()
            self._limiter.release(conn.remote_ip)
            self.sessions.pop(task, None)
            self._logins.pop(task, None)
            self._kicked.discard(task)
            # the lease must go back even when this task is being cancelled
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.shield(session.close())
            await conn.close()

    async def _serve(self, conn: StreamConnection, session: Pop3Session) -> None:
        try:
            if self.stopping:
                await conn.send(err("server shutting down", "SYS/TEMP"))
                return
            await conn.send(session.greeting)
            while True:
                event = conn.receiver.next_event()
                if isinstance(event, NeedData):
                    conn.idle = True
                    try:
                        await conn.read_more()
                    finally:
                        conn.idle = False
                    continue
                conn.line_done()
                if isinstance(event, LineTooLong):
                    await conn.send(err("line too long"))
                    continue
                if await session.handle(event):
                    return
        except TimeoutError:
            # RFC 1939 §3: autologout; the session does not enter UPDATE, nothing is deleted
            with contextlib.suppress(Exception):
                conn.writer.write(err("autologout: idle for too long"))
        except asyncio.CancelledError:
            goodbye = self._cancelled_goodbye()
            if goodbye is None:
                raise
            with contextlib.suppress(Exception):
                conn.writer.write(goodbye)
        except (_ClientGone, ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
            pass
