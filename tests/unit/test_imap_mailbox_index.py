"""The IMAP process's mailbox index (ADR 0041): a SELECT of an indexed mailbox reads only the
changes since the index's MODSEQ, gives what a whole listing made then would give, repairs every
gap it can see (another mailbox under the name, a pruned or lossy log, a count that disagrees) by
listing again, and holds at most the configured number of messages, least recently used first out."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from mailstack.services.imap.mailbox_index import MailboxIndex, Message
from mailstack.services.imap.mailbox_view import EXPUNGE, FLAGS, NEW, Change
from mailstack.v1 import mailstore_pb2 as pb


@dataclass
class Log:
    uidvalidity: int
    pruned_modseq: int
    changes: list[Change]


@dataclass
class Mailbox:
    """A mailbox as the mailstore keeps it: rows with their MODSEQ and the MODSEQ that created them,
    expunges in a log that may be pruned, one HIGHESTMODSEQ."""

    mailbox_id: int = 1
    uidvalidity: int = 100
    highestmodseq: int = 1
    uidnext: int = 1
    rows: dict[int, tuple[frozenset[str], int, int]] = field(default_factory=dict)  # uid -> flags, modseq, created
    expunged: dict[int, int] = field(default_factory=dict)  # uid -> modseq of the expunge
    pruned_modseq: int = 0

    def _next(self) -> int:
        self.highestmodseq += 1
        return self.highestmodseq

    def append(self, *flags: str) -> int:
        uid, modseq = self.uidnext, self._next()
        self.uidnext += 1
        self.rows[uid] = (frozenset(flags), modseq, modseq)
        return uid

    def store(self, uid: int, *flags: str) -> None:
        modseq = self._next()
        self.rows[uid] = (frozenset(flags), modseq, self.rows[uid][2])

    def expunge(self, uid: int) -> None:
        del self.rows[uid]
        self.expunged[uid] = self._next()

    def prune(self) -> None:
        """The log forgets every expunge so far (change_log_days)."""
        self.pruned_modseq = self.highestmodseq
        self.expunged.clear()

    def status(self) -> pb.MailboxStatus:
        return pb.MailboxStatus(
            mailbox_id=self.mailbox_id,
            uidvalidity=self.uidvalidity,
            highestmodseq=self.highestmodseq,
            uidnext=self.uidnext,
            messages=len(self.rows),
        )

    def listing(self) -> list[Message]:
        return sorted((uid, flags, modseq) for uid, (flags, modseq, _) in self.rows.items())

    def changes_since(self, since: int) -> Log:
        changes = [
            Change(uid, modseq, NEW if created > since else FLAGS, tuple(sorted(flags)))
            for uid, (flags, modseq, created) in self.rows.items()
            if modseq > since
        ]
        changes += [Change(uid, modseq, EXPUNGE) for uid, modseq in self.expunged.items() if modseq > since]
        return Log(self.uidvalidity, self.pruned_modseq, sorted(changes, key=lambda c: (c.modseq, c.uid)))


@dataclass
class Store:
    """The mailstore as the index reads it, counting calls; `between` runs after the status is read
    and before the changes are (another session's change in that window)."""

    boxes: dict[str, Mailbox]
    listings: int = 0
    catch_ups: int = 0
    between: Callable[[], None] | None = None
    fail: BaseException | None = None

    async def whole_mailbox(self, name: str) -> tuple[pb.MailboxStatus, list[Message]]:
        self.listings += 1
        box = self.boxes["INBOX" if name.upper() == "INBOX" else name]
        return box.status(), box.listing()

    async def status_and_changes(self, name: str, since_modseq: int) -> tuple[pb.MailboxStatus, Log]:
        self.catch_ups += 1
        if self.fail is not None:
            raise self.fail
        box = self.boxes["INBOX" if name.upper() == "INBOX" else name]
        status = box.status()
        if self.between is not None:
            self.between()
            self.between = None
        await asyncio.sleep(0)
        return status, box.changes_since(since_modseq)


def _box(count: int, mailbox_id: int = 1) -> Mailbox:
    box = Mailbox(mailbox_id=mailbox_id)
    for n in range(count):
        box.append("\\Seen" if n % 2 else "$Label")
    return box


async def _read(index: MailboxIndex, store: Store, name: str = "INBOX", account: str = "a@test") -> list[Message]:
    _, messages = await index.read(store, account, name)
    return messages


async def test_a_second_select_reads_only_the_changes_and_sees_them_all() -> None:
    box = _box(5)
    store, index = Store({"INBOX": box}), MailboxIndex(1000)
    assert await _read(index, store) == box.listing()
    box.store(2, "\\Flagged")
    box.expunge(3)
    box.append()
    assert await _read(index, store) == box.listing()
    assert await _read(index, store, "inbox") == box.listing()  # INBOX in any case is one mailbox
    assert (store.listings, store.catch_ups) == (1, 2)


async def test_a_change_between_the_status_and_the_changes_is_not_lost() -> None:
    box = _box(3)
    store, index = Store({"INBOX": box}), MailboxIndex(1000)
    await _read(index, store)

    def meanwhile() -> None:
        box.store(1, "\\Answered")
        box.expunge(2)
        box.append("\\Draft")

    store.between = meanwhile
    assert await _read(index, store) == box.listing()
    assert await _read(index, store) == box.listing()  # read again from the status's MODSEQ: idempotent
    assert store.listings == 1


@pytest.mark.parametrize(
    "replace",
    [
        pytest.param(lambda b: setattr(b, "uidvalidity", b.uidvalidity + 1), id="uidvalidity"),
        pytest.param(lambda b: setattr(b, "mailbox_id", 99), id="another mailbox under the name"),
        pytest.param(lambda b: b.prune(), id="log pruned past the index"),
        pytest.param(lambda b: setattr(b, "highestmodseq", 0), id="modseq went back"),
        pytest.param(lambda b: b.expunged.clear(), id="an expunge missing from the log"),
    ],
)
async def test_a_gap_is_repaired_by_listing_again(replace: Callable[[Mailbox], None]) -> None:
    box = _box(4)
    store, index = Store({"INBOX": box}), MailboxIndex(1000)
    await _read(index, store)
    box.expunge(2)
    box.store(3, "\\Deleted")
    replace(box)
    assert await _read(index, store) == box.listing()
    assert store.listings == 2
    assert await _read(index, store) == box.listing()  # and indexed again from then on
    assert store.listings == 2


async def test_a_failed_catch_up_forgets_the_mailbox() -> None:
    box = _box(2)
    store, index = Store({"INBOX": box}), MailboxIndex(1000)
    await _read(index, store)
    store.fail = ConnectionError("mailstore gone")
    with pytest.raises(ConnectionError):
        await _read(index, store)
    assert ("a@test", "INBOX") not in index and index.held == 0
    store.fail = None
    assert await _read(index, store) == box.listing()
    assert store.listings == 2


async def test_each_account_has_its_own_entry() -> None:
    box = _box(2)
    store, index = Store({"INBOX": box}), MailboxIndex(1000)
    await _read(index, store, account="a@test")
    await _read(index, store, account="b@test")
    assert store.listings == 2 and len(index) == 2


async def test_memory_is_bounded_least_recently_used_first() -> None:
    boxes = {f"box{n}": _box(9, mailbox_id=n) for n in range(4)}
    store, index = Store(boxes), MailboxIndex(25)  # each box counts 9 + 1
    for name in ("box0", "box1", "box0", "box2"):
        await _read(index, store, name)
    assert index.held <= 25
    assert ("a@test", "box1") not in index  # least recently used
    assert ("a@test", "box0") in index and ("a@test", "box2") in index
    # growth by catch-up counts too
    for _ in range(10):
        boxes["box2"].append()
    await _read(index, store, "box2")
    assert index.held <= 25 and ("a@test", "box2") in index and ("a@test", "box0") not in index
    # shrinking gives the room back
    for uid in list(boxes["box2"].rows)[:15]:
        boxes["box2"].expunge(uid)
    await _read(index, store, "box2")
    assert index.held == len(boxes["box2"].rows) + 1


async def test_a_mailbox_larger_than_the_bound_is_read_but_not_held() -> None:
    store, index = Store({"INBOX": _box(30)}), MailboxIndex(10)
    assert len(await _read(index, store)) == 30
    assert len(index) == 0 and index.held == 0
    await _read(index, store)
    assert store.listings == 2


async def test_off_lists_every_time() -> None:
    store, index = Store({"INBOX": _box(3)}), MailboxIndex(0)
    for _ in range(3):
        assert len(await _read(index, store)) == 3
    assert (store.listings, store.catch_ups, len(index)) == (3, 0, 0)


async def test_concurrent_selects_of_one_mailbox_agree_with_the_store() -> None:
    box = _box(6)
    store, index = Store({"INBOX": box}), MailboxIndex(1000)
    await _read(index, store)
    box.store(1, "\\Seen", "\\Flagged")
    store.between = lambda: box.expunge(4)
    results = await asyncio.gather(*(_read(index, store) for _ in range(5)))
    for result in results:
        assert {uid for uid, _, _ in result} <= {uid for uid, _, _ in _box(6).listing()}
    assert results[-1] == box.listing()
    assert await _read(index, store) == box.listing()


async def test_random_changes_always_read_as_a_fresh_listing() -> None:
    rng = random.Random(19)
    boxes = {"INBOX": _box(5, 1), "Archive": _box(5, 2)}
    store, index = Store(boxes), MailboxIndex(40)
    flags = ["\\Seen", "\\Flagged", "\\Deleted", "$Work"]
    for step in range(400):
        name = rng.choice(list(boxes))
        box = boxes[name]
        for _ in range(rng.randint(0, 3)):
            action = rng.random()
            if action < 0.35 or not box.rows:
                box.append(*rng.sample(flags, rng.randint(0, 2)))
            elif action < 0.7:
                box.store(rng.choice(list(box.rows)), *rng.sample(flags, rng.randint(0, 3)))
            elif action < 0.95:
                box.expunge(rng.choice(list(box.rows)))
            else:
                box.prune()
        assert await _read(index, store, name) == box.listing(), step
        assert index.held <= 40
    assert store.catch_ups > store.listings  # the index was used, not just listings
