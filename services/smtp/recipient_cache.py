"""A short-lived cache of RCPT answers, so a repeat recipient skips the ResolveRecipient RPC.

Advisory state, like Postfix's address verification cache: the mailstore's Deliver
checks every recipient again at DATA, so a stale entry can only move a refusal from
RCPT to DATA (where a recipient that was not stored is never answered 250). Only
"local" answers are kept: a cached refusal would keep refusing a just-created account,
and quota answers (over quota, temporary failure) change with every delivery.
"""

from __future__ import annotations

import time
from collections.abc import Callable

TTL = 5.0  # seconds an answer is trusted
MAX_ENTRIES = 10_000  # bounds the memory per SMTP process (~2 MiB)


class RecipientCache:
    """address -> the largest SIZE= for which the mailstore answered "local", for `ttl` seconds."""

    def __init__(
        self,
        ttl: float = TTL,
        max_entries: int = MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
        usable: Callable[[], bool] = lambda: True,
    ) -> None:
        self.ttl = ttl
        self.usable = usable  # False while the mailstore is unreachable: RCPT must then say 451
        self.max_entries = max_entries
        self.clock = clock
        self._entries: dict[str, tuple[float, int]] = {}  # address -> (expires, size); oldest first

    def __len__(self) -> int:
        return len(self._entries)

    def is_local(self, address: str, size: int) -> bool:
        """True when the mailstore said "local" for this address, for at least this size, recently."""
        if not self.max_entries or not self.usable():
            return False
        entry = self._entries.get(address)
        if entry is None:
            return False
        expires, local_size = entry
        if self.clock() >= expires:
            del self._entries[address]
            return False
        # A bigger message may not fit the quota: that needs the mailstore's answer.
        return size <= local_size

    def remember_local(self, address: str, size: int) -> None:
        if not self.max_entries:
            return
        self._entries.pop(address, None)  # re-inserted last: eviction goes by age
        while len(self._entries) >= self.max_entries:
            del self._entries[next(iter(self._entries))]
        self._entries[address] = (self.clock() + self.ttl, size)

    def forget(self, address: str) -> None:
        """DATA found the address not deliverable: ask the mailstore at the next RCPT."""
        self._entries.pop(address, None)

    def clear(self) -> None:
        """The mailstore failed a Deliver: until it answers again, RCPT says 451 rather than 250."""
        self._entries.clear()
