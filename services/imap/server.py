"""The asyncio IMAP server: STARTTLS on imap_port, implicit TLS on imaps_port (RFC 8314).

It accepts, enforces connection limits, reads into the session's receiver and writes what the
session sends; the session decides everything else. On stop every session is told `* BYE`
(IDLE ones included) and closed after the grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import ssl
from collections.abc import Callable

from mailstack.services.common.auth_log import connection_refused
from mailstack.services.common.config import Settings
from mailstack.services.common.deflate import CompressionError, Deflate
from mailstack.services.common.frontend import StreamFrontend
from mailstack.services.common.grpc_client import mailstore_stub
from mailstack.services.common.metrics import IMAP_READ_AHEAD_BYTES
from mailstack.services.common.read_ahead import ReadAheadBudget
from mailstack.services.common.session_report import LiveSession, SessionReporter
from mailstack.services.common.stream_connection import CLOSE_TIMEOUT
from mailstack.services.common.stream_connection import StreamConnection as BaseConnection

from . import command_loop, telemetry
from .limits import PREAUTH_MAX_LITERAL, ConnectionLimits
from .mailbox_index import MailboxIndex
from .notifier import Notifier
from .protocol import CommandReceiver
from .protocol.encoder import Buffer, untagged_status
from .registry import GRAMMAR
from .session import ClientGone, EndSession, Services, Session

_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)

log = logging.getLogger("mailstack.imap")

READ_SIZE = 64 * 1024
WRITE_TIMEOUT = 300.0  # a client that stops reading is dropped


class StreamConnection(BaseConnection):
    """One client connection over asyncio streams (implements session.Connection)."""

    protocol = "imap"

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        new_receiver: Callable[[], CommandReceiver],
        tls: bool,
        tls_context: ssl.SSLContext | None,
        remote_ip: str = "",  # from a PROXY header (ADR 0007)
    ) -> None:
        super().__init__(reader, writer, tls=tls, tls_context=tls_context, read_limit=READ_SIZE, remote_ip=remote_ip)
        self._new_receiver = new_receiver
        self.receiver = new_receiver()
        self._deflate: Deflate | None = None  # RFC 4978 COMPRESS=DEFLATE, once the client asked

    @property
    def compressing(self) -> bool:
        return self._deflate is not None

    def start_compression(self) -> None:
        """Compress from now on both ways (RFC 4978 §3: right after the tagged OK). What the client
        pipelined behind COMPRESS is compressed already: it goes through the decompressor."""
        self._deflate = Deflate(READ_SIZE)
        pending = self.receiver.take_pending()
        if pending:
            self._inflate(pending)

    def frame(self, data: bytes) -> bytes:
        """`data` as it goes on the wire (compressed once COMPRESS is active)."""
        return data if self._deflate is None else self._deflate.compress([data])

    async def send(self, buffers: list[Buffer]) -> None:
        if self._deflate is None:
            self.writer.writelines(buffers)  # passthrough: a body literal is never joined here
        else:
            self.writer.write(self._deflate.compress(buffers))
        # Wait only when the kernel did not take it all: wait_for makes a task per call, which
        # cost more than the rest of a short reply. A closing transport still goes through
        # drain(), which raises the connection's error.
        transport = self.writer.transport
        if transport.get_write_buffer_size() or transport.is_closing():
            await asyncio.wait_for(self.writer.drain(), WRITE_TIMEOUT)

    def awaiting_literal(self) -> None:
        # A client writes a literal and its closing CRLF apart (imaplib, imapsync's
        # Mail::IMAPClient); with Nagle's algorithm on, the CRLF waits for our ACK of the literal,
        # which Linux delays up to 40 ms after our "+": 4x slower serial APPENDs (issue 16).
        # Quick-ACK mode (Linux only, re-armed each time) acknowledges the literal on arrival.
        sock = self.writer.get_extra_info("socket")
        if _QUICKACK is not None and sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)

    async def read_more(self, wait: float | None) -> None:
        if self._deflate is not None and self._deflate.pending:
            self._inflate(b"")  # the rest of a bounded inflate first, without reading
            return
        if wait is None:
            data = await self.reader.read(READ_SIZE)
        else:
            async with asyncio.timeout(wait):  # not wait_for: that wraps the read in a task of its own
                data = await self.reader.read(READ_SIZE)
        if not data:
            raise ClientGone
        if self._deflate is None:
            self.receiver.receive_data(data)
        else:
            self._inflate(data)

    def _inflate(self, data: bytes) -> None:
        assert self._deflate is not None
        try:
            self.receiver.receive_data(self._deflate.decompress(data))
        except CompressionError as e:
            raise EndSession(str(e)) from None

    def forget_pending(self) -> None:
        # RFC 9051 §6.2.1: nothing the client pipelined behind STARTTLS is executed.
        self.receiver = self._new_receiver()


def _kick(task: asyncio.Task[None], session: Session) -> None:
    session.kicked = True
    task.cancel()


class ImapServer(StreamFrontend):
    grpc_identity = "imap"
    READ_SIZE = READ_SIZE

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.sessions: dict[asyncio.Task[None], Session | None] = {}
        self._services: Services | None = None
        self._reporter: SessionReporter | None = None
        # A connection's receiver, made again after STARTTLS (nothing pipelined before it survives);
        # its literal bound grows to the APPENDLIMIT at login (Session.logged_in).
        self._new_receiver = functools.partial(CommandReceiver, GRAMMAR, settings.imap_max_line, PREAUTH_MAX_LITERAL)

    async def open(self) -> None:
        settings = self.settings
        assert self.channel is not None
        stub = mailstore_stub(self.channel)
        notifier = Notifier(settings.events_url, stub)
        await notifier.start()
        self._services = Services(
            settings=settings,
            read_ahead=ReadAheadBudget(settings.imap_read_ahead_bytes, IMAP_READ_AHEAD_BYTES.set),
            index=MailboxIndex(settings.imap_index_messages),
            stub=stub,
            notifier=notifier,
            limits=ConnectionLimits(
                settings.imap_max_connections,
                settings.imap_max_connections_per_ip,
                settings.imap_max_connections_per_user,
            ),
        )
        self._reporter = SessionReporter(stub, settings.session_report_seconds, self._live_sessions)
        self._reporter.start()
        await self.listen_streams(
            [("IMAP (STARTTLS)", settings.imap_port, False), ("IMAPS", settings.imaps_port, True)]
        )

    def _live_sessions(self) -> list[LiveSession]:
        """The logged-in sessions, for `mailstack who` and `mailstack kick`."""
        return [
            LiveSession("imap", s.account, s.conn.remote_ip, s.conn.tls, s.logged_in_at, functools.partial(_kick, t, s))
            for t, s in self.sessions.items()
            if s is not None and s.account
        ]

    async def drain(self, grace: float) -> None:
        """Sessions waiting for a command (or IDLE) get `* BYE` at once, busy ones finish their
        command within `grace` seconds or are cut off with a BYE."""
        if self._services is not None:
            self._services.stopping = True
        await super().drain(grace)

    async def release(self) -> None:
        if self._reporter is not None:
            await self._reporter.stop()
        if self._services is not None:
            await self._services.notifier.stop()

    def waiting(self, task: asyncio.Task[None]) -> bool:
        """Not inside a command (or in IDLE): safe to end with `* BYE` at once."""
        session = self.sessions.get(task)
        return session is None or session.waiting

    async def accept(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        client_address: tuple[str, int] | None = None,  # from a PROXY header
        *,
        tls: bool,
    ) -> None:
        task = asyncio.current_task()
        services = self._services
        assert task is not None and services is not None
        remote_ip = client_address[0] if client_address else ""
        conn = StreamConnection(reader, writer, self._new_receiver, tls, None if tls else self.tls_context, remote_ip)
        refused = ("shutdown", "server shutting down") if services.stopping else services.limits.open(conn.remote_ip)
        if refused:
            connection_refused("imap", refused[0], conn.remote_ip, conn.local_ip)
            with contextlib.suppress(Exception):
                # RFC 9051 §7.1.5: BYE at the greeting; RFC 5530 UNAVAILABLE (try again later)
                writer.write(untagged_status("BYE", refused[1], "UNAVAILABLE"))
                await asyncio.wait_for(writer.drain(), CLOSE_TIMEOUT)
            writer.close()
            return
        session = Session(services, conn)
        self.sessions[task] = session
        telemetry.sessions_open += 1
        telemetry.CONNECTIONS_ADMITTED.inc()
        try:
            await self._serve(session)
        finally:
            telemetry.sessions_open -= 1
            self.sessions.pop(task, None)
            session.close()
            services.limits.close(conn.remote_ip)
            await conn.close(1.0 if services.stopping else CLOSE_TIMEOUT)

    async def _serve(self, session: Session) -> None:
        from .commands.misc import capabilities

        greeting = untagged_status(
            "OK", f"{self.settings.hostname} mailstack IMAP ready", f"CAPABILITY {capabilities(session)}"
        )
        bye: str | None = None
        try:
            await command_loop.run(session, greeting)
        except EndSession as e:
            bye = e.text
        except asyncio.CancelledError:
            if session.kicked:
                bye = "session closed by the administrator"
            elif not session.services.stopping:
                raise
            else:
                bye = "server shutting down"
        except (ClientGone, ConnectionError, ssl.SSLError, asyncio.IncompleteReadError, TimeoutError) as e:
            log.debug("connection ended: %r", e)
        except Exception:
            log.exception("IMAP session failed")
            bye = "internal error"
        if bye:
            conn = session.conn
            assert isinstance(conn, StreamConnection)  # accept() made it; frame() compresses under COMPRESS
            with contextlib.suppress(Exception):
                conn.writer.write(conn.frame(untagged_status("BYE", bye)))
                await asyncio.wait_for(conn.writer.drain(), CLOSE_TIMEOUT)
