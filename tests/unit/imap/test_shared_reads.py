"""Shared change-log reads and \\Recent claims of one imap process (services/imap/shared_reads.py).

What must hold, whatever is shared: a session never gets older news than its own read would give
(a change whose hint came after a read was sent is read again, not lost), \\Recent goes to exactly
one session (RFC 3501 §2.3.2), and one session's failure or disconnect never fails another's read."""

from __future__ import annotations

import asyncio
from typing import cast

import grpc
import pytest
from mailstack.services.imap.mailbox_view import Change
from mailstack.services.imap.mailstore import ChangeLog, ImapMailstore
from mailstack.services.imap.shared_reads import SharedReads, tick
from mailstack.v1 import mailstore_pb2_grpc as pbg


class Unavailable(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE


class FakeStore(ImapMailstore):
    """A mailbox whose change log and \\Recent floor live here; each read waits for `gate`."""

    def __init__(self, account: str = "a@example.test") -> None:
        super().__init__(cast("pbg.MailstoreAsyncStub", None), account)
        self.log: list[Change] = []
        self.reads = 0
        self.claims = 0
        self.floor, self.uidnext = 1, 1
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail = False

    def add(self, uid: int) -> None:
        self.log.append(Change(uid, len(self.log) + 1, "new", ()))
        self.uidnext = uid + 1

    async def changes(self, mailbox: str, since_modseq: int) -> ChangeLog:
        self.reads += 1
        snapshot = [c for c in self.log if c.modseq > since_modseq]  # what the store holds when asked
        highest = len(self.log)
        await self.gate.wait()
        if self.fail:
            raise Unavailable()
        return ChangeLog(7, highest, 0, snapshot)

    async def claim_recent(self, mailbox: str) -> tuple[int, int]:
        self.claims += 1
        first, self.floor = self.floor, self.uidnext  # done when it arrives; the answer waits for the gate
        claimed = first, self.floor
        await self.gate.wait()
        return claimed


async def settle() -> None:
    """Let every ready task run until it waits (a read sent, a gate reached)."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_sessions_hinted_before_a_read_share_it() -> None:
    store, shared = FakeStore(), SharedReads()
    store.add(1)
    hinted = tick()  # one event reached every session
    logs = await asyncio.gather(*(shared.changes(store, "INBOX", 0, hinted) for _ in range(50)))
    assert store.reads == 1
    assert all([c.uid for c in log.changes] == [1] for log in logs)


async def test_a_hint_after_the_read_was_sent_gets_a_new_read() -> None:
    store, shared = FakeStore(), SharedReads()
    store.add(1)
    store.gate.clear()
    first = asyncio.ensure_future(shared.changes(store, "INBOX", 0, tick()))
    await settle()  # the read is sent and sees only message 1
    store.add(2)  # committed after that read looked
    late = asyncio.ensure_future(shared.changes(store, "INBOX", 0, tick()))  # its hint came now
    await settle()
    store.gate.set()
    assert [c.uid for c in (await first).changes] == [1]
    assert [c.uid for c in (await late).changes] == [1, 2]  # not lost to the older shared read
    assert store.reads == 2


async def test_an_unhinted_refresh_never_joins_an_older_read() -> None:
    # NOOP without a hint asks with the tick of now: a read sent before it is not enough
    store, shared = FakeStore(), SharedReads()
    store.gate.clear()
    older = asyncio.ensure_future(shared.changes(store, "INBOX", 0, tick()))
    await settle()
    noop = asyncio.ensure_future(shared.changes(store, "INBOX", 0, tick()))
    await settle()
    store.gate.set()
    await asyncio.gather(older, noop)
    assert store.reads == 2


async def test_a_read_serves_callers_further_on_but_not_behind_it_nor_other_mailboxes() -> None:
    store, shared = FakeStore(), SharedReads()
    store.add(1)
    store.add(2)
    store.gate.clear()
    hinted = tick()
    a = asyncio.ensure_future(shared.changes(store, "INBOX", 0, hinted))
    await settle()
    b = asyncio.ensure_future(shared.changes(store, "INBOX", 1, hinted))  # further on: joins, keeps its part
    behind = asyncio.ensure_future(shared.changes(store, "Other", 0, hinted))
    await settle()
    store.gate.set()
    assert [x.uid for x in (await a).changes] == [1, 2] and [x.uid for x in (await b).changes] == [2]
    assert [x.uid for x in (await behind).changes] == [1, 2]  # the fake keeps one log for every mailbox
    assert store.reads == 2
    store.gate.clear()
    later = asyncio.ensure_future(shared.changes(store, "INBOX", 2, tick()))
    await settle()
    earlier = asyncio.ensure_future(shared.changes(store, "INBOX", 1, hinted))  # behind the read under way
    await settle()
    store.gate.set()
    assert (await later).changes == [] and [x.uid for x in (await earlier).changes] == [2]
    assert store.reads == 4


async def test_sessions_of_a_burst_meet_on_the_latest_read_and_stay_together() -> None:
    # Two events in a burst: sessions that got the second hint while the first read was out send a
    # second read; those that joined the first join the second too (from further on), so the next
    # event finds every session at one MODSEQ, and one read serves them all.
    store, shared = FakeStore(), SharedReads()
    store.add(1)
    store.gate.clear()
    first_hint = tick()
    early = [asyncio.ensure_future(shared.changes(store, "INBOX", 0, first_hint)) for _ in range(3)]
    await settle()
    store.add(2)
    second_hint = tick()
    late = [asyncio.ensure_future(shared.changes(store, "INBOX", 0, second_hint)) for _ in range(3)]
    await settle()
    store.gate.set()
    assert {(await t).highestmodseq for t in early} == {1}
    caught_up = [asyncio.ensure_future(shared.changes(store, "INBOX", 1, second_hint)) for _ in early]
    logs = await asyncio.gather(*late, *caught_up)
    assert {log.highestmodseq for log in logs} == {2}
    assert all([c.uid for c in log.changes] == [2] for log in logs[3:])
    assert store.reads == 2
    store.add(3)
    third_hint = tick()
    await asyncio.gather(*(shared.changes(store, "INBOX", 2, third_hint) for _ in range(6)))
    assert store.reads == 3


async def test_an_answered_read_is_joined_for_a_moment_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("mailstack.services.imap.shared_reads.KEPT_SECONDS", 0.05)
    store, shared = FakeStore(), SharedReads()
    store.add(1)
    hinted = tick()
    await shared.changes(store, "INBOX", 0, hinted)
    await shared.changes(store, "INBOX", 0, hinted)  # answered just now, sent after the hint: joined
    assert store.reads == 1
    await asyncio.sleep(0.1)
    await shared.changes(store, "INBOX", 0, hinted)  # forgotten: a new read
    assert store.reads == 2


async def test_a_failed_read_fails_its_waiters_and_the_next_one_reads_again() -> None:
    store, shared = FakeStore(), SharedReads()
    store.fail = True
    hinted = tick()
    results = await asyncio.gather(
        *(shared.changes(store, "INBOX", 0, hinted) for _ in range(3)), return_exceptions=True
    )
    assert all(isinstance(r, Unavailable) for r in results)
    store.fail = False
    store.add(1)
    assert [c.uid for c in (await shared.changes(store, "INBOX", 0, hinted)).changes] == [1]  # retried, not cached
    assert store.reads == 2


async def test_a_session_that_goes_away_does_not_cancel_the_others_read() -> None:
    store, shared = FakeStore(), SharedReads()
    store.add(1)
    store.gate.clear()
    hinted = tick()
    gone = asyncio.ensure_future(shared.changes(store, "INBOX", 0, hinted))
    staying = asyncio.ensure_future(shared.changes(store, "INBOX", 0, hinted))
    await settle()
    gone.cancel()
    store.gate.set()
    assert [c.uid for c in (await staying).changes] == [1]
    with pytest.raises(asyncio.CancelledError):
        await gone


async def test_recent_goes_to_exactly_one_session_with_one_claim() -> None:
    store, shared = FakeStore(), SharedReads()
    store.add(1)
    store.add(2)
    got = await asyncio.gather(*(shared.claim_recent(store, "INBOX", 7, [1, 2]) for _ in range(20)))
    assert sorted(map(sorted, got)) == [[]] * 19 + [[1, 2]]
    assert store.claims == 1
    store.add(3)  # a later message is above what was claimed: a new claim, one winner again
    got = await asyncio.gather(*(shared.claim_recent(store, "INBOX", 7, [3]) for _ in range(20)))
    assert sorted(map(sorted, got)) == [[]] * 19 + [[3]]
    assert store.claims == 2


async def test_a_claim_made_elsewhere_still_counts() -> None:
    # another process (or SELECT here) moved the floor: this process's claim gets nothing, and says so
    store, shared = FakeStore(), SharedReads()
    store.add(1)
    store.floor = 2
    assert await shared.claim_recent(store, "INBOX", 7, [1]) == set()
    assert store.claims == 1


async def test_a_new_uidvalidity_is_a_new_mailbox() -> None:
    store, shared = FakeStore(), SharedReads()
    store.add(5)
    assert await shared.claim_recent(store, "INBOX", 7, [5]) == {5}
    store.floor, store.uidnext = 1, 1  # deleted and created again under the same name
    store.add(1)
    assert await shared.claim_recent(store, "INBOX", 8, [1]) == {1}


async def test_sessions_asking_while_a_claim_is_under_way_leave_it_that_claim() -> None:
    store, shared = FakeStore(), SharedReads()
    store.add(1)
    store.gate.clear()
    first = asyncio.ensure_future(shared.claim_recent(store, "INBOX", 7, [1]))
    await settle()  # sent, not answered
    assert await shared.claim_recent(store, "INBOX", 7, [1]) == set()  # at once: the claim covers it
    store.add(2)  # a message the claim under way may not cover: its own claim
    second = asyncio.ensure_future(shared.claim_recent(store, "INBOX", 7, [1, 2]))
    await settle()
    store.gate.set()
    got = [await first, await second]
    assert got == [{1}, {2}]  # each UID in exactly one session
    assert store.claims == 2


async def test_a_claim_whose_session_went_away_gives_nobody_a_uid_twice() -> None:
    store, shared = FakeStore(), SharedReads()
    store.add(1)
    store.gate.clear()
    first = asyncio.ensure_future(shared.claim_recent(store, "INBOX", 7, [1]))
    await settle()
    first.cancel()  # the claiming session went away before the answer; \Recent is advisory
    store.gate.set()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert await shared.claim_recent(store, "INBOX", 7, [1]) == set()
    store.add(2)  # the next message is claimed as ever
    assert await shared.claim_recent(store, "INBOX", 7, [2]) == {2}
    assert store.claims == 2
