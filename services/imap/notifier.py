"""Fan-out of change hints to the sessions of this process: one source per account, however many
sessions that account has open here.

With redis:// the process subscribes to the bus itself (one shared pub/sub connection); with
memory:// the mailstore's bus lives in another process, so the mailstore's Watch stream is used.
Events are hints (ARCHITECTURE.md): a session that gets one re-reads the change log; a lost
source is re-opened, and once it is live again (its first event says so) the sessions get a
"resync" and catch up from their last MODSEQ: a change made meanwhile is in the log or in the stream.
A new account's source goes live a moment after its first login; IDLE and NOTIFY wait for that
(`wait_live`), bounded, so a change in between is not left to the poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from urllib.parse import urlsplit

import grpc
from mailstack.storage.events.base import ChangeEvent, EventBus, EventKind
from mailstack.v1 import mailstore_pb2 as pb
from mailstack.v1 import mailstore_pb2_grpc as pbg

log = logging.getLogger("mailstack.imap.notifier")

Listener = Callable[[ChangeEvent], None]
RETRY_SECONDS = (0.2, 0.5, 1.0, 2.0, 5.0)
LIVE_WAIT_SECONDS = 2.0  # IDLE or NOTIFY waits at most this for a new source; then a resync covers it
_KINDS: dict[int, EventKind] = {
    pb.CHANGE_NEW: "new",
    pb.CHANGE_FLAGS: "flags",
    pb.CHANGE_EXPUNGE: "expunge",
    pb.CHANGE_MAILBOX: "mailbox",
}


class Notifier:
    def __init__(self, events_url: str, stub: pbg.MailstoreAsyncStub, bus: EventBus | None = None) -> None:
        self._url = events_url
        self._stub = stub
        self._bus = bus  # given: the bus of `events_url` already open (tests); else start() opens it
        self._listeners: dict[str, set[Listener]] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._live: dict[str, asyncio.Event] = {}  # set while the account's source is live
        self._late: set[str] = set()  # a wait for these ended before the source was live

    @property
    def uses_bus(self) -> bool:
        return urlsplit(self._url).scheme not in ("", "memory")

    async def start(self) -> None:
        if self.uses_bus and self._bus is None:
            from mailstack.storage.registry import open_event_bus

            self._bus = open_event_bus(self._url)

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        self._listeners.clear()
        self._live.clear()
        self._late.clear()
        if self._bus is not None:
            with contextlib.suppress(Exception):
                await self._bus.close()
            self._bus = None

    def add(self, account: str, listener: Listener) -> None:
        listeners = self._listeners.setdefault(account, set())
        listeners.add(listener)
        if account not in self._tasks:
            self._live[account] = asyncio.Event()
            self._tasks[account] = asyncio.create_task(self._follow(account), name=f"imap-notify-{account}")

    async def wait_live(self, account: str, within: float = LIVE_WAIT_SECONDS) -> bool:
        """Wait (bounded) until the account's source is live; True when it was not live at once:
        the caller catches up from the change log, which holds whatever came before. A source not
        live by the deadline sends a "resync" when it is, as after a loss."""
        live = self._live.get(account)
        if live is None or live.is_set():
            return False
        try:
            async with asyncio.timeout(within):
                await live.wait()
        except TimeoutError:
            if not live.is_set():
                self._late.add(account)
        return True

    def remove(self, account: str, listener: Listener) -> None:
        listeners = self._listeners.get(account)
        if listeners is None:
            return
        listeners.discard(listener)
        if not listeners:
            del self._listeners[account]
            self._live.pop(account, None)
            self._late.discard(account)
            task = self._tasks.pop(account, None)
            if task is not None:
                task.cancel()

    def _dispatch(self, event: ChangeEvent) -> None:
        for listener in list(self._listeners.get(event.account, ())):
            try:
                listener(event)
            except Exception:  # one broken session must not starve the others
                log.exception("listener failed")

    async def _follow(self, account: str) -> None:
        attempt = 0
        lost = False  # the source went away: events may have been missed until it is live again
        while True:
            try:
                async for event in self._source(account, lost):
                    attempt = 0
                    lost = False
                    self._dispatch(event)
                # the stream ended (mailstore restart): reconnect
            except asyncio.CancelledError:
                raise
            except Exception as e:  # any failure of the source means: reconnect
                log.debug("event source failed", extra={"account": account, "error": repr(e)})
            if (live := self._live.get(account)) is not None:
                live.clear()
            lost = True
            delay = RETRY_SECONDS[min(attempt, len(RETRY_SECONDS) - 1)]
            attempt += 1
            await asyncio.sleep(delay)

    def _went_live(self, account: str) -> bool:
        """Mark the source live; True when a wait for it gave up before (its callers catch up)."""
        if (live := self._live.get(account)) is not None:
            live.set()
        late = account in self._late
        self._late.discard(account)
        return late

    async def _source(self, account: str, lost: bool) -> AsyncIterator[ChangeEvent]:
        """The account's events. After a loss, a "resync" once the source is live again: once the
        bus confirmed the subscription, or at the Watch stream's first event, which says so."""
        if self._bus is not None:
            subscription = await self._bus.subscribe(account)  # confirmed (or resynced by the bus later)
            try:
                if self._went_live(account) or lost:
                    yield ChangeEvent(account=account, mailbox="", kind="resync")
                async for event in subscription:
                    yield event
            finally:
                with contextlib.suppress(Exception):
                    await subscription.close()
            return
        call = self._stub.Watch(pb.WatchRequest(account=account))
        try:
            async for message in call:
                if message.kind == pb.CHANGE_KIND_UNSPECIFIED and not message.mailbox:  # live
                    if self._went_live(account) or lost:  # they catch up now: nothing falls in between
                        yield ChangeEvent(account=account, mailbox="", kind="resync")
                    continue
                yield ChangeEvent(
                    account=message.account or account,
                    mailbox=message.mailbox,
                    kind=_KINDS.get(message.kind, "resync"),
                    uids=tuple(message.uids),
                    modseq=message.modseq,
                    uidvalidity=message.uidvalidity,
                )
        except grpc.RpcError as e:
            raise ConnectionError(f"Watch stream: {e.code()}") from None
        finally:
            call.cancel()
