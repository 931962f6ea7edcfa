"""What every stream frontend (IMAP, POP3) does with its listeners: open the plain and the
implicit-TLS port, directly or behind a PROXY header (ADR 0007), and at shutdown let sessions
finish within a grace period."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ssl
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Protocol

from mailstack.services.common.config import Settings
from mailstack.services.common.proxy_listener import ProxyListener, stream_factory
from mailstack.services.common.proxy_protocol import parse_networks

TLS_HANDSHAKE_TIMEOUT = 30.0
CLOSE_TIMEOUT = 5.0

# accept(reader, writer, client_address=None, *, tls): client_address comes from a PROXY header
Accept = Callable[..., Awaitable[None]]


class Listener(Protocol):
    """The parts of asyncio.Server (and ProxyListener) the frontends use."""

    @property
    def sockets(self) -> Sequence[object]: ...
    def close(self) -> None: ...
    async def wait_closed(self) -> None: ...


async def open_listeners(
    settings: Settings,
    accept: Accept,
    ports: Sequence[tuple[str, int, bool]],
    tls_context: ssl.SSLContext,
    into: list[tuple[str, Listener]],
    read_limit: int = 2**16,
) -> None:
    """Listen on each (description, port, implicit TLS) and append it to `into` as it opens, so a
    failure part-way leaves the caller the ones to close."""
    for description, port, tls in ports:
        context = tls_context if tls else None
        handshake_timeout = TLS_HANDSHAKE_TIMEOUT if tls else None
        server: Listener
        if settings.proxy_protocol:
            proxied = ProxyListener(
                stream_factory(functools.partial(accept, tls=tls), read_limit),
                parse_networks(settings.proxy_trusted_networks),
                settings.proxy_header_timeout,
                ssl_context=context,
                ssl_handshake_timeout=handshake_timeout or TLS_HANDSHAKE_TIMEOUT,
            )
            await proxied.start(settings.bind, port, reuse_port=settings.reuse_port)
            server = proxied
        else:
            server = await asyncio.start_server(
                functools.partial(accept, tls=tls),
                settings.bind,
                port,
                ssl=context,
                ssl_handshake_timeout=handshake_timeout,
                limit=read_limit,
                reuse_port=settings.reuse_port or None,
            )
        into.append((description, server))


def addresses(servers: Iterable[tuple[str, Listener]]) -> list[tuple[str, str]]:
    """(description, "host:port") of every listening socket."""
    out = []
    for description, server in servers:
        for sock in server.sockets:
            host, port = sock.getsockname()[:2]  # type: ignore[attr-defined]
            out.append((description, f"{host}:{port}"))
    return out


async def shut_down(
    servers: Sequence[tuple[str, Listener]],
    sessions: Iterable[asyncio.Task[None]],
    idle: Callable[[asyncio.Task[None]], bool],
    grace: float,
) -> None:
    """Stop accepting; sessions waiting for the client (`idle`) are cancelled at once, busy ones
    get `grace` seconds to finish their command, then are cancelled too."""
    for _, server in servers:
        server.close()
    tasks = list(sessions)
    for task in tasks:
        if idle(task):
            task.cancel()
    if tasks:
        _, pending = await asyncio.wait(tasks, timeout=grace)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=CLOSE_TIMEOUT)
    for _, server in servers:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), CLOSE_TIMEOUT)
