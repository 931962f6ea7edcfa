"""The inbound checks of one SMTP process, built from the settings: what the MX handler calls at
RCPT (blocklists, greylisting) and at DATA (sender authentication)."""

from __future__ import annotations

from dataclasses import dataclass

from mailstack.services.common.config import Settings
from mailstack.services.smtp.checks.dmarc import organizational_domain
from mailstack.services.smtp.checks.dns import Resolver
from mailstack.services.smtp.checks.dnsbl import Dnsbl, parse_zones
from mailstack.services.smtp.checks.greylist import Greylist, GreylistStore, MemoryStore, RedisStore
from mailstack.services.smtp.checks.sender_auth import AuthVerdict, Policy, SenderAuth

SENDER_AUTH_MODES = ("off", "annotate", "enforce")


def greylist_store(settings: Settings) -> GreylistStore:
    """smtp_greylist_url, else the event bus's Redis when there is one, else this process."""
    url = settings.smtp_greylist_url or (settings.events_url if settings.events_url.startswith("redis") else "")
    if url.startswith(("redis://", "rediss://", "unix://")):
        return RedisStore(url)
    if url not in ("", "memory://"):
        raise ValueError(f"smtp_greylist_url: expected redis://... or memory://, got {url!r}")
    return MemoryStore()


@dataclass
class InboundChecks:
    sender_auth: SenderAuth | None
    dnsbl: Dnsbl | None
    greylist: Greylist | None

    @classmethod
    def from_settings(cls, settings: Settings) -> InboundChecks | None:
        """None when every check is off (no resolver, no store)."""
        mode = settings.smtp_sender_auth
        if mode not in SENDER_AUTH_MODES:
            raise ValueError(f"smtp_sender_auth: expected one of {', '.join(SENDER_AUTH_MODES)}, got {mode!r}")
        zones = parse_zones(settings.smtp_dnsbl_zones)
        if mode == "off" and not zones and settings.smtp_greylist_delay <= 0:
            return None
        resolver = Resolver(settings.dns_servers, settings.dns_timeout_ms / 1000)
        if mode != "off":
            organizational_domain("mail.example.com")  # the PSL is parsed now (~0.2 s), not in a DATA
        policy = Policy(
            authserv_id=settings.authserv_id or settings.hostname,
            enforce=mode == "enforce",
            quarantine_mailbox=settings.smtp_quarantine_mailbox,
            deadline=float(settings.smtp_auth_timeout),
        )
        return cls(
            sender_auth=SenderAuth(resolver, policy) if mode != "off" else None,
            dnsbl=Dnsbl(resolver, zones, settings.smtp_dnsbl_threshold) if zones else None,
            greylist=Greylist(
                greylist_store(settings),
                settings.smtp_greylist_delay,
                settings.smtp_greylist_retry_window,
                settings.smtp_greylist_lifetime,
            )
            if settings.smtp_greylist_delay > 0
            else None,
        )

    async def at_recipient(self, client_ip: str, sender: str, recipient: str) -> tuple[str, str] | None:
        """(reply, reason) when this recipient is refused for who is sending."""
        if self.dnsbl is not None:
            refusal = await self.dnsbl.refusal(client_ip)
            if refusal is not None:
                return refusal, "dnsbl"
        if self.greylist is not None:
            refusal = await self.greylist.refusal(client_ip, sender, recipient)
            if refusal is not None:
                return refusal, "greylisted"
        return None

    async def at_data(self, client_ip: str, helo: str, sender: str, content: bytes) -> AuthVerdict | None:
        if self.sender_auth is None:
            return None
        return await self.sender_auth.check(client_ip, helo, sender, content)

    async def close(self) -> None:
        if self.greylist is not None:
            await self.greylist.store.close()
