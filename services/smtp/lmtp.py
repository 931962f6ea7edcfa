"""LMTP (RFC 2033): mailstack as the mail store behind an MTA such as Postfix.

The SMTP listener's protocol and handler with LMTP's differences:
- LHLO instead of HELO/EHLO (RFC 2033 §4.1), which are refused;
- after the final "." one reply per accepted RCPT, in RCPT order (§4.2): each recipient is
  stored, deferred (452 over quota) or refused (552 too big for the mailbox) on its own, so
  the MTA retries or bounces only that one;
- only clients from lmtp_trusted_networks may connect: the port takes mail for any local
  user without the checks of the MX, as a local delivery agent (others get 554 and a close);
- no AUTH, no STARTTLS (a trusted network), no CHUNKING.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable

from aiosmtpd.smtp import Envelope, Session, syntax
from mailstack.services.common.auth_log import connection_refused, local_ip_of
from mailstack.services.common.config import Settings
from mailstack.services.common.connection_limits import ConnectionLimiter
from mailstack.services.smtp import replies
from mailstack.services.smtp.data import DataProblem
from mailstack.services.smtp.handler import ListenerKind, SmtpHandler, count
from mailstack.services.smtp.protocol import SmtpProtocol
from mailstack.v1 import mailstore_pb2 as pb

log = logging.getLogger("mailstack.smtp")

LMTP = ListenerKind("lmtp", submission=False, implicit_tls=False)
UNTRUSTED = "554 5.7.1 LMTP is not available to this network"
NOT_LMTP = "500 5.5.1 Error: this is an LMTP server, say LHLO"
NO_BDAT = "502 5.5.1 BDAT is not offered on LMTP; closing"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def trusted_networks(text: str) -> list[Network]:
    """The CIDRs of lmtp_trusted_networks (ValueError names a bad one)."""
    networks = []
    for item in (part.strip() for part in text.split(",")):
        if item:
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                raise ValueError(f"lmtp_trusted_networks: not a network: {item!r}") from None
    return networks


def is_trusted(ip: str, networks: list[Network]) -> bool:
    try:
        address = ipaddress.ip_address(ip.removeprefix("::ffff:") if "." in ip else ip)
    except ValueError:
        return False
    return any(address in network for network in networks)


def recipient_line(queue_id: str, result: pb.RecipientResult) -> str:
    """The reply for one recipient after DATA (RFC 2033 §4.2)."""
    if result.status == pb.RECIPIENT_LOCAL:
        return f"250 2.0.0 <{result.recipient}> Ok: delivered as {queue_id}"
    return replies.RECIPIENT_REPLIES.get(result.status, replies.TEMP_FAILURE)


class LmtpHandler(SmtpHandler):
    """SmtpHandler with a reply per recipient."""

    async def handle_EHLO(
        self, server: SmtpProtocol, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        lines = await super().handle_EHLO(server, session, envelope, hostname, responses)
        return [line for line in lines if line not in ("250-CHUNKING", "250-STARTTLS")]

    def trace_protocol(self, server: SmtpProtocol, session: Session) -> str:
        return "LMTP"  # RFC 3848 §2

    async def handle_RCPT(
        self, server: SmtpProtocol, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        repeated = address in envelope.rcpt_tos
        reply = await super().handle_RCPT(server, session, envelope, address, rcpt_options)
        if repeated and reply.startswith("250"):
            envelope.rcpt_tos.append(address)  # a reply per accepted RCPT, a repeated one too
        return reply

    async def handle_DATA(self, server: SmtpProtocol, session: Session, envelope: Envelope) -> str:
        accepted = len(envelope.rcpt_tos)
        reply = await super().handle_DATA(server, session, envelope)
        return per_recipient(reply, accepted)

    @staticmethod
    def _data_reply(queue_id: str, results: list[pb.RecipientResult]) -> tuple[str, str]:
        failed = [r for r in results if r.status != pb.RECIPIENT_LOCAL]
        reason = pb.RecipientStatus.Name(failed[0].status).lower() if failed else "accepted"
        return "\r\n".join(recipient_line(queue_id, r) for r in results), reason


def per_recipient(reply: str, accepted: int) -> str:
    """A reply for the whole transaction (storage down, too big, ...) repeated for each recipient."""
    if reply.count("\r\n") + 1 == accepted:
        return reply
    return "\r\n".join([replies.enhance(reply)] * accepted)


class LmtpProtocol(SmtpProtocol):
    def __init__(
        self,
        handler: SmtpHandler,
        settings: Settings,
        limiter: ConnectionLimiter,
        sessions: set[SmtpProtocol],
        networks: list[Network],
        client_address: tuple[str, int] | None = None,
    ) -> None:
        super().__init__(handler, settings, limiter, sessions, None, client_address)
        self.__ident__ = "LMTP mailstack"
        self.networks = networks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.transport is None:
            peer = self.client_address or transport.get_extra_info("peername")
            ip = str(peer[0]) if isinstance(peer, tuple) and peer else ""
            if not is_trusted(ip, self.networks):
                self.refused = True  # before the limiter and aiosmtpd: nothing to release
                connection_refused("lmtp", "untrusted_network", ip, local_ip_of(transport.get_extra_info("sockname")))
                count("rejected", "lmtp_untrusted_network")
                assert isinstance(transport, asyncio.WriteTransport)
                transport.write(UNTRUSTED.encode() + b"\r\n")
                transport.close()
                return
        super().connection_made(transport)

    @syntax("LHLO hostname")
    async def smtp_LHLO(self, hostname: str) -> None:
        # RFC 2033 §4.1: LHLO is EHLO's twin
        await SmtpProtocol.smtp_EHLO(self, hostname)

    async def smtp_HELO(self, hostname: str) -> None:
        await self.push(NOT_LMTP)

    async def smtp_EHLO(self, hostname: str) -> None:
        await self.push(NOT_LMTP)

    async def smtp_BDAT(self, arg: str) -> None:
        # Not advertised; its chunk cannot be told from commands once refused, so the session ends.
        await self.push(NO_BDAT)
        assert self.transport is not None
        self.transport.close()

    def _refuse(self, problem: DataProblem) -> str:
        assert self.envelope is not None
        return per_recipient(super()._refuse(problem), len(self.envelope.rcpt_tos))


def lmtp_factory(
    handler: SmtpHandler, settings: Settings, limiter: ConnectionLimiter, sessions: set[SmtpProtocol]
) -> Callable[[tuple[str, int] | None], SmtpProtocol]:
    networks = trusted_networks(settings.lmtp_trusted_networks)
    return lambda address: LmtpProtocol(handler, settings, limiter, sessions, networks, address)
