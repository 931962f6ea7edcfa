"""The contract of storage.sessions.base.SessionDirectory, written once.

A backend's test class subclasses SessionDirectoryContract with a `directory` fixture:
test_session_directory_memory.py, test_session_directory_redis.py."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest
from mailstack.storage.sessions.base import MAX_SESSIONS_PER_REPORT, KickOrder, SessionDirectory, SessionRecord

_names = itertools.count()


def unique(tag: str) -> str:
    # Redis keys are shared by every test on one server: names unique per test.
    return f"{tag}{next(_names)}-{time.monotonic_ns()}"


def record(frontend: str, account: str, protocol: str = "imap", started: float = 0.0) -> SessionRecord:
    return SessionRecord(frontend, protocol, account, "192.0.2.7", True, started or time.time())


class SessionDirectoryContract:
    async def test_reports_replace_and_list_oldest_first(self, directory: SessionDirectory) -> None:
        front, alice, bob = unique("front"), unique("alice") + "@x.test", unique("bob") + "@x.test"
        await directory.report(front, [record(front, alice, started=200.0), record(front, bob, "pop3", 100.0)], 30)
        mine = [s for s in await directory.sessions() if s.frontend == front]
        assert [(s.account, s.protocol, s.started) for s in mine] == [(bob, "pop3", 100.0), (alice, "imap", 200.0)]
        assert await directory.sessions(alice) == [record(front, alice, started=200.0)]
        await directory.report(front, [record(front, bob, "pop3", 100.0)], 30)  # alice logged out
        assert await directory.sessions(alice) == []
        await directory.report(front, [], 30)  # an empty report withdraws the list at once
        assert await directory.sessions(bob) == []

    async def test_two_frontends_are_listed_together(self, directory: SessionDirectory) -> None:
        one, two, carol = unique("one"), unique("two"), unique("carol") + "@x.test"
        await directory.report(one, [record(one, carol)], 30)
        await directory.report(two, [record(two, carol, "pop3")], 30)
        assert {(s.frontend, s.protocol) for s in await directory.sessions(carol)} == {(one, "imap"), (two, "pop3")}

    async def test_a_silent_frontend_drops_out(self, directory: SessionDirectory) -> None:
        front, dave = unique("dead"), unique("dave") + "@x.test"
        await directory.report(front, [record(front, dave)], 0.3)
        assert len(await directory.sessions(dave)) == 1
        await asyncio.sleep(0.5)
        assert await directory.sessions(dave) == []

    async def test_kick_orders_live_for_their_time(self, directory: SessionDirectory) -> None:
        eve = unique("eve") + "@x.test"
        order = KickOrder(eve, "", 1234.5)
        await directory.kick(order, 0.4)
        await directory.kick(KickOrder(eve, "pop3", 99.0), 30)
        orders = [k for k in await directory.kicks() if k.account == eve]
        assert sorted(orders, key=lambda k: k.protocol) == [order, KickOrder(eve, "pop3", 99.0)]
        await asyncio.sleep(0.6)
        assert [k for k in await directory.kicks() if k.account == eve] == [KickOrder(eve, "pop3", 99.0)]

    async def test_a_later_order_for_the_same_account_replaces_the_earlier(self, directory: SessionDirectory) -> None:
        frank = unique("frank") + "@x.test"
        await directory.kick(KickOrder(frank, "imap", 1.0), 30)
        await directory.kick(KickOrder(frank, "imap", 2.0), 30)
        assert [k.before for k in await directory.kicks() if k.account == frank] == [2.0]

    async def test_an_oversized_report_is_refused_whole(self, directory: SessionDirectory) -> None:
        front = unique("huge")
        many = [record(front, "a@x.test")] * (MAX_SESSIONS_PER_REPORT + 1)
        with pytest.raises(ValueError, match="sessions in one report"):
            await directory.report(front, many, 30)
        assert [s for s in await directory.sessions() if s.frontend == front] == []
