"""The SMTP service: three listeners (inbound MX, submission, submission over TLS) and their lifecycle."""

from __future__ import annotations

import asyncio
import logging
import time

import grpc
import grpc.aio
from mailstack.services.common.config import Settings
from mailstack.services.common.connection_limits import ConnectionLimiter
from mailstack.services.common.grpc_client import identity_for, mailstore_stub, open_channel
from mailstack.services.common.proxy_listener import ProxyListener
from mailstack.services.common.proxy_protocol import parse_networks
from mailstack.services.common.tls import ensure_self_signed, server_ssl_context
from mailstack.services.outbound.stub import outbound_stub
from mailstack.services.smtp.handler import INBOUND, SUBMISSION, SUBMISSIONS, ListenerKind, SmtpHandler
from mailstack.services.smtp.inflight import InflightBudget
from mailstack.services.smtp.protocol import SmtpProtocol, protocol_factory, proxied_protocol_factory
from mailstack.services.smtp.recipient_cache import RecipientCache

log = logging.getLogger("mailstack.smtp")


class SmtpServer:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.limiter = ConnectionLimiter(settings.smtp_max_connections, settings.smtp_max_connections_per_ip)
        self.sessions: set[SmtpProtocol] = set()
        # Trusted only while the channel to the mailstore is up (no RPC needed to know that).
        self.recipients = RecipientCache(usable=self._mailstore_connected)
        self.inflight = InflightBudget(settings.smtp_inflight_bytes)  # shared by every listener's sessions
        self._servers: list[tuple[ListenerKind, asyncio.Server | ProxyListener]] = []
        self._channel: grpc.aio.Channel | None = None
        self._closed = asyncio.Event()

    def _mailstore_connected(self) -> bool:
        channel = self._channel
        return channel is not None and channel.get_state() == grpc.ChannelConnectivity.READY

    @property
    def listeners(self) -> list[tuple[str, str]]:
        out = []
        for kind, server in self._servers:
            host, port = server.sockets[0].getsockname()[:2]
            out.append((kind.name, f"{host}:{port}"))
        return out

    async def start(self) -> None:
        settings = self.settings
        # aiosmtpd logs every command at INFO on "mail.log"; our own log line per transaction is enough.
        if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
            logging.getLogger("mail.log").setLevel(logging.ERROR)
        cert, key = settings.effective_tls_cert, settings.effective_tls_key
        if not settings.tls_cert:  # self-signed on first start (a no-op when the files exist)
            await asyncio.to_thread(ensure_self_signed, cert, key, settings.hostname)
        tls = await asyncio.to_thread(server_ssl_context, cert, key)
        self._channel = open_channel(settings.mailstore_addr, await asyncio.to_thread(identity_for, settings, "smtp"))
        stub = mailstore_stub(self._channel)
        loop = asyncio.get_running_loop()
        ports = [
            (INBOUND, settings.smtp_port),
            (SUBMISSION, settings.submission_port),
            (SUBMISSIONS, settings.submissions_port),
        ]
        try:
            for kind, port in ports:
                handler = SmtpHandler(kind, settings, stub, outbound_stub(self._channel), self.recipients)
                handler.inflight = self.inflight
                if settings.proxy_protocol:  # ADR 0007: the header comes before TLS on 465
                    proxied = ProxyListener(
                        proxied_protocol_factory(handler, settings, self.limiter, self.sessions, tls),
                        parse_networks(settings.proxy_trusted_networks),
                        settings.proxy_header_timeout,
                        ssl_context=tls if kind.implicit_tls else None,
                    )
                    await proxied.start(settings.bind, port, reuse_port=settings.reuse_port)
                    self._servers.append((kind, proxied))
                    continue
                factory = protocol_factory(handler, settings, self.limiter, self.sessions, tls)
                server = await loop.create_server(
                    factory,
                    host=settings.bind,
                    port=port,
                    ssl=tls if kind.implicit_tls else None,
                    reuse_address=True,
                    reuse_port=settings.reuse_port or None,
                )
                self._servers.append((kind, server))
        except BaseException:
            await self._close_listeners()
            raise
        for name, address in self.listeners:
            log.info("smtp %s listening on %s", name, address)

    async def _close_listeners(self) -> None:
        for _, server in self._servers:
            server.close()
        for _, server in self._servers:
            await server.wait_closed()

    async def stop(self, grace: float = 10.0) -> None:
        """Stop accepting; idle sessions get 421 at once, a DATA in flight may finish within grace."""
        for _, server in self._servers:
            server.close()
        for session in list(self.sessions):
            if not session.in_data:
                session.close_for_shutdown()
        deadline = time.monotonic() + grace
        while self.sessions and time.monotonic() < deadline:
            for session in list(self.sessions):
                if not session.in_data:
                    session.close_for_shutdown()
            await asyncio.sleep(0.05)
        for session in list(self.sessions):
            if isinstance(session.transport, asyncio.Transport):
                session.transport.abort()
        await self._close_listeners()
        if self._channel is not None:
            await self._channel.close(None)
            self._channel = None
        self._closed.set()

    async def wait_closed(self) -> None:
        await self._closed.wait()
