"""One client connection of a stream frontend (IMAP, POP3) over asyncio streams: the client's
addresses, STARTTLS, and closing. The protocol's connection class adds reading and writing.

STARTTLS hands the connection to fresh streams: whatever plaintext the client sent after the
command stays behind in the old reader, never read, so a command injected into the plaintext
part cannot run inside the TLS session (RFC 3207 §6, RFC 2595 §4, RFC 9051 §6.2.1, RFC 7817 §3;
the CVE-2011-0411 kind of attack). No private buffer is touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from typing import cast

from mailstack.services.common.auth_log import local_ip_of
from mailstack.services.common.metrics import count_tls_handshake
from mailstack.services.common.span_attributes import Attributes, connection_attributes

TLS_HANDSHAKE_TIMEOUT = 30.0
CLOSE_TIMEOUT = 5.0


async def start_tls(
    writer: asyncio.StreamWriter, reply: bytes, context: ssl.SSLContext, limit: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Send `reply` (the OK to STARTTLS or STLS), then a TLS handshake as the server; the streams
    of the TLS session. Reading pauses before the reply goes out: the client's ClientHello (sent
    once it sees the reply) stays in the socket for the TLS layer."""
    transport = cast(asyncio.Transport, writer.transport)
    transport.pause_reading()
    writer.write(reply)
    await writer.drain()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=limit)
    protocol = asyncio.StreamReaderProtocol(reader)
    tls_transport = await loop.start_tls(
        transport, protocol, context, server_side=True, ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT
    )
    if tls_transport is None:  # the event loop's contract: None only for a transport already closed
        raise ConnectionResetError("connection closed during the TLS handshake")
    protocol.connection_made(tls_transport)  # loop.start_tls does not call it; it binds reader and transport
    return reader, asyncio.StreamWriter(tls_transport, protocol, reader, loop)


class StreamConnection:
    """The parts of a client connection IMAP and POP3 share (their session.Connection protocols)."""

    protocol = ""  # "imap", "pop3": the label of this connection's metrics

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        tls: bool,
        tls_context: ssl.SSLContext | None,
        read_limit: int,
        remote_ip: str = "",  # from a PROXY header (ADR 0007)
    ) -> None:
        self.reader = reader
        self.writer = writer
        self._tls = tls
        self._tls_context = tls_context
        self._read_limit = read_limit
        self._plaintext: asyncio.StreamWriter | None = None  # kept open under TLS (see start_tls)
        peer = writer.get_extra_info("peername")
        self._remote_ip = remote_ip or (str(peer[0]) if isinstance(peer, tuple) and peer else "")
        self._local_ip = local_ip_of(writer.get_extra_info("sockname"))

    @property
    def tls(self) -> bool:
        return self._tls

    @property
    def can_start_tls(self) -> bool:
        return self._tls_context is not None and not self._tls

    @property
    def remote_ip(self) -> str:
        return self._remote_ip

    def span_attributes(self, user: str) -> Attributes:
        """What a protocol span says about this connection: client, user, TLS (span_attributes.py)."""
        peer = self.writer.get_extra_info("peername")
        # behind a PROXY balancer the peer is the balancer: its port is not the client's
        port = int(peer[1]) if isinstance(peer, tuple) and len(peer) > 1 and peer[0] == self._remote_ip else None
        return connection_attributes(self._remote_ip, port, self.writer.get_extra_info("ssl_object"), user)

    @property
    def local_ip(self) -> str:
        return self._local_ip

    def forget_pending(self) -> None:
        """Drop what the protocol's receiver holds beyond the STARTTLS command (overridden)."""

    async def start_tls(self, reply: bytes) -> None:
        """Send `reply` and switch to TLS; nothing the client pipelined in plaintext is executed."""
        assert self._tls_context is not None
        self.forget_pending()
        # The plaintext writer must stay referenced: dropping it would close the socket under TLS.
        self._plaintext = self.writer
        try:
            self.reader, self.writer = await start_tls(self.writer, reply, self._tls_context, self._read_limit)
        except (OSError, ssl.SSLError, TimeoutError):
            count_tls_handshake(self.protocol, False)
            raise
        count_tls_handshake(self.protocol, True)
        self._tls = True

    async def close(self, wait: float = CLOSE_TIMEOUT) -> None:
        """Close; a TLS peer that never answers close_notify does not hold the caller."""
        if self.writer is self._plaintext:  # the handshake failed: asyncio closed the socket already
            self.writer.transport.abort()
            return
        self.writer.close()
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.wait_for(self.writer.wait_closed(), wait)
        self.writer.transport.abort()
