"""The session directory in the mailstore's memory: one mailstore process (the embedded default,
or one mailstore with frontends in other processes)."""

from __future__ import annotations

import time
from collections.abc import Sequence

from mailstack.storage.sessions.base import MAX_SESSIONS_PER_REPORT, KickOrder, SessionRecord


class MemorySessionDirectory:
    def __init__(self) -> None:
        self._lists: dict[str, tuple[float, tuple[SessionRecord, ...]]] = {}  # frontend -> (expiry, sessions)
        self._kicks: dict[tuple[str, str], tuple[float, KickOrder]] = {}  # (account, protocol) -> (expiry, order)

    async def report(self, frontend: str, sessions: Sequence[SessionRecord], ttl: float) -> None:
        if len(sessions) > MAX_SESSIONS_PER_REPORT:
            raise ValueError(f"more than {MAX_SESSIONS_PER_REPORT} sessions in one report")
        self._expire()
        if sessions:
            self._lists[frontend] = (time.monotonic() + ttl, tuple(sessions))
        else:
            self._lists.pop(frontend, None)

    async def sessions(self, account: str = "") -> list[SessionRecord]:
        self._expire()
        found = [s for _, listed in self._lists.values() for s in listed if not account or s.account == account]
        return sorted(found, key=lambda s: s.started)

    async def kick(self, order: KickOrder, ttl: float) -> None:
        self._kicks[(order.account, order.protocol)] = (time.monotonic() + ttl, order)

    async def kicks(self) -> list[KickOrder]:
        self._expire()
        return [order for _, order in self._kicks.values()]

    def _expire(self) -> None:
        now = time.monotonic()
        for frontend in [f for f, (expiry, _) in self._lists.items() if expiry <= now]:
            del self._lists[frontend]
        for key in [k for k, (expiry, _) in self._kicks.items() if expiry <= now]:
            del self._kicks[key]

    async def close(self) -> None:
        self._lists.clear()
        self._kicks.clear()
