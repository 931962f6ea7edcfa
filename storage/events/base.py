"""The event bus: change hints published by the mailstore, consumed by IMAP sessions."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal, Protocol

# "resync" is synthesised by a subscription after it lost events (bus reconnect):
# the consumer must re-read state from the mailstore.
EventKind = Literal["new", "flags", "expunge", "mailbox", "resync"]


@dataclass(frozen=True, slots=True)
class ChangeEvent:
    account: str
    mailbox: str
    kind: EventKind
    uids: tuple[int, ...] = field(default=())
    modseq: int = 0
    uidvalidity: int = 0

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "a": self.account,
                "m": self.mailbox,
                "k": self.kind,
                "u": list(self.uids),
                "s": self.modseq,
                "v": self.uidvalidity,
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_json(cls, raw: bytes | str) -> ChangeEvent:
        d = json.loads(raw)
        return cls(d["a"], d["m"], d["k"], tuple(d.get("u", ())), int(d.get("s", 0)), int(d.get("v", 0)))


class Subscription(Protocol):
    """Events of one account, in publish order; iteration ends after close()."""

    def __aiter__(self) -> AsyncIterator[ChangeEvent]: ...

    async def close(self) -> None: ...


class EventBus(Protocol):
    async def publish(self, event: ChangeEvent) -> None:
        """Send a hint. Raises StorageUnavailable when the bus is down (callers log and go on)."""

    async def subscribe(self, account: str) -> Subscription:
        """Start receiving the account's events. Many subscriptions share one connection."""

    async def close(self) -> None: ...
