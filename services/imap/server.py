"""The asyncio IMAP server: STARTTLS on imap_port, implicit TLS on imaps_port (RFC 8314).

It accepts, enforces connection limits, reads into the session's receiver and writes what the
session sends; the session decides everything else. On stop every session is told `* BYE`
(IDLE ones included) and closed after the grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl

import grpc.aio
from mailstack.services.common.auth_log import connection_refused, local_ip_of
from mailstack.services.common.config import Settings
from mailstack.services.common.grpc_client import identity_for, mailstore_stub, open_channel
from mailstack.services.common.listeners import (
    CLOSE_TIMEOUT,
    TLS_HANDSHAKE_TIMEOUT,
    Listener,
    addresses,
    open_listeners,
    shut_down,
)
from mailstack.services.common.metrics import IMAP_READ_AHEAD_BYTES
from mailstack.services.common.read_ahead import ReadAheadBudget
from mailstack.services.common.tls import ensure_self_signed, server_ssl_context

from . import command_loop, telemetry
from .limits import ConnectionLimits
from .notifier import Notifier
from .protocol import CommandReceiver
from .protocol.encoder import Buffer, untagged_status
from .registry import GRAMMAR
from .session import ClientGone, EndSession, Services, Session

log = logging.getLogger("mailstack.imap")

READ_SIZE = 64 * 1024
WRITE_TIMEOUT = 300.0  # a client that stops reading is dropped


class StreamConnection:
    """One client connection over asyncio streams (implements session.Connection)."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        receiver: CommandReceiver,
        tls: bool,
        tls_context: ssl.SSLContext | None,
        remote_ip: str = "",  # from a PROXY header (ADR 0007)
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.receiver = receiver
        self._tls = tls
        self._tls_context = tls_context
        peer = writer.get_extra_info("peername")
        self._remote_ip = remote_ip or (str(peer[0]) if isinstance(peer, tuple) and peer else "")

    @property
    def tls(self) -> bool:
        return self._tls

    @property
    def can_start_tls(self) -> bool:
        return self._tls_context is not None and not self._tls

    @property
    def remote_ip(self) -> str:
        return self._remote_ip

    @property
    def local_ip(self) -> str:
        return local_ip_of(self.writer.get_extra_info("sockname"))

    async def send(self, buffers: list[Buffer]) -> None:
        self.writer.writelines(buffers)  # passthrough: a body literal is never joined here
        await asyncio.wait_for(self.writer.drain(), WRITE_TIMEOUT)

    async def read_more(self, wait: float | None) -> None:
        if wait is None:
            data = await self.reader.read(READ_SIZE)
        else:
            data = await asyncio.wait_for(self.reader.read(READ_SIZE), wait)
        if not data:
            raise ClientGone
        self.receiver.receive_data(data)

    async def start_tls(self, ready: bytes) -> None:
        """Send the OK and switch to TLS. Reading pauses before the OK goes out: the client's
        ClientHello must reach the TLS layer, not the plaintext buffer."""
        assert self._tls_context is not None
        self.writer.transport.pause_reading()  # type: ignore[attr-defined]
        await self.send([ready])
        await self.writer.start_tls(self._tls_context, ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT)
        self._tls = True


class ImapServer:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._servers: list[tuple[str, Listener]] = []
        self._channel: grpc.aio.Channel | None = None
        self._services: Services | None = None
        self._tls_context: ssl.SSLContext | None = None
        self._tasks: dict[asyncio.Task[None], Session | None] = {}
        self._closed = asyncio.Event()

    @property
    def listeners(self) -> list[tuple[str, str]]:
        return addresses(self._servers)

    @property
    def session_count(self) -> int:
        return len(self._tasks)

    async def start(self) -> None:
        settings = self.settings
        cert, key = settings.effective_tls_cert, settings.effective_tls_key
        if not settings.tls_cert:
            await asyncio.to_thread(ensure_self_signed, cert, key, settings.hostname)
        self._tls_context = server_ssl_context(cert, key)
        self._channel = open_channel(settings.mailstore_addr, await asyncio.to_thread(identity_for, settings, "imap"))
        stub = mailstore_stub(self._channel)
        notifier = Notifier(settings.events_url, stub)
        await notifier.start()
        self._services = Services(
            settings=settings,
            read_ahead=ReadAheadBudget(settings.imap_read_ahead_bytes, IMAP_READ_AHEAD_BYTES.set),
            stub=stub,
            notifier=notifier,
            limits=ConnectionLimits(
                settings.imap_max_connections,
                settings.imap_max_connections_per_ip,
                settings.imap_max_connections_per_user,
            ),
        )
        try:
            ports = [("IMAP (STARTTLS)", settings.imap_port, False), ("IMAPS", settings.imaps_port, True)]
            await open_listeners(settings, self._accept, ports, self._tls_context, self._servers, READ_SIZE)
        except BaseException:
            await self.stop(0)
            raise

    async def stop(self, grace: float) -> None:
        """Stop accepting; sessions waiting for a command (or IDLE) get `* BYE` at once, busy
        ones finish their command within `grace` seconds or are cut off with a BYE."""
        if self._services is not None:
            self._services.stopping = True
        await shut_down(self._servers, self._tasks, self._waiting, grace)
        if self._services is not None:
            await self._services.notifier.stop()
        if self._channel is not None:
            await self._channel.close(None)
            self._channel = None
        self._closed.set()

    def _waiting(self, task: asyncio.Task[None]) -> bool:
        """Not inside a command (or in IDLE): safe to end with `* BYE` at once."""
        session = self._tasks.get(task)
        return session is None or session.waiting

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
        services = self._services
        assert task is not None and services is not None
        settings = self.settings
        receiver = CommandReceiver(GRAMMAR, settings.imap_max_line, settings.max_message_size)
        remote_ip = client_address[0] if client_address else ""
        conn = StreamConnection(reader, writer, receiver, tls, None if tls else self._tls_context, remote_ip)
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
        self._tasks[task] = session
        telemetry.sessions_open += 1
        try:
            await self._serve(session)
        finally:
            telemetry.sessions_open -= 1
            self._tasks.pop(task, None)
            session.close()
            services.limits.close(conn.remote_ip)
            writer.close()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                # a TLS peer that never answers close_notify must not hold the task
                await asyncio.wait_for(writer.wait_closed(), 1.0 if services.stopping else CLOSE_TIMEOUT)
            writer.transport.abort()

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
            if not session.services.stopping:
                raise
            bye = "server shutting down"
        except (ClientGone, ConnectionError, ssl.SSLError, asyncio.IncompleteReadError, TimeoutError) as e:
            log.debug("connection ended: %r", e)
        except Exception:
            log.exception("IMAP session failed")
            bye = "internal error"
        if bye:
            with contextlib.suppress(Exception):
                session.conn.writer.write(untagged_status("BYE", bye))  # type: ignore[attr-defined]
                await asyncio.wait_for(session.conn.writer.drain(), CLOSE_TIMEOUT)  # type: ignore[attr-defined]
