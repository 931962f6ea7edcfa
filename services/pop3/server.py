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
from typing import cast

import grpc.aio
from mailstack.services.common.auth_log import connection_refused, local_ip_of
from mailstack.services.common.config import Settings
from mailstack.services.common.connection_limits import ConnectionLimiter
from mailstack.services.common.grpc_client import identity_for, open_channel
from mailstack.services.common.listeners import (
    CLOSE_TIMEOUT,
    TLS_HANDSHAKE_TIMEOUT,
    Listener,
    addresses,
    open_listeners,
    shut_down,
)
from mailstack.services.common.tls import ensure_self_signed, server_ssl_context

from .mailstore import Pop3Mailstore
from .protocol import CommandReceiver, LineTooLong, NeedData, err
from .session import Pop3Session, read_ahead_budget

log = logging.getLogger("mailstack.pop3")

READ_SIZE = 64 * 1024


class _ClientGone(Exception):
    """The client closed the connection."""


class StreamConnection:
    """One client connection over asyncio streams; implements session.Connection."""

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
        self.reader = reader
        self.writer = writer
        self.receiver = CommandReceiver()
        self.idle = False  # waiting for the client's next command (safe to cancel at shutdown)
        self._tls = tls
        self._tls_context = tls_context
        self._idle_timeout = idle_timeout
        self._deadline = 0.0  # of the current read (see read_more)
        self._watchdog: asyncio.TimerHandle | None = None
        self._reader_task: asyncio.Task[object] | None = None
        self._timed_out = False
        peer = writer.get_extra_info("peername")
        self._remote_ip = remote_ip or (str(peer[0]) if isinstance(peer, tuple) and peer else "")
        self._local_ip = local_ip_of(writer.get_extra_info("sockname"))
        self._line_started = False  # the deadline of the command being read is set (see read_more)

    @property
    def tls(self) -> bool:
        return self._tls

    @property
    def can_start_tls(self) -> bool:
        return self._tls_context is not None

    @property
    def remote_ip(self) -> str:
        return self._remote_ip

    @property
    def local_ip(self) -> str:
        return self._local_ip

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

    async def start_tls(self, reply: bytes) -> None:
        """Send `reply` (+OK to STLS) and upgrade. Reading is paused before the reply goes out, so
        the client's ClientHello (sent once it sees +OK) stays in the socket for the TLS layer
        instead of landing in the plaintext StreamReader buffer and stalling the handshake."""
        assert self._tls_context is not None
        cast(asyncio.Transport, self.writer.transport).pause_reading()
        # RFC 2595 §4 / RFC 3207 §6: plaintext pipelined behind STLS is dropped, never executed.
        self.receiver.clear()
        stale = getattr(self.reader, "_buffer", None)  # asyncio has no public way to drop it
        if isinstance(stale, bytearray):
            stale.clear()
        await self.send(reply)
        await self.writer.start_tls(self._tls_context, ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT)
        self._tls = True


class Pop3Server:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._servers: list[tuple[str, Listener]] = []
        self._channel: grpc.aio.Channel | None = None
        self._mailstore: Pop3Mailstore | None = None
        self._tls_context: ssl.SSLContext | None = None
        self._connections: dict[asyncio.Task[None], StreamConnection] = {}
        self._read_ahead = read_ahead_budget(settings)
        self._limiter = ConnectionLimiter(settings.pop3_max_connections, settings.pop3_max_connections_per_ip)
        self._closed = asyncio.Event()
        self._stopping = False

    @property
    def listeners(self) -> list[tuple[str, str]]:
        return addresses(self._servers)

    async def start(self) -> None:
        settings = self.settings
        cert, key = settings.effective_tls_cert, settings.effective_tls_key
        if not settings.tls_cert:
            await asyncio.to_thread(ensure_self_signed, cert, key, settings.hostname)
        self._tls_context = server_ssl_context(cert, key)
        self._channel = open_channel(settings.mailstore_addr, await asyncio.to_thread(identity_for, settings, "pop3"))
        self._mailstore = Pop3Mailstore(self._channel)
        try:
            ports = [("POP3 (STLS)", settings.pop3_port, False), ("POP3S", settings.pop3s_port, True)]
            await open_listeners(settings, self._accept, ports, self._tls_context, self._servers, READ_SIZE)
        except BaseException:
            await self.stop(0)
            raise

    async def stop(self, grace: float) -> None:
        """Stop accepting; idle sessions end now, busy ones after at most `grace` seconds."""
        self._stopping = True
        connections = self._connections
        await shut_down(self._servers, connections, lambda t: t in connections and connections[t].idle, grace)
        if self._channel is not None:
            await self._channel.close(None)
            self._channel = None
        self._closed.set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def _accept(
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
            tls_context=None if tls else self._tls_context,
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
        self._connections[task] = conn
        session = Pop3Session(self.settings, self._mailstore, conn, read_ahead=self._read_ahead)
        try:
            await self._serve(conn, session)
        finally:
            conn.close_watchdog()
            self._limiter.release(conn.remote_ip)
            self._connections.pop(task, None)
            # the lease must go back even when this task is being cancelled
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.shield(session.close())
            writer.close()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(writer.wait_closed(), CLOSE_TIMEOUT)

    async def _serve(self, conn: StreamConnection, session: Pop3Session) -> None:
        try:
            if self._stopping:
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
            if not self._stopping:
                raise
            with contextlib.suppress(Exception):
                conn.writer.write(err("server shutting down", "SYS/TEMP"))
        except (_ClientGone, ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
            pass
