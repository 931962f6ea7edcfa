"""A frontend's listening sockets: a mail port, plain or implicit TLS, directly or behind a PROXY
header (ADR 0007); the same for every frontend, whatever protocol object serves a connection."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from mailstack.services.common.config import Settings
from mailstack.services.common.proxy_listener import Address, ProxyListener
from mailstack.services.common.proxy_protocol import parse_networks
from mailstack.services.common.stream_connection import TLS_HANDSHAKE_TIMEOUT

# Builds the protocol of one connection; the address is the client's from a PROXY header, else None.
ConnectionFactory = Callable[[Address | None], asyncio.BaseProtocol]


class Listener(Protocol):
    """The parts of asyncio.Server (and ProxyListener) the frontends use."""

    @property
    def sockets(self) -> Sequence[object]: ...
    def close(self) -> None: ...
    async def wait_closed(self) -> None: ...


async def open_listener(
    settings: Settings,
    factory: ConnectionFactory,
    port: int,
    tls_context: ssl.SSLContext | None,
    on_handshake: Callable[[bool], None] | None = None,
) -> Listener:
    """Listen on settings.bind:port; with TLS from the first byte when tls_context is given (each
    handshake's success or failure goes to on_handshake)."""
    # Implicit TLS goes through ProxyListener (trusting no network when PROXY is off): asyncio's own
    # server hides a failed handshake, which the TLS handshake metric must count.
    if settings.proxy_protocol or tls_context is not None:  # the header comes before TLS on implicit-TLS ports
        proxied = ProxyListener(
            factory,
            parse_networks(settings.proxy_trusted_networks) if settings.proxy_protocol else (),
            settings.proxy_header_timeout,
            ssl_context=tls_context,
            ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT,
            on_handshake=on_handshake,
        )
        await proxied.start(settings.bind, port, reuse_port=settings.reuse_port)
        return proxied
    return await asyncio.get_running_loop().create_server(
        lambda: factory(None),
        settings.bind,
        port,
        reuse_address=True,
        reuse_port=settings.reuse_port or None,
    )


def addresses(servers: Iterable[tuple[str, Listener]]) -> list[tuple[str, str]]:
    """(description, "host:port") of every listening socket."""
    out = []
    for description, server in servers:
        for sock in server.sockets:
            host, port = sock.getsockname()[:2]  # type: ignore[attr-defined]
            out.append((description, f"{host}:{port}"))
    return out
