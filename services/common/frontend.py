"""The skeleton every frontend service (smtp, imap, pop3, outbound) is built on.

start: the TLS certificate (self-signed on first start), the channel to the mailstore with the
service's own mTLS identity (ADR 0009), then the service's `open` (what its sessions share, its
listeners). stop(grace): stop accepting, `drain` (the service tells its sessions and lets busy
ones finish within grace), close the listeners, `release`, close the channel. `ready` is what the
readiness probe asks of the service.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import ssl
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import grpc
import grpc.aio
from mailstack.services.common.certificates import CertificateStore, parse_pairs
from mailstack.services.common.config import Settings
from mailstack.services.common.grpc_client import identity_for
from mailstack.services.common.listeners import ConnectionFactory, Listener, addresses, open_listener
from mailstack.services.common.local_channel import mailstore_channel
from mailstack.services.common.metrics import count_tls_handshake
from mailstack.services.common.proxy_listener import stream_factory
from mailstack.services.common.stream_connection import CLOSE_TIMEOUT
from mailstack.services.common.tls import ensure_self_signed

log = logging.getLogger("mailstack.frontend")


async def server_tls(settings: Settings) -> CertificateStore:
    """The mail listeners' certificates (the default first, then the SNI ones); a self-signed
    default on first start when none is set. Watched for changes from `start()` on."""
    cert, key = settings.effective_tls_cert, settings.effective_tls_key
    if not settings.tls_cert:  # a no-op when the files exist
        await asyncio.to_thread(ensure_self_signed, cert, key, settings.hostname)
    pairs = [(cert, key), *parse_pairs(settings.tls_certificates)]
    return await asyncio.to_thread(CertificateStore, pairs, settings.tls_reload_interval)


class Frontend:
    """Subclasses set `grpc_identity` and implement `open`; `drain` and `release` as needed."""

    grpc_identity: ClassVar[str]  # smtp, imap, pop3, outbound: what the mailstore authorizes (ADR 0009)
    serves_mail: ClassVar[bool] = True  # mail ports, hence a TLS certificate

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.servers: list[tuple[str, Listener]] = []
        self.channel: grpc.aio.Channel | None = None
        self.tls_context: ssl.SSLContext | None = None  # one for the listeners' life; certificates swap inside
        self.certificates: CertificateStore | None = None
        self.stopping = False
        self._started = False
        self._closed = asyncio.Event()

    @property
    def listeners(self) -> list[tuple[str, str]]:
        return addresses(self.servers)

    @property
    def address(self) -> str:
        """The first listener's "host:port" ("" before start)."""
        found = self.listeners
        return found[0][1] if found else ""

    @property
    def ready(self) -> bool:
        """Started and not stopping (whether the mailstore answers, the readiness probe asks it)."""
        return self._started and not self.stopping

    def mailstore_connected(self) -> bool:
        """The channel to the mailstore is up (known without an RPC)."""
        channel = self.channel
        return channel is not None and channel.get_state() == grpc.ChannelConnectivity.READY

    async def start(self) -> None:
        settings = self.settings
        if self.serves_mail:
            self.certificates = await server_tls(settings)
            self.certificates.start()
            self.tls_context = self.certificates.context
        identity = await asyncio.to_thread(identity_for, settings, self.grpc_identity)
        self.channel = mailstore_channel(settings, identity)  # in-process when the mailstore runs here
        try:
            await self.open()
        except BaseException:
            await self.stop(0)
            raise
        self._started = True
        for description, address in self.listeners:
            log.info("listening", extra={"service": self.grpc_identity, "listener": description, "address": address})

    async def open(self) -> None:
        """Build what the sessions share and open the listeners (with `listen`)."""
        raise NotImplementedError

    async def listen(self, description: str, port: int, implicit_tls: bool, factory: ConnectionFactory) -> None:
        """Open one listener; kept at once, so a failure part-way leaves stop() the ones to close."""
        context = self.tls_context if implicit_tls else None
        on_handshake = functools.partial(count_tls_handshake, self.grpc_identity)
        self.servers.append((description, await open_listener(self.settings, factory, port, context, on_handshake)))

    async def stop(self, grace: float = 10.0) -> None:
        self.stopping = True
        for _, server in self.servers:
            server.close()
        await self.drain(grace)
        for _, server in self.servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), CLOSE_TIMEOUT)
        await self.release()
        if self.certificates is not None:
            await self.certificates.close()
        if self.channel is not None:
            await self.channel.close(None)
            self.channel = None
        self._closed.set()

    async def drain(self, grace: float) -> None:
        """Tell the sessions; idle ones end now, busy ones within `grace` seconds."""

    async def release(self) -> None:
        """Close what `open` built, besides the listeners and the channel."""

    async def wait_closed(self) -> None:
        await self._closed.wait()


class StreamFrontend(Frontend):
    """A frontend serving each connection in a task over asyncio streams (IMAP, POP3)."""

    READ_SIZE = 64 * 1024

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.sessions: dict[asyncio.Task[None], Any] = {}  # what each connection's task serves

    async def listen_streams(self, ports: Sequence[tuple[str, int, bool]]) -> None:
        """(description, port, implicit TLS): each connection runs accept(reader, writer, address, tls=)."""
        for description, port, implicit_tls in ports:
            accept = functools.partial(self.accept, tls=implicit_tls)
            await self.listen(description, port, implicit_tls, stream_factory(accept, self.READ_SIZE))

    async def accept(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        client_address: tuple[str, int] | None = None,
        *,
        tls: bool,
    ) -> None:
        raise NotImplementedError

    def waiting(self, task: asyncio.Task[None]) -> bool:
        """Whether the session of `task` waits for the client (safe to end at once)."""
        raise NotImplementedError

    async def drain(self, grace: float) -> None:
        await drain_tasks(list(self.sessions), self.waiting, grace)


async def drain_tasks(
    tasks: Sequence[asyncio.Task[None]], waiting: Callable[[asyncio.Task[None]], bool], grace: float
) -> None:
    """Cancel the tasks waiting for their client at once; busy ones get `grace` seconds to finish
    their command, then are cancelled too."""
    for task in tasks:
        if waiting(task):
            task.cancel()
    if tasks:
        _, pending = await asyncio.wait(tasks, timeout=grace)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=CLOSE_TIMEOUT)
