"""Quota accounting: reserve at delivery/APPEND, release at expunge, recompute when counters drift."""

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class QuotaUsage:
    bytes: int
    messages: int


class QuotaStore(Protocol):
    # True when the metadata transaction itself checks the limits (embedded SQL quota):
    # reserve/release are then no-ops and the mailstore passes enforce_quota=True to metadata.
    enforced_by_metadata: bool

    async def reserve(self, account: str, size: int, count: int, limit_bytes: int, limit_messages: int) -> bool:
        """Atomically add (size, count) unless a non-zero limit would be exceeded. False = over quota."""

    async def release(self, account: str, size: int, count: int) -> None:
        """Give back what reserve added (never below zero)."""

    async def usage(self, account: str) -> QuotaUsage: ...

    async def set_usage(self, account: str, usage: QuotaUsage) -> None:
        """Overwrite the counters (recompute from metadata)."""

    async def intact(self) -> bool:
        """False when the counters may have been lost since mark_intact (a Redis restarted empty,
        or a failover to a replica behind): the mailstore then recomputes them all."""

    async def mark_intact(self) -> None:
        """Record that every counter was just recomputed."""

    async def close(self) -> None: ...
