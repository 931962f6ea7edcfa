"""The session directory: which logged-in IMAP and POP3 sessions the frontends hold (`mailstack who`)
and which the operator asked to close (`mailstack kick`). Frontends report their whole list every
few seconds with a time to live, so a frontend that dies drops out by itself."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Protocol

MAX_SESSIONS_PER_REPORT = 100_000  # one frontend process; a larger report is refused, not truncated


@dataclass(frozen=True, slots=True)
class SessionRecord:
    frontend: str  # the reporting process: host, pid and a random part
    protocol: str  # "imap", "pop3"
    account: str
    remote_ip: str
    tls: bool
    started: float  # unix time of the login


@dataclass(frozen=True, slots=True)
class KickOrder:
    """Close the sessions of `account` (of `protocol`, or all when empty) that logged in at or
    before `before`: a session opened after the order is left alone."""

    account: str
    protocol: str
    before: float


def records_to_json(records: Sequence[SessionRecord]) -> bytes:
    return json.dumps([asdict(r) for r in records], separators=(",", ":")).encode()


def records_from_json(raw: bytes | str) -> list[SessionRecord]:
    return [SessionRecord(**item) for item in json.loads(raw)]


class SessionDirectory(Protocol):
    async def report(self, frontend: str, sessions: Sequence[SessionRecord], ttl: float) -> None:
        """Replace `frontend`'s list; it expires after `ttl` seconds unless reported again."""

    async def sessions(self, account: str = "") -> list[SessionRecord]:
        """Every listed session (of one account), oldest login first."""

    async def kick(self, order: KickOrder, ttl: float) -> None:
        """Publish an order for `ttl` seconds: every frontend reporting within that time sees it."""

    async def kicks(self) -> list[KickOrder]:
        """The orders not yet expired."""

    async def close(self) -> None: ...
