"""The SMTP service: three listeners (inbound MX, submission, submission over TLS) and their lifecycle."""

from __future__ import annotations

import asyncio
import logging
import time

from mailstack.services.common.config import Settings
from mailstack.services.common.connection_limits import ConnectionLimiter
from mailstack.services.common.frontend import Frontend
from mailstack.services.common.grpc_client import mailstore_stub
from mailstack.services.outbound.stub import outbound_stub
from mailstack.services.smtp.checks.inbound import InboundChecks
from mailstack.services.smtp.handler import INBOUND, SUBMISSION, SUBMISSIONS, SmtpHandler
from mailstack.services.smtp.inflight import InflightBudget
from mailstack.services.smtp.lmtp import LMTP, LmtpHandler, lmtp_factory
from mailstack.services.smtp.protocol import SmtpProtocol, protocol_factory
from mailstack.services.smtp.recipient_cache import RecipientCache
from mailstack.services.smtp.spam_filter import SpamFilter

log = logging.getLogger("mailstack.smtp")


class SmtpServer(Frontend):
    grpc_identity = "smtp"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.limiter = ConnectionLimiter(settings.smtp_max_connections, settings.smtp_max_connections_per_ip)
        self.sessions: set[SmtpProtocol] = set()
        # Trusted only while the channel to the mailstore is up (no RPC needed to know that).
        self.recipients = RecipientCache(usable=self.mailstore_connected)
        self.inflight = InflightBudget(settings.smtp_inflight_bytes)  # shared by every listener's sessions
        self.checks: InboundChecks | None = None  # built by open(), for the MX port only

    async def open(self) -> None:
        settings = self.settings
        assert self.channel is not None
        # aiosmtpd logs every command at INFO on "mail.log"; our own log line per transaction is enough.
        if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
            logging.getLogger("mail.log").setLevel(logging.ERROR)
        stub, outbound = mailstore_stub(self.channel), outbound_stub(self.channel)
        self.checks = InboundChecks.from_settings(settings)
        for kind, port in ((INBOUND, settings.smtp_port), (SUBMISSION, settings.submission_port),
                           (SUBMISSIONS, settings.submissions_port)):  # fmt: skip
            handler = SmtpHandler(kind, settings, stub, outbound, self.recipients)
            handler.inflight = self.inflight
            handler.checks = None if kind.submission else self.checks
            if kind is INBOUND and settings.spam_filter_url:
                handler.spam_filter = SpamFilter(settings)
            factory = protocol_factory(handler, settings, self.limiter, self.sessions, self.tls_context)
            await self.listen(kind.name, port, kind.implicit_tls, factory)
        if settings.lmtp_port:  # RFC 2033, for an MTA in front; 0 = off
            lmtp = LmtpHandler(LMTP, settings, stub, None, self.recipients)
            lmtp.inflight = self.inflight
            factory = lmtp_factory(lmtp, settings, self.limiter, self.sessions)
            await self.listen("lmtp", settings.lmtp_port, False, factory)

    async def release(self) -> None:
        if self.checks is not None:
            await self.checks.close()

    async def drain(self, grace: float) -> None:
        """Idle sessions get 421 at once, a DATA in flight may finish within grace."""
        deadline = time.monotonic() + grace
        while True:
            for session in list(self.sessions):
                if not session.in_data:
                    session.close_for_shutdown()
            if not self.sessions or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.05)
        for session in list(self.sessions):
            if isinstance(session.transport, asyncio.Transport):
                session.transport.abort()
