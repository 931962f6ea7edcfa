"""A listener for connections that may arrive through a PROXY-protocol load balancer (ADR 0007).

Connections from trusted networks must open with a PROXY header, read here straight from the
socket and never past its end: on an implicit-TLS port the ClientHello that follows stays in
the socket for the TLS layer. Then the socket is handed to asyncio (`connect_accepted_socket`,
with TLS where the port has it) and the service's protocol is built knowing the client's
address. Connections from elsewhere are served with their real address; a header they send
is never interpreted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable

from mailstack.services.common.proxy_protocol import (
    NeedData,
    Network,
    ProxyProtocolError,
    bytes_wanted,
    is_trusted,
    parse_header,
)

log = logging.getLogger("mailstack.proxy")

Address = tuple[str, int]
# Builds the service's protocol for one connection; the address is the client's (real or proxied).
ProtocolFactory = Callable[[Address], asyncio.BaseProtocol]
StreamCallback = Callable[[asyncio.StreamReader, asyncio.StreamWriter, Address | None], Awaitable[None]]


async def read_header(sock: socket.socket, header_timeout: float) -> Address | None:
    """Read one PROXY header from a non-blocking socket: the client's address, or None for the
    real peer (LOCAL / UNKNOWN). Raises ProxyProtocolError, TimeoutError or ConnectionError."""
    loop = asyncio.get_running_loop()
    data = b""
    async with asyncio.timeout(header_timeout):
        while True:
            result = parse_header(data)
            if not isinstance(result, NeedData):
                return result.source
            chunk = await loop.sock_recv(sock, bytes_wanted(data))
            if not chunk:
                raise ConnectionError("closed before the PROXY header ended")
            data += chunk


def stream_factory(callback: StreamCallback, limit: int = 2**16) -> Callable[[Address | None], asyncio.BaseProtocol]:
    """A protocol factory for asyncio-streams services (what asyncio.start_server builds); the
    address is the client's from a PROXY header, or None for the real peer."""

    def build(address: Address | None) -> asyncio.BaseProtocol:
        reader = asyncio.StreamReader(limit=limit)
        return asyncio.StreamReaderProtocol(reader, lambda r, w: callback(r, w, address))

    return build


class ProxyListener:
    """Listening sockets on host:port; the parts of asyncio.Server the services use
    (`sockets`, `close`, `wait_closed`)."""

    def __init__(
        self,
        factory: ProtocolFactory,
        trusted: tuple[Network, ...],
        header_timeout: float,
        ssl_context: ssl.SSLContext | None = None,
        ssl_handshake_timeout: float | None = None,
        on_handshake: Callable[[bool], None] | None = None,
    ) -> None:
        self.factory = factory
        self.trusted = trusted
        self.header_timeout = header_timeout
        self.ssl_context = ssl_context
        self.ssl_handshake_timeout = ssl_handshake_timeout
        self.on_handshake = on_handshake  # told whether each TLS handshake succeeded (a metric)
        self.sockets: list[socket.socket] = []
        self._accepting: list[asyncio.Task[None]] = []
        self._handshakes: set[asyncio.Task[None]] = set()

    async def start(self, host: str, port: int, reuse_port: bool = False) -> None:
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        try:
            for family, kind, proto, _, address in dict.fromkeys(infos):
                sock = socket.socket(family, kind, proto)
                self.sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if reuse_port:  # several processes on one port (settings.reuse_port)
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(address)
                sock.listen(100)
                sock.setblocking(False)
        except BaseException:
            self.close()
            raise
        self._accepting = [asyncio.create_task(self._accept_loop(sock)) for sock in self.sockets]

    def close(self) -> None:
        for task in (*self._accepting, *self._handshakes):
            task.cancel()
        for sock in self.sockets:
            sock.close()

    async def wait_closed(self) -> None:
        tasks = [*self._accepting, *self._handshakes]
        if tasks:
            await asyncio.wait(tasks)

    async def _accept_loop(self, listening: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, peer = await loop.sock_accept(listening)
            except OSError as e:  # e.g. EMFILE: keep the listener, slow down
                log.warning("accept failed", extra={"error": str(e)})
                await asyncio.sleep(0.1)
                continue
            task = asyncio.create_task(self._start_connection(sock, (str(peer[0]), int(peer[1]))))
            self._handshakes.add(task)
            task.add_done_callback(self._handshakes.discard)

    async def _start_connection(self, sock: socket.socket, peer: Address) -> None:
        loop = asyncio.get_running_loop()
        sock.setblocking(False)
        address = peer
        handshaking = False
        try:
            if is_trusted(peer[0], self.trusted):
                source = await read_header(sock, self.header_timeout)
                address = source or peer
                log.debug("PROXY header from %s: client %s", peer[0], address[0])
            handshaking = self.ssl_context is not None
            await loop.connect_accepted_socket(
                lambda: self.factory(address),
                sock,
                ssl=self.ssl_context,
                ssl_handshake_timeout=self.ssl_handshake_timeout if self.ssl_context else None,
            )
            if handshaking and self.on_handshake is not None:
                self.on_handshake(True)
        except (ProxyProtocolError, TimeoutError, OSError, ssl.SSLError) as e:
            # OSError covers ConnectionError; a trusted peer without a header is refused here
            if handshaking and self.on_handshake is not None:
                self.on_handshake(False)
            log.info(
                "connection closed before the protocol",
                extra={"remote_ip": peer[0], "error": str(e) or type(e).__name__},
            )
            with contextlib.suppress(OSError):
                sock.close()
        except asyncio.CancelledError:
            sock.close()
            raise
