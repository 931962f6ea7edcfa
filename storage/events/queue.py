"""One subscriber's bounded queue of change hints, shared by the in-process and the Redis bus."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable

from mailstack.storage.events.base import ChangeEvent

# A consumer that falls this far behind has lost track anyway: its backlog is
# replaced by one "resync" (events are hints; it re-reads state from the mailstore).
DEFAULT_QUEUE_LIMIT = 10_000


class QueueSubscription:
    """One subscriber's bounded queue; iterating yields events until close()."""

    def __init__(
        self,
        account: str,
        limit: int = DEFAULT_QUEUE_LIMIT,
        on_close: Callable[[QueueSubscription], Awaitable[None]] | None = None,
    ) -> None:
        self.account = account
        self._limit = limit
        self._on_close = on_close
        self._events: deque[ChangeEvent] = deque()
        self._ready = asyncio.Event()
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def deliver(self, event: ChangeEvent) -> None:
        """Queue an event without blocking the publisher; overflow collapses the backlog into a resync."""
        if self._closed:
            return
        if len(self._events) >= self._limit:
            self._events.clear()
            event = self.resync_event()
        self._events.append(event)
        self._ready.set()

    def deliver_resync(self) -> None:
        """Tell the consumer it may have missed events; older queued hints are moot."""
        if self._closed:
            return
        self._events.clear()
        self._events.append(self.resync_event())
        self._ready.set()

    def resync_event(self) -> ChangeEvent:
        return ChangeEvent(account=self.account, mailbox="", kind="resync")

    def __aiter__(self) -> QueueSubscription:
        return self

    async def __anext__(self) -> ChangeEvent:
        while True:
            if self._closed:
                raise StopAsyncIteration
            if self._events:
                return self._events.popleft()
            self._ready.clear()
            await self._ready.wait()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._events.clear()
        self._ready.set()  # wake a waiting iterator so it ends
        if self._on_close is not None:
            await self._on_close(self)
