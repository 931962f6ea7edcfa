"""The notifier's liveness (services/imap/notifier.py): IDLE and NOTIFY right after a first login
wait, bounded, until the account's events flow, so a change in that moment is not left to the poll
(RFC 2177, RFC 5465 §3.1); a source that is late or lost tells its sessions to catch up once live."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import cast

from mailstack.services.imap.notifier import Notifier
from mailstack.storage.events.base import ChangeEvent
from mailstack.storage.events.memory import MemoryEventBus
from mailstack.storage.events.queue import QueueSubscription
from mailstack.v1 import mailstore_pb2_grpc as pbg

ACCOUNT = "a@example.test"


class GatedBus(MemoryEventBus):
    """An in-process bus whose subscriptions are confirmed only when `gate` opens (a slow Redis)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.subscribed = 0

    async def subscribe(self, account: str) -> QueueSubscription:
        await self.gate.wait()
        self.subscribed += 1
        return await super().subscribe(account)


async def _notifier(bus: GatedBus) -> tuple[Notifier, list[ChangeEvent]]:
    notifier = Notifier("redis://127.0.0.1:1", cast("pbg.MailstoreAsyncStub", None), bus=bus)
    await notifier.start()
    got: list[ChangeEvent] = []
    notifier.add(ACCOUNT, got.append)
    return notifier, got


async def _until(predicate: Callable[[], bool], seconds: float = 5.0) -> None:
    for _ in range(int(seconds / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("not within the bound")


async def test_a_wait_ends_when_the_subscription_is_confirmed_and_then_costs_nothing() -> None:
    bus = GatedBus()
    notifier, got = await _notifier(bus)
    try:
        waiting = asyncio.ensure_future(notifier.wait_live(ACCOUNT, within=5.0))
        await asyncio.sleep(0.05)
        assert not waiting.done()  # the subscription is not confirmed: IDLE would miss a change
        bus.gate.set()
        assert await waiting is True  # it waited: the caller catches up from the change log
        assert await notifier.wait_live(ACCOUNT) is False  # live: no wait, no catch-up
        await bus.publish(ChangeEvent(account=ACCOUNT, mailbox="INBOX", kind="new", uids=(1,), modseq=2))
        await _until(lambda: [e.kind for e in got] == ["new"])  # no resync: nobody gave up waiting
    finally:
        await notifier.stop()


async def test_a_wait_that_gives_up_gets_a_resync_once_the_source_is_live() -> None:
    bus = GatedBus()
    notifier, got = await _notifier(bus)
    try:
        assert await notifier.wait_live(ACCOUNT, within=0.05) is True
        assert got == []
        bus.gate.set()
        await _until(lambda: [e.kind for e in got] == ["resync"])  # sessions re-read what they missed
    finally:
        await notifier.stop()


async def test_a_lost_source_is_waited_for_again_and_resyncs() -> None:
    bus = GatedBus()
    bus.gate.set()
    notifier, got = await _notifier(bus)
    try:
        await notifier.wait_live(ACCOUNT, within=5.0)
        bus.gate.clear()  # the bus comes back slowly
        for sub in [s for group in bus._subscribers.values() for s in group]:
            await sub.close()  # the connection drops: the subscription ends
        await _until(lambda: not notifier._live[ACCOUNT].is_set())
        assert await notifier.wait_live(ACCOUNT, within=0.05) is True
        bus.gate.set()
        await _until(lambda: [e.kind for e in got] == ["resync"])  # one resync, however it went live
        assert bus.subscribed == 2
    finally:
        await notifier.stop()


async def test_an_account_nobody_follows_is_not_waited_for() -> None:
    notifier, _ = await _notifier(GatedBus())
    try:
        assert await notifier.wait_live("other@example.test", within=5.0) is False
        notifier.remove(ACCOUNT, lambda e: None)  # not a listener: nothing changes
        assert ACCOUNT in notifier._live
    finally:
        await notifier.stop()
