"""Who is logged in where (`mailstack who`), and closing an account's sessions (`mailstack kick`):
the frontends report their sessions and learn the kick orders in the same call."""

from __future__ import annotations

import time
from collections.abc import Sequence

from mailstack.message import names
from mailstack.services.common.config import Settings
from mailstack.services.mailstore.core.errors import InvalidRequest
from mailstack.storage.sessions.base import KickOrder, SessionDirectory, SessionRecord

PROTOCOLS = ("imap", "pop3")
MAX_TTL = 600.0


class Sessions:
    def __init__(self, directory: SessionDirectory, settings: Settings) -> None:
        self.directory = directory
        self.settings = settings

    async def report(self, frontend: str, records: Sequence[SessionRecord], ttl: float) -> list[KickOrder]:
        if not frontend or len(frontend) > 200:
            raise InvalidRequest("a frontend name of 1..200 characters is required")
        await self.directory.report(frontend, records, min(max(ttl, 1.0), MAX_TTL))
        return await self.directory.kicks()

    async def list(self, account: str = "") -> list[SessionRecord]:
        return await self.directory.sessions(self._account(account) if account else "")

    async def kick(self, account: str, protocol: str = "") -> int:
        """Order the account's sessions closed; every frontend sees the order at its next report
        (within session_report_seconds). The answer counts the sessions listed now."""
        if protocol not in ("", *PROTOCOLS):
            raise InvalidRequest(f"protocol must be one of {', '.join(PROTOCOLS)} (or empty for all)")
        account = self._account(account)
        order = KickOrder(account, protocol, time.time())
        await self.directory.kick(order, 3 * self.settings.session_report_seconds)
        listed = await self.directory.sessions(account)
        return sum(1 for s in listed if not protocol or s.protocol == protocol)

    @staticmethod
    def _account(name: str) -> str:
        try:
            return names.normalize_address(name)
        except names.InvalidNameError as e:
            raise InvalidRequest(str(e)) from None

    async def close(self) -> None:
        await self.directory.close()
