"""The contract of storage.metadata.base.MetadataStore, written once (issue 20).

Each backend's test module subclasses MetadataStoreContract and provides a `metadata_url` fixture:
the URL of an empty store location, opened through the registry as the mailstore opens it. Adding
a backend is its package, its registry line and one such class (test_metadata_sqlite.py,
test_metadata_postgresql.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace

import pytest
from mailstack.storage.errors import (
    AccountNotFound,
    AlreadyExists,
    MailboxNotFound,
    NotAllowed,
    OverQuota,
    StorageUnavailable,
)
from mailstack.storage.metadata.base import (
    AccountRecord,
    ForwardRecord,
    InsertResult,
    MailboxRecord,
    MetadataStore,
    NewMessage,
)
from mailstack.storage.registry import open_metadata_store

OpenStore = Callable[[], Awaitable[MetadataStore]]
DEFAULT_MAILBOXES = [("Sent", "\\Sent"), ("Drafts", "\\Drafts"), ("Trash", "\\Trash")]


def message(
    key: str, size: int = 100, flags: tuple[str, ...] = (), sent_date: int | None = 1_700_000_000
) -> NewMessage:
    return NewMessage(
        blob_key=key,
        size=size,
        internal_date=1_700_000_100,
        tz_offset=120,
        flags=flags,
        envelope=b"env:" + key.encode(),
        structure=b"struct:" + key.encode(),
        header=b"Subject: " + key.encode() + b"\r\n\r\n",
        sent_date=sent_date,
    )


async def account(
    store: MetadataStore, name: str = "alice@example.org", quota_bytes: int = 0, quota_messages: int = 0
) -> AccountRecord:
    return await store.create_account(name, "hash", quota_bytes, quota_messages, DEFAULT_MAILBOXES)


async def inbox(store: MetadataStore, acc: AccountRecord) -> MailboxRecord:
    return await store.get_mailbox(acc.id, "INBOX")


async def insert(
    store: MetadataStore,
    mailbox_id: int,
    key: str,
    size: int = 100,
    flags: tuple[str, ...] = (),
    sent_date: int | None = 1_700_000_000,
) -> InsertResult:
    return await store.insert_message(mailbox_id, message(key, size, flags, sent_date), enforce_quota=True)


async def usage(store: MetadataStore, name: str) -> tuple[int, int]:
    """(used_bytes, used_messages) of an existing account."""
    found = await store.get_account(name)
    assert found is not None
    return found.used_bytes, found.used_messages


class ClientView:
    """What one IMAP client of a mailbox relies on, checked at every look: a UID it has not seen before is
    above every UID it has seen, and a message that changed since its last look has a MODSEQ above
    everything that look showed."""

    def __init__(self, store: MetadataStore, mailbox_id: int) -> None:
        self.store = store
        self.mailbox_id = mailbox_id
        self.seen: dict[int, int] = {}  # uid -> modseq at the last look
        self.max_uid = 0
        self.high = 0
        self.looks = 0
        self.done = asyncio.Event()

    async def look(self) -> None:
        now = {m.uid: m.modseq for m in await self.store.fetch(self.mailbox_id)}
        if self.looks:
            for uid, modseq in now.items():
                assert uid in self.seen or uid > self.max_uid, f"UID {uid} appeared after UID {self.max_uid}"
                if self.seen.get(uid) != modseq:
                    assert modseq > self.high, f"UID {uid} changed at MODSEQ {modseq} <= {self.high} already seen"
        self.max_uid = max([self.max_uid, *now])
        self.high = max([self.high, *now.values()])
        self.seen = now
        self.looks += 1

    async def watch(self) -> None:
        while not self.done.is_set() or self.looks < 2:
            await self.look()
            await asyncio.sleep(0)

    @staticmethod
    async def until_done(views: list[ClientView], *work: Awaitable[None]) -> None:
        try:
            await asyncio.gather(*work)
        finally:
            for view in views:
                view.done.set()


async def check_mailboxes(store: MetadataStore, acc: AccountRecord, mailboxes: list[MailboxRecord]) -> int:
    """Each mailbox's UIDs are distinct, below UIDNEXT, logged once, at MODSEQs up to HIGHESTMODSEQ;
    returns how many messages they hold."""
    present = 0
    for mailbox in mailboxes:
        record = await store.get_mailbox(acc.id, mailbox.name)
        uids = [m.uid for m in await store.fetch(mailbox.id)]
        assert uids == sorted(set(uids)) and all(u < record.uidnext for u in uids)
        changes = await store.changes_since(mailbox.id, 0)
        assert all(c.modseq <= record.highestmodseq for c in changes)
        assert len({c.uid for c in changes}) == len(changes), "a UID used twice in one mailbox"
        present += len(uids)
    return present


class MetadataStoreContract:
    """Every MetadataStore passes these. A subclass provides the fixture `metadata_url`."""

    @pytest.fixture
    async def open_store(self, metadata_url: str) -> AsyncIterator[OpenStore]:
        """Opens (and migrates) a store at metadata_url; every call is a fresh client of the same data,
        as a second mailstore replica would be."""
        opened: list[MetadataStore] = []

        async def open_() -> MetadataStore:
            store = open_metadata_store(metadata_url)
            await store.migrate()
            opened.append(store)
            return store

        yield open_
        for store in opened:
            await store.close()

    @pytest.fixture
    async def metadata_store(self, open_store: OpenStore) -> MetadataStore:
        return await open_store()

    # ------------------------------------------------------------------ schema and lifecycle

    async def test_migrate_twice_keeps_data(self, metadata_store: MetadataStore) -> None:
        acc = await account(metadata_store)
        await metadata_store.migrate()
        await metadata_store.migrate()
        assert await metadata_store.get_account(acc.name) == acc

    async def test_persistence_across_close_and_reopen(self, open_store: OpenStore) -> None:
        store = await open_store()
        acc = await account(store)
        box = await inbox(store, acc)
        first = await insert(store, box.id, "k1", flags=("\\Seen",))
        await store.acquire_lease("pop3:alice", "s1", 60)
        await store.close()
        await store.close()  # idempotent
        with pytest.raises(StorageUnavailable):
            await store.get_account(acc.name)  # a point read (inline on SQLite)
        with pytest.raises(StorageUnavailable):
            await store.fetch(box.id)  # a bulk read (on a reader thread)

        again = await open_store()
        assert await again.get_account(acc.name) == replace(acc, used_bytes=100, used_messages=1)
        (record,) = await again.fetch(box.id)
        assert (record.uid, record.flags, record.blob_key) == (first.uid, ("\\Seen",), "k1")
        second = await insert(again, box.id, "k2")
        assert second.uid == first.uid + 1 and second.modseq > first.modseq
        assert second.uidvalidity == first.uidvalidity
        assert await again.acquire_lease("pop3:alice", "s2", 60) == (False, "s1")

    # ------------------------------------------------------------------ accounts, domains, aliases

    async def test_accounts(self, metadata_store: MetadataStore) -> None:
        s = metadata_store
        acc = await s.create_account("Alice@Example.org", "h1", 1000, 10, DEFAULT_MAILBOXES)
        assert (acc.name, acc.password_hash, acc.quota_bytes, acc.quota_messages) == (
            "alice@example.org",
            "h1",
            1000,
            10,
        )
        assert (acc.used_bytes, acc.used_messages) == (0, 0)
        with pytest.raises(AlreadyExists):
            await account(s)
        names = [(m.name, m.special_use) for m in await s.list_mailboxes(acc.id)]
        assert names[0] == ("INBOX", "")  # INBOX always exists and lists first
        assert sorted(names[1:]) == [("Drafts", "\\Drafts"), ("Sent", "\\Sent"), ("Trash", "\\Trash")]

        bob = await account(s, "bob@example.org")
        assert [a.name for a in await s.list_accounts()] == ["alice@example.org", "bob@example.org"]
        assert await s.get_account("nobody@example.org") is None

        await s.set_password("alice@example.org", "h2")
        changed = await s.get_account("alice@example.org")
        assert changed is not None and changed.password_hash == "h2"
        updated = await s.set_quota("alice@example.org", 5000, 60)
        assert (updated.quota_bytes, updated.quota_messages) == (5000, 60)
        with pytest.raises(AccountNotFound):
            await s.set_password("nobody@example.org", "x")
        with pytest.raises(AccountNotFound):
            await s.set_quota("nobody@example.org", 1, 1)

        await insert(s, (await inbox(s, bob)).id, "bob-1")
        await insert(s, (await inbox(s, bob)).id, "shared")
        await insert(s, (await inbox(s, acc)).id, "shared")
        assert await s.delete_account("bob@example.org") == ["bob-1"]  # "shared" still used by alice
        assert await s.get_account("bob@example.org") is None
        assert await s.list_mailboxes(bob.id) == []
        assert await s.blob_referenced("shared") and not await s.blob_referenced("bob-1")
        with pytest.raises(AccountNotFound):
            await s.delete_account("bob@example.org")

    async def test_create_account_without_inbox_in_defaults_still_has_inbox(
        self, metadata_store: MetadataStore
    ) -> None:
        acc = await metadata_store.create_account("carol@example.org", "h", 0, 0, [("Archive", "\\Archive")])
        assert [m.name for m in await metadata_store.list_mailboxes(acc.id)] == ["INBOX", "Archive"]

    async def test_domains(self, metadata_store: MetadataStore) -> None:
        s = metadata_store
        await s.add_domain("Example.org")
        await s.add_domain("a.example")
        with pytest.raises(AlreadyExists):
            await s.add_domain("example.org")
        assert await s.list_domains() == ["a.example", "example.org"]
        await s.delete_domain("example.org")
        assert await s.list_domains() == ["a.example"]

    async def test_aliases_and_resolve(self, metadata_store: MetadataStore) -> None:
        s = metadata_store
        alice = await account(s)
        bob = await account(s, "bob@example.org")
        await s.add_alias("Postmaster@example.org", "alice@example.org")
        await s.add_alias("@example.net", "bob@example.org")
        with pytest.raises(AccountNotFound):
            await s.add_alias("x@example.org", "nobody@example.org")
        with pytest.raises(AlreadyExists):
            await s.add_alias("postmaster@example.org", "bob@example.org")
        assert await s.list_aliases() == [("@example.net", bob.name), ("postmaster@example.org", alice.name)]
        assert await s.list_aliases("bob@example.org") == [("@example.net", bob.name)]

        async def resolved(address: str) -> str | None:
            found = await s.resolve_address(address)
            return found.name if found else None

        assert await resolved("Alice@Example.org") == alice.name  # own name first
        assert await resolved("POSTMASTER@example.org") == alice.name  # alias
        assert await resolved("anyone@example.net") == bob.name  # catch-all
        assert await resolved("anyone@example.org") is None  # no catch-all there
        assert await resolved("nobody") is None

        await s.delete_alias("postmaster@example.org")
        assert await resolved("postmaster@example.org") is None
        await s.delete_account("bob@example.org")
        assert await s.list_aliases() == []  # aliases go with their account

    async def test_forwards_are_kept_replaced_and_removed(self, metadata_store: MetadataStore) -> None:
        s = metadata_store
        await account(s)
        await s.add_alias("list@example.org", "alice@example.org")
        assert await s.list_forwards() == [] and await s.forwards_for(["alice@example.org"]) == {}
        alice = ForwardRecord("Alice@Example.org", ("a@remote.test", "b@remote.test"), keep_copy=True)
        await s.set_forward(alice)
        await s.set_forward(ForwardRecord("list@example.org", ("c@remote.test",), keep_copy=False))
        kept = ForwardRecord("alice@example.org", ("a@remote.test", "b@remote.test"), True)
        assert await s.list_forwards() == [kept, ForwardRecord("list@example.org", ("c@remote.test",), False)]
        assert await s.forwards_for(["ALICE@example.org", "nobody@example.org", "alice@example.org"]) == {
            "alice@example.org": kept
        }
        assert await s.forwards_for([]) == {}
        # Setting again replaces; no targets removes.
        await s.set_forward(ForwardRecord("alice@example.org", ("z@remote.test",), False))
        assert (await s.forwards_for(["alice@example.org"]))["alice@example.org"].targets == ("z@remote.test",)
        await s.set_forward(ForwardRecord("alice@example.org", (), False))
        assert [f.address for f in await s.list_forwards()] == ["list@example.org"]
        # A forward of an address that is no account or alias (any more) is listed but never applies.
        await s.set_forward(ForwardRecord("gone@example.org", ("x@remote.test",), False))
        assert await s.forwards_for(["gone@example.org"]) == {}
        await s.delete_alias("list@example.org")
        assert await s.forwards_for(["list@example.org"]) == {}

    async def test_resolve_delivery_in_one_read(self, metadata_store: MetadataStore) -> None:
        s = metadata_store
        alice = await account(s)
        bob = await account(s, "bob@example.org")
        await s.add_alias("@example.net", "bob@example.org")
        work = await s.create_mailbox(alice.id, "Work")

        targets = await s.resolve_delivery(["Alice@Example.org", "x@example.net", "nobody@example.org"], "Work")
        assert targets[2] is None
        first, second = targets[0], targets[1]
        assert first is not None and second is not None
        assert (first.account.name, first.mailbox.id) == (alice.name, work.id)  # the named mailbox
        assert (second.account.name, second.mailbox.name) == (bob.name, "INBOX")  # bob has no Work: INBOX
        assert second.mailbox == await inbox(s, bob)
        assert [t and t.mailbox.name for t in await s.resolve_delivery(["alice@example.org"], "inbox")] == ["INBOX"]
        assert await s.resolve_delivery([], "INBOX") == []

    # ------------------------------------------------------------------ mailboxes

    async def test_mailbox_names_create_get_delete(self, metadata_store: MetadataStore) -> None:
        s = metadata_store
        acc = await account(s)
        assert (await s.get_mailbox(acc.id, "inbox")).name == "INBOX"  # INBOX is case-insensitive
        work = await s.create_mailbox(acc.id, "Work", "\\Archive")
        assert (work.name, work.special_use, work.uidnext, work.subscribed) == ("Work", "\\Archive", 1, False)
        with pytest.raises(AlreadyExists):
            await s.create_mailbox(acc.id, "Work")
        with pytest.raises(AlreadyExists):
            await s.create_mailbox(acc.id, "Inbox")
        other_case = await s.create_mailbox(acc.id, "work")  # other names are case-sensitive
        assert other_case.id != work.id
        with pytest.raises(MailboxNotFound):
            await s.get_mailbox(acc.id, "WORK")

        with pytest.raises(NotAllowed):
            await s.delete_mailbox(acc.id, "INBOX")
        with pytest.raises(MailboxNotFound):
            await s.delete_mailbox(acc.id, "Nope")
        await s.create_mailbox(acc.id, "Work/Child")
        result = await s.delete_mailbox(acc.id, "Work")
        assert result.expunged == ()
        with pytest.raises(MailboxNotFound):
            await s.get_mailbox(acc.id, "Work")
        assert (await s.get_mailbox(acc.id, "Work/Child")).name == "Work/Child"  # children stay

    async def test_uidvalidity_is_new_after_delete_and_create(self, metadata_store: MetadataStore) -> None:
        s = metadata_store
        acc = await account(s)
        seen = {m.uidvalidity for m in await s.list_mailboxes(acc.id)}
        first = await s.create_mailbox(acc.id, "Box")
        await s.delete_mailbox(acc.id, "Box")
        second = await s.create_mailbox(acc.id, "Box")
        assert second.uidvalidity != first.uidvalidity
        assert second.uidvalidity > first.uidvalidity  # strictly increasing counter
        assert second.id != first.id  # a stale id can never reach the new mailbox
        for uv in (first.uidvalidity, second.uidvalidity):
            assert 0 < uv <= 0xFFFFFFFF
            assert uv not in seen
        with pytest.raises(MailboxNotFound):
            await s.fetch(first.id)

    async def test_subscriptions(self, metadata_store: MetadataStore) -> None:
        s = metadata_store
        acc = await account(s)
        await s.set_subscribed(acc.id, "Sent", True)
        await s.set_subscribed(acc.id, "Sent", True)  # idempotent
        await s.set_subscribed(acc.id, "Does/Not/Exist", True)
        await s.set_subscribed(acc.id, "inbox", True)
        assert await s.list_subscriptions(acc.id) == ["Does/Not/Exist", "INBOX", "Sent"]
        assert (await s.get_mailbox(acc.id, "Sent")).subscribed
        assert not (await s.get_mailbox(acc.id, "Drafts")).subscribed
        await s.delete_mailbox(acc.id, "Sent")
        assert "Sent" in await s.list_subscriptions(acc.id)  # IMAP: subscriptions outlive mailboxes
        await s.set_subscribed(acc.id, "Does/Not/Exist", False)
        assert await s.list_subscriptions(acc.id) == ["INBOX", "Sent"]
        with pytest.raises(AccountNotFound):
            await s.set_subscribed(acc.id + 1000, "X", True)

    async def test_rename_moves_children(self, metadata_store: MetadataStore) -> None:
        s = metadata_store
        acc = await account(s)
        a = await s.create_mailbox(acc.id, "a")
        ax = await s.create_mailbox(acc.id, "a/x")
        axy = await s.create_mailbox(acc.id, "a/x/y")
        ab = await s.create_mailbox(acc.id, "ab")  # a sibling sharing the prefix, not a child
        uid = (await insert(s, ax.id, "m1")).uid

        await s.rename_mailbox(acc.id, "a", "b")
        names = {m.name: m for m in await s.list_mailboxes(acc.id)}
        assert {"b", "b/x", "b/x/y", "ab"} <= names.keys()
        assert not {"a", "a/x", "a/x/y"} & names.keys()
        assert (names["b"].id, names["b/x"].id, names["b/x/y"].id, names["ab"].id) == (a.id, ax.id, axy.id, ab.id)
        assert names["b/x"].uidvalidity == ax.uidvalidity  # a renamed mailbox keeps its UIDs
        assert [m.uid for m in await s.fetch(names["b/x"].id)] == [uid]

        with pytest.raises(MailboxNotFound):
            await s.rename_mailbox(acc.id, "a", "c")
        with pytest.raises(AlreadyExists):
            await s.rename_mailbox(acc.id, "b", "ab")
        await s.create_mailbox(acc.id, "c/x")
        with pytest.raises(AlreadyExists):  # a child's target exists: nothing is renamed
            await s.rename_mailbox(acc.id, "b", "c")
        assert (await s.get_mailbox(acc.id, "b/x")).id == ax.id
        with pytest.raises(NotAllowed):
            await s.rename_mailbox(acc.id, "b", "b/x/z")

    async def test_rename_inbox_moves_messages(self, metadata_store: MetadataStore) -> None:
        s = metadata_store
        acc = await account(s)
        box = await inbox(s, acc)
        child = await s.create_mailbox(acc.id, "INBOX/child")
        r1 = await insert(s, box.id, "m1", flags=("\\Seen",))
        r2 = await insert(s, box.id, "m2")

        await s.rename_mailbox(acc.id, "inbox", "Old")
        old = await s.get_mailbox(acc.id, "Old")
        assert old.uidvalidity != box.uidvalidity
        moved = await s.fetch(old.id)
        assert [(m.blob_key, m.flags) for m in moved] == [("m1", ("\\Seen",)), ("m2", ())]
        new_inbox = await inbox(s, acc)
        assert new_inbox.id == box.id and await s.fetch(box.id) == []
        assert new_inbox.uidnext == box.uidnext + 2  # UIDs are not reused in INBOX
        expunged = [c for c in await s.changes_since(box.id, r2.modseq) if c.kind == "expunge"]
        assert sorted(c.uid for c in expunged) == [r1.uid, r2.uid]
        assert (await s.get_mailbox(acc.id, "INBOX/child")).id == child.id  # INBOX children stay
        assert await usage(s, acc.name) == (200, 2)
        assert await s.blob_referenced("m1")
        with pytest.raises(AlreadyExists):
            await s.rename_mailbox(acc.id, "INBOX", "Old")

    async def test_account_isolation(self, metadata_store: MetadataStore) -> None:
        s = metadata_store
        alice = await account(s)
        bob = await account(s, "bob@example.org")
        secret = await s.create_mailbox(alice.id, "Secret")
        await insert(s, secret.id, "alice-mail")

        with pytest.raises(MailboxNotFound):
            await s.get_mailbox(bob.id, "Secret")
        assert "Secret" not in [m.name for m in await s.list_mailboxes(bob.id)]
        assert (await inbox(s, alice)).id != (await inbox(s, bob)).id
        with pytest.raises(MailboxNotFound):
            await s.rename_mailbox(bob.id, "Secret", "Mine")
        with pytest.raises(MailboxNotFound):
            await s.delete_mailbox(bob.id, "Secret")
        await s.create_mailbox(bob.id, "Secret")  # same name, other account: a separate mailbox
        await s.rename_mailbox(bob.id, "Secret", "Renamed")
        await s.set_subscribed(bob.id, "Secret", True)
        assert (await s.get_mailbox(alice.id, "Secret")).id == secret.id
        assert not (await s.get_mailbox(alice.id, "Secret")).subscribed
        assert await s.list_subscriptions(alice.id) == []
        assert [m.blob_key for m in await s.fetch(secret.id)] == ["alice-mail"]
        await s.rename_mailbox(bob.id, "INBOX", "Old")
        assert [m.blob_key for m in await s.fetch(secret.id)] == ["alice-mail"]
        assert (await s.recompute_usage(bob.id)) == (0, 0)
        assert (await s.recompute_usage(alice.id)) == (100, 1)

    # ------------------------------------------------------------------ UIDs, MODSEQs

    async def test_uids_strictly_increase_and_are_never_reused(self, metadata_store: MetadataStore) -> None:
        s = metadata_store
        acc = await account(s)
        box = await inbox(s, acc)
        results = [await insert(s, box.id, f"k{i}") for i in range(3)]
        assert [r.uid for r in results] == [1, 2, 3]
        assert [r.modseq for r in results] == sorted({r.modseq for r in results})
        assert all(r.uidvalidity == box.uidvalidity for r in results)
        await s.store_flags(box.id, [(2, 3)], "add", ["\\Deleted"], None)
        assert (await s.expunge(box.id, None)).expunged == (2, 3)
        after = await insert(s, box.id, "k3")
        assert after.uid == 4 and after.modseq > results[-1].modseq
        refreshed = await s.get_mailbox(acc.id, "INBOX")
        assert refreshed.uidnext == 5 and refreshed.highestmodseq == after.modseq

    async def test_concurrent_writes_fail_alone(self, metadata_store: MetadataStore) -> None:
        """Writes issued together (a backend may commit them as one group) still succeed or fail one by one."""
        s = metadata_store
        acc = await account(s)
        box = await inbox(s, acc)
        full = await account(s, "full@example.org", quota_messages=1)
        full_box = await inbox(s, full)
        await insert(s, full_box.id, "old")
        results = await asyncio.gather(
            *(s.insert_message(box.id, message(f"ok{i}"), True) for i in range(10)),
            s.create_mailbox(acc.id, "INBOX"),  # AlreadyExists
            s.insert_message(full_box.id, message("refused"), True),  # OverQuota
            s.insert_message(999_999, message("nowhere"), True),  # MailboxNotFound
            *(s.insert_message(box.id, message(f"ok{i}"), True) for i in range(10, 20)),
            return_exceptions=True,
        )
        assert isinstance(results[10], AlreadyExists)
        assert isinstance(results[11], OverQuota)
        assert isinstance(results[12], MailboxNotFound)
        stored = [r for r in results if isinstance(r, InsertResult)]
        assert len(stored) == 20 and len({r.uid for r in stored}) == 20
        assert sorted(m.blob_key for m in await s.fetch(box.id)) == sorted(f"ok{i}" for i in range(20))
        assert [m.blob_key for m in await s.fetch(full_box.id)] == ["old"]  # the refused write left nothing
        assert await usage(s, acc.name) == (20 * 100, 20)

    async def test_concurrent_inserts_get_distinct_increasing_uids(self, metadata_store: MetadataStore) -> None:
        s = metadata_store
        acc = await account(s)
        box = await inbox(s, acc)

        async def writer(n: int) -> list[InsertResult]:
            return [await insert(s, box.id, f"t{n}-{i}", size=1) for i in range(10)]

        per_task = await asyncio.gather(*(writer(n) for n in range(20)))
        for results in per_task:  # each task sees its own inserts in order
            assert [r.uid for r in results] == sorted(r.uid for r in results)
            assert [r.modseq for r in results] == sorted(r.modseq for r in results)
        everything = [r for results in per_task for r in results]
        assert len({r.uid for r in everything}) == 200
        assert len({r.modseq for r in everything}) == 200
        fetched = await s.fetch(box.id)
        assert [m.uid for m in fetched] == list(range(1, 201))
        by_uid = sorted(everything, key=lambda r: r.uid)
        assert [r.modseq for r in by_uid] == sorted(r.modseq for r in by_uid)  # UID order is commit order
        assert (await s.mailbox_counts(box.id)).messages == 200

    async def test_two_clients_on_one_database_share_uid_allocation(self, open_store: OpenStore) -> None:
        # Two store instances stand in for two mailstore replicas: no in-process counters.
        first, second = await open_store(), await open_store()
        acc = await account(first)
        box = await inbox(second, acc)

        async def writer(store: MetadataStore, tag: str) -> list[int]:
            return [(await insert(store, box.id, f"{tag}{i}", size=1)).uid for i in range(10)]

        uids = await asyncio.gather(writer(first, "a"), writer(second, "b"), writer(first, "c"), writer(second, "d"))
        assert sorted(u for batch in uids for u in batch) == list(range(1, 41))
        assert await usage(first, acc.name) == (40, 40)

    # ------------------------------------------------------------------ quota

    async def test_quota_bytes_and_messages(self, metadata_store: MetadataStore) -> None:
        s = metadata_store
        acc = await account(s, quota_bytes=250, quota_messages=0)
        box = await inbox(s, acc)
        await insert(s, box.id, "a", size=100)
        await insert(s, box.id, "b", size=150)  # exactly at the limit is fine
        with pytest.raises(OverQuota):
            await insert(s, box.id, "c", size=1)
        assert not await s.blob_referenced("c")
        forced = await s.insert_message(box.id, message("c", size=1), enforce_quota=False)
        assert forced.uid == 3
        assert await usage(s, acc.name) == (251, 3)

        await s.set_quota(acc.name, 0, 4)  # bytes unlimited, 4 messages
        await insert(s, box.id, "d", size=10_000)
        with pytest.raises(OverQuota):
            await insert(s, box.id, "e", size=1)
        await s.set_quota(acc.name, 0, 0)
        await insert(s, box.id, "e", size=10**9)  # 0 = unlimited
        with pytest.raises(MailboxNotFound):
            await insert(s, box.id + 10_000, "f")

    async def test_deliver_to_mixed_targets(self, metadata_store: MetadataStore) -> None:
        s = metadata_store
        full = await account(s, "full@example.org", quota_messages=1)
        roomy = await account(s)
        full_box, roomy_box = await inbox(s, full), await inbox(s, roomy)
        await insert(s, full_box.id, "old")
        work = await s.create_mailbox(roomy.id, "Work")

        results = await s.deliver([roomy_box.id, full_box.id, 999_999, work.id], message("shared", size=50), True)
        assert isinstance(results[0], InsertResult) and results[0].uid == 1
        assert isinstance(results[1], OverQuota)
        assert isinstance(results[2], MailboxNotFound)
        assert isinstance(results[3], InsertResult) and results[3].uidvalidity == work.uidvalidity
        assert [m.blob_key for m in await s.fetch(full_box.id)] == ["old"]
        assert (await s.get_mailbox(full.id, "INBOX")).uidnext == 2  # the refused target allocated nothing
        assert await usage(s, roomy.name) == (100, 2)

        # One blob, two references: expunging one copy keeps it.
        await s.store_flags(roomy_box.id, [(1, 0)], "add", ["\\Deleted"], None)
        assert (await s.expunge(roomy_box.id, None)).freed_blobs == ()
        await s.store_flags(work.id, [(1, 0)], "add", ["\\Deleted"], None)
        assert (await s.expunge(work.id, None)).freed_blobs == ("shared",)

    # ------------------------------------------------------------------ fetch and flags

    async def test_fetch_ranges_fields_and_header(self, metadata_store: MetadataStore) -> None:
        s = metadata_store
        acc = await account(s)
        box = await inbox(s, acc)
        for i in range(1, 8):
            await insert(s, box.id, f"k{i}", size=i, sent_date=None if i == 7 else 1_700_000_000)

        async def uids(ranges: list[tuple[int, int]] | None, changed_since: int = 0) -> list[int]:
            return [m.uid for m in await s.fetch(box.id, ranges, changed_since)]

        assert await uids(None) == [1, 2, 3, 4, 5, 6, 7]
        assert await uids([(2, 3), (6, 6)]) == [2, 3, 6]
        assert await uids([(5, 0)]) == [5, 6, 7]  # "5:*"
        assert await uids([(4, 2)]) == [2, 3, 4]  # "4:2" == "2:4"
        assert await uids([(9, 0)]) == [7]  # "9:*" still names the highest UID (RFC 3501 §9)
        assert await uids([(0, 0)]) == [7]  # "*"
        assert await uids([(20, 30)]) == []
        assert await uids([(i, i) for i in range(1, 100, 2)]) == [1, 3, 5, 7]  # many ranges

        first = (await s.fetch(box.id, [(1, 1)]))[0]
        assert first.header == b"" and first.envelope == b"env:k1" and first.structure == b"struct:k1"
        assert (first.size, first.internal_date, first.tz_offset, first.sent_date) == (
            1,
            1_700_000_100,
            120,
            1_700_000_000,
        )
        assert (await s.fetch(box.id, [(1, 1)], with_header=True))[0].header == b"Subject: k1\r\n\r\n"
        assert (await s.fetch(box.id, [(7, 7)]))[0].sent_date is None

        mark = (await s.get_mailbox(acc.id, "INBOX")).highestmodseq
        await s.store_flags(box.id, [(3, 3), (5, 5)], "add", ["\\Flagged"], None)
        assert await uids(None, changed_since=mark) == [3, 5]
        assert await uids([(4, 0)], changed_since=mark) == [5]
        with pytest.raises(MailboxNotFound):
            await s.fetch(box.id + 10_000)

    async def test_store_flags_modes_and_modseq(self, metadata_store: MetadataStore) -> None:
        s = metadata_store
        acc = await account(s)
        box = await inbox(s, acc)
        r1 = await insert(s, box.id, "k1", flags=("\\seen", "$Label", "\\Recent", "$Label"))
        r2 = await insert(s, box.id, "k2")
        assert (await s.fetch(box.id, [(1, 1)]))[0].flags == ("$Label", "\\Seen")  # canonical, deduped, sorted

        updated, failed = await s.store_flags(box.id, [(1, 2)], "add", ["\\SEEN", "\\Recent"], None)
        assert failed == [] and [(u.uid, u.flags) for u in updated] == [(2, ("\\Seen",))]  # uid 1 unchanged
        assert updated[0].modseq == r2.modseq + 1
        assert (await s.fetch(box.id, [(1, 1)]))[0].modseq == r1.modseq  # no change, no new MODSEQ

        updated, _ = await s.store_flags(box.id, [(1, 0)], "replace", ["\\Answered", "kw"], None)
        assert {u.uid: u.flags for u in updated} == {1: ("\\Answered", "kw"), 2: ("\\Answered", "kw")}
        assert len({u.modseq for u in updated}) == 1  # changed together, one MODSEQ
        shared = updated[0].modseq

        updated, _ = await s.store_flags(box.id, [(2, 2)], "remove", ["kw", "absent"], None)
        assert [(u.uid, u.flags, u.modseq) for u in updated] == [(2, ("\\Answered",), shared + 1)]
        assert (await s.get_mailbox(acc.id, "INBOX")).highestmodseq == shared + 1

        # RFC 7162 UNCHANGEDSINCE: uid 2 changed after `shared`, so it fails; uid 1 is updated.
        updated, failed = await s.store_flags(box.id, [(1, 2)], "add", ["\\Flagged"], shared)
        assert failed == [2] and [u.uid for u in updated] == [1]
        assert (await s.fetch(box.id, [(2, 2)]))[0].flags == ("\\Answered",)
        _, failed = await s.store_flags(box.id, [(1, 2)], "add", ["\\Draft"], 0)
        assert failed == [1, 2]
        assert await s.store_flags(box.id, [(50, 60)], "add", ["x"], None) == ([], [])
        with pytest.raises(MailboxNotFound):
            await s.store_flags(box.id + 10_000, [(1, 1)], "add", ["x"], None)

    async def test_mailbox_counts_and_claim_recent(self, metadata_store: MetadataStore) -> None:
        s = metadata_store
        acc = await account(s)
        box = await inbox(s, acc)
        empty = await s.mailbox_counts(box.id)
        assert (empty.messages, empty.unseen, empty.size, empty.deleted, empty.recent, empty.first_unseen_uid) == (
            0,
            0,
            0,
            0,
            0,
            0,
        )
        await insert(s, box.id, "k1", size=10, flags=("\\Seen",))
        await insert(s, box.id, "k2", size=20, flags=("\\Deleted",))
        await insert(s, box.id, "k3", size=30)
        counts = await s.mailbox_counts(box.id)
        assert (counts.messages, counts.unseen, counts.size, counts.deleted, counts.recent) == (3, 2, 60, 1, 3)
        assert counts.first_unseen_uid == 2

        assert await s.claim_recent(box.id) == (1, 4)
        assert (await s.mailbox_counts(box.id)).recent == 0
        assert await s.claim_recent(box.id) == (4, 4)  # nothing new for the next session
        await insert(s, box.id, "k4")
        assert (await s.mailbox_counts(box.id)).recent == 1
        assert await s.claim_recent(box.id) == (4, 5)
        with pytest.raises(MailboxNotFound):
            await s.claim_recent(box.id + 10_000)

    # ------------------------------------------------------------------ copy, move, expunge

    async def test_copy_shares_blobs_and_maps_uids(self, metadata_store: MetadataStore) -> None:
        s = metadata_store
        acc = await account(s)
        box = await inbox(s, acc)
        dest = await s.create_mailbox(acc.id, "Archive")
        await insert(s, dest.id, "pre-existing")
        for i in range(1, 5):
            await insert(s, box.id, f"k{i}", flags=("\\Flagged",))

        result = await s.copy(box.id, [(3, 4), (1, 1)], dest.id, move=False, enforce_quota=True)
        assert result.mapping == ((1, 2), (3, 3), (4, 4))  # ascending source order
        assert result.uidvalidity == dest.uidvalidity and result.expunged == () and result.source_modseq == 0
        copied = await s.fetch(dest.id, [(2, 0)])
        assert [(m.blob_key, m.flags, m.modseq) for m in copied] == [
            (k, ("\\Flagged",), result.destination_modseq) for k in ("k1", "k3", "k4")
        ]
        assert len(await s.fetch(box.id)) == 4
        assert await usage(s, acc.name) == (800, 8)

        # Expunging the originals does not free blobs still used by the copies.
        await s.store_flags(box.id, [(1, 0)], "add", ["\\Deleted"], None)
        gone = await s.expunge(box.id, None)
        assert gone.expunged == (1, 2, 3, 4) and gone.freed_blobs == ("k2",)
        assert (gone.freed_bytes, gone.freed_messages) == (400, 4)
        assert await s.blob_referenced("k1") and not await s.blob_referenced("k2")
        await s.store_flags(dest.id, [(2, 3)], "add", ["\\Deleted"], None)
        assert (await s.expunge(dest.id, None)).freed_blobs == ("k1", "k3")
        assert await s.blob_referenced("k4")

        empty = await s.copy(box.id, [(1, 0)], dest.id, move=False, enforce_quota=True)
        assert (
            empty.mapping == () and empty.destination_modseq == (await s.get_mailbox(acc.id, "Archive")).highestmodseq
        )

    async def test_save_date_is_when_the_row_was_stored(self, metadata_store: MetadataStore) -> None:
        # RFC 8514 §3: the save date of a delivery/APPEND is now, of a COPY or MOVE the time of the
        # copy, never the internal date the client gave
        s = metadata_store
        acc = await account(s)
        box = await inbox(s, acc)
        other = await s.create_mailbox(acc.id, "Other")
        before = int(time.time())
        first = await insert(s, box.id, "sd1")
        [stored] = await s.fetch(box.id, [(first.uid, first.uid)])
        assert before <= stored.save_date <= int(time.time()) and stored.save_date != stored.internal_date
        await asyncio.sleep(1.1)
        copied = await s.copy(box.id, [(first.uid, first.uid)], other.id, move=False, enforce_quota=True)
        [copy] = await s.fetch(other.id, [(copied.mapping[0][1],) * 2])
        assert copy.save_date > stored.save_date, "a copy is saved when it is copied"

    async def test_copy_respects_quota_but_move_within_account_does_not(self, metadata_store: MetadataStore) -> None:
        s = metadata_store
        acc = await account(s, quota_messages=3)
        box = await inbox(s, acc)
        dest = await s.create_mailbox(acc.id, "Archive")
        await insert(s, box.id, "k1")
        await insert(s, box.id, "k2")
        with pytest.raises(OverQuota):
            await s.copy(box.id, [(1, 2)], dest.id, move=False, enforce_quota=True)
        assert await s.fetch(dest.id) == []
        moved = await s.copy(box.id, [(1, 2)], dest.id, move=True, enforce_quota=True)
        assert moved.mapping == ((1, 1), (2, 2))
        assert await usage(s, acc.name) == (200, 2)
        await s.copy(dest.id, [(1, 1)], box.id, move=False, enforce_quota=False)
        assert await usage(s, acc.name) == (300, 3)

    async def test_move_expunges_source_and_keeps_blobs(self, metadata_store: MetadataStore) -> None:
        s = metadata_store
        acc = await account(s)
        box = await inbox(s, acc)
        dest = await s.create_mailbox(acc.id, "Archive")
        inserted = [await insert(s, box.id, f"k{i}", flags=("\\Seen",)) for i in range(1, 4)]
        before = inserted[-1].modseq

        moved = await s.copy(box.id, [(1, 2)], dest.id, move=True, enforce_quota=True)
        assert moved.mapping == ((1, 1), (2, 2)) and moved.expunged == (1, 2)
        assert moved.source_modseq == before + 1
        assert [m.uid for m in await s.fetch(box.id)] == [3]
        assert [(m.blob_key, m.flags) for m in await s.fetch(dest.id)] == [("k1", ("\\Seen",)), ("k2", ("\\Seen",))]
        changes = await s.changes_since(box.id, before)
        assert [(c.uid, c.kind, c.modseq) for c in changes] == [(1, "expunge", before + 1), (2, "expunge", before + 1)]
        assert await usage(s, acc.name) == (300, 3)

        # A moved message's blob is referenced once: expunging it frees it.
        await s.store_flags(dest.id, [(1, 1)], "add", ["\\Deleted"], None)
        assert (await s.expunge(dest.id, None)).freed_blobs == ("k1",)

    async def test_move_to_another_account_moves_usage(self, metadata_store: MetadataStore) -> None:
        s = metadata_store
        alice, bob = await account(s), await account(s, "bob@example.org")
        await insert(s, (await inbox(s, alice)).id, "k1", size=70)
        await s.copy((await inbox(s, alice)).id, [(1, 1)], (await inbox(s, bob)).id, move=True, enforce_quota=True)
        assert await usage(s, alice.name) == (0, 0)
        assert await usage(s, bob.name) == (70, 1)

    async def test_expunge_only_deleted_and_restricted_to_uids(self, metadata_store: MetadataStore) -> None:
        s = metadata_store
        acc = await account(s)
        box = await inbox(s, acc)
        for i in range(1, 6):
            await insert(s, box.id, f"k{i}", size=10)
        nothing = await s.expunge(box.id, None)
        assert nothing.expunged == () and nothing.modseq == (await s.get_mailbox(acc.id, "INBOX")).highestmodseq
        await s.store_flags(box.id, [(1, 1), (3, 4)], "add", ["\\Deleted"], None)

        partial = await s.expunge(box.id, [(2, 3)])  # UID EXPUNGE 2:3 (RFC 4315): only 3 is \Deleted
        assert partial.expunged == (3,) and partial.freed_blobs == ("k3",)
        assert (partial.freed_bytes, partial.freed_messages) == (10, 1)
        assert partial.modseq == (await s.get_mailbox(acc.id, "INBOX")).highestmodseq
        rest = await s.expunge(box.id, None)
        assert rest.expunged == (1, 4) and rest.modseq > partial.modseq
        assert [m.uid for m in await s.fetch(box.id)] == [2, 5]
        assert await usage(s, acc.name) == (20, 2)
        assert await s.recompute_usage(acc.id) == (20, 2)

    async def test_body_references_and_remove_messages_for_repair(self, metadata_store: MetadataStore) -> None:
        # `mailstack fsck`: every row's blob key, then exact UIDs expunged whether \Deleted or not.
        s = metadata_store
        alice, bob = await account(s), await account(s, "bob@example.org")
        box = await inbox(s, alice)
        for i in range(1, 4):
            await insert(s, box.id, f"k{i}", size=10)
        await insert(s, (await inbox(s, bob)).id, "k9", size=7)
        refs = await s.body_references(alice.id)
        assert [(r.account, r.mailbox, r.uid, r.blob_key, r.size) for r in refs] == [
            (alice.name, "INBOX", u, f"k{u}", 10) for u in (1, 2, 3)
        ]
        assert refs[0].uidvalidity == box.uidvalidity and refs[0].mailbox_id == box.id
        assert {r.blob_key for r in await s.body_references()} == {"k1", "k2", "k3", "k9"}
        before = (await s.get_mailbox(alice.id, "INBOX")).highestmodseq

        result = await s.remove_messages(box.id, [2])
        assert result.expunged == (2,) and result.freed_blobs == ("k2",) and result.modseq > before
        assert [m.uid for m in await s.fetch(box.id)] == [1, 3]
        assert await usage(s, alice.name) == (20, 2)
        assert [(c.uid, c.kind) for c in await s.changes_since(box.id, before)] == [(2, "expunge")]
        assert not await s.blob_referenced("k2")

    async def test_delete_mailbox_frees_its_messages(self, metadata_store: MetadataStore) -> None:
        s = metadata_store
        acc = await account(s)
        box = await s.create_mailbox(acc.id, "Old")
        await insert(s, box.id, "k1", size=5)
        await insert(s, box.id, "k2", size=6)
        await s.copy(box.id, [(2, 2)], (await inbox(s, acc)).id, move=False, enforce_quota=True)
        result = await s.delete_mailbox(acc.id, "Old")
        assert result.expunged == (1, 2) and result.freed_blobs == ("k1",)
        assert (result.freed_bytes, result.freed_messages) == (11, 2)
        assert await usage(s, acc.name) == (6, 1)

    async def test_changes_since(self, metadata_store: MetadataStore) -> None:
        s = metadata_store
        acc = await account(s)
        box = await inbox(s, acc)
        r1 = await insert(s, box.id, "k1")
        r2 = await insert(s, box.id, "k2")
        r3 = await insert(s, box.id, "k3")
        mark = r3.modseq
        r4 = await insert(s, box.id, "k4")
        (flagged,), _ = await s.store_flags(box.id, [(r1.uid, r1.uid)], "add", ["\\Seen"], None)
        await s.store_flags(box.id, [(r2.uid, r2.uid)], "add", ["\\Deleted"], None)
        gone = await s.expunge(box.id, None)

        changes = await s.changes_since(box.id, mark)
        assert [(c.uid, c.kind, c.modseq, c.flags) for c in changes] == [
            (r4.uid, "new", r4.modseq, ()),
            (r1.uid, "flags", flagged.modseq, ("\\Seen",)),
            (r2.uid, "expunge", gone.modseq, ()),
        ]
        # A message inserted and then changed after the mark is still "new", with current flags.
        await s.store_flags(box.id, [(r4.uid, r4.uid)], "add", ["\\Flagged"], None)
        latest = await s.changes_since(box.id, mark)
        assert [(c.uid, c.kind, c.flags) for c in latest][-1] == (r4.uid, "new", ("\\Flagged",))
        assert await s.changes_since(box.id, (await s.get_mailbox(acc.id, "INBOX")).highestmodseq) == []
        everything = await s.changes_since(box.id, 0)
        assert [c.modseq for c in everything] == sorted(c.modseq for c in everything)
        assert {c.uid for c in everything if c.kind == "new"} == {r1.uid, r3.uid, r4.uid}

    async def test_changes_since_tells_a_long_log_whole(self, metadata_store: MetadataStore) -> None:
        """A session away for long catches up from hundreds of changes of each kind: every one is
        told, in MODSEQ order, also past any batch a store reads at once."""
        s = metadata_store
        acc = await account(s)
        box = await inbox(s, acc)
        mark = (await s.get_mailbox(acc.id, "INBOX")).highestmodseq
        added = [await insert(s, box.id, f"long{n}") for n in range(300)]
        doomed = [r.uid for r in added[:200]]
        await s.store_flags(box.id, [(doomed[0], doomed[-1])], "add", ["\\Deleted"], None)
        counts = await s.mailbox_counts(box.id)  # a large mailbox's status, and a small one's below
        assert (counts.messages, counts.deleted, counts.unseen) == (300, 200, 300)
        await s.expunge(box.id, None)
        counts = await s.mailbox_counts(box.id)
        assert (counts.messages, counts.deleted, counts.first_unseen_uid) == (100, 0, added[200].uid)
        changes = await s.changes_since(box.id, mark)
        assert [c.modseq for c in changes] == sorted(c.modseq for c in changes)
        assert sorted(c.uid for c in changes if c.kind == "expunge") == doomed
        assert sorted(c.uid for c in changes if c.kind == "new") == [r.uid for r in added[200:]]
        since = (await s.get_mailbox(acc.id, "INBOX")).highestmodseq  # a short tail: one new message
        last = await insert(s, box.id, "long-last")
        assert [(c.uid, c.kind) for c in await s.changes_since(box.id, since)] == [(last.uid, "new")]

    async def test_prune_changes_forgets_old_expunges_and_says_up_to_where(self, metadata_store: MetadataStore) -> None:
        s = metadata_store
        acc = await account(s)
        box = await inbox(s, acc)
        other = await s.get_mailbox(acc.id, "Sent")
        first = await insert(s, box.id, "p1")
        await insert(s, box.id, "p2")
        await s.store_flags(box.id, [(first.uid, first.uid)], "add", ["\\Deleted"], None)
        old = await s.expunge(box.id, None)
        assert await s.pruned_modseq(box.id) == 0, "a whole log"
        assert await s.prune_changes(time.time() - 3600) == 0, "nothing is an hour old"
        assert await s.prune_changes(time.time() + 1) == 1
        assert await s.pruned_modseq(box.id) == old.modseq and await s.pruned_modseq(other.id) == 0
        assert [c for c in await s.changes_since(box.id, 0) if c.kind == "expunge"] == []
        # later expunges are logged again; pruning never moves the mark back
        second = await insert(s, box.id, "p3")
        await s.store_flags(box.id, [(second.uid, second.uid)], "add", ["\\Deleted"], None)
        new = await s.expunge(box.id, None)
        assert [c.uid for c in await s.changes_since(box.id, old.modseq) if c.kind == "expunge"] == [second.uid]
        assert await s.prune_changes(time.time() - 3600) == 0 and await s.pruned_modseq(box.id) == old.modseq
        assert new.modseq > old.modseq

    # ------------------------------------------------------------------ leases

    async def test_leases(self, metadata_store: MetadataStore) -> None:
        s = metadata_store
        assert await s.acquire_lease("pop3:alice", "s1", 1) == (True, "s1")
        assert await s.acquire_lease("pop3:alice", "s2", 60) == (False, "s1")
        assert await s.acquire_lease("pop3:bob", "s2", 60) == (True, "s2")  # leases are independent
        assert await s.acquire_lease("pop3:alice", "s1", 1) == (True, "s1")  # renewal by the holder
        await s.release_lease("pop3:alice", "s2")  # not the holder: no effect
        assert await s.acquire_lease("pop3:alice", "s2", 60) == (False, "s1")
        await asyncio.sleep(1.1)  # s1's lease (ttl 1 s) expires
        assert await s.acquire_lease("pop3:alice", "s2", 60) == (True, "s2")
        await s.release_lease("pop3:alice", "s2")
        assert await s.acquire_lease("pop3:alice", "s3", 60) == (True, "s3")

    # ------------------------------------------------------------------ failed logins (ADR 0046)

    async def test_failed_logins_are_counted_per_ip_account_and_pair_within_the_window(
        self, metadata_store: MetadataStore
    ) -> None:
        s = metadata_store
        assert await s.auth_failures("192.0.2.1", "a@x.test", 60) == (0, 0, 0)
        for ip, account in [("192.0.2.1", "a@x.test")] * 3 + [("192.0.2.1", "b@x.test"), ("192.0.2.9", "a@x.test")]:
            await s.record_auth_failure(ip, account, 60)
        await s.record_auth_failure("192.0.2.1", "", 60)  # a Send token: the IP only
        assert await s.auth_failures("192.0.2.1", "a@x.test", 60) == (5, 4, 3)
        assert await s.auth_failures("192.0.2.9", "b@x.test", 60) == (1, 1, 0)
        assert await s.auth_failures("192.0.2.1", "", 60) == (5, 0, 0)  # "" is no account
        await s.forget_auth_failures("192.0.2.1", "a@x.test")  # its owner logged in from there
        assert await s.auth_failures("192.0.2.1", "a@x.test", 60) == (2, 1, 0)  # the guesses elsewhere stay
        await asyncio.sleep(0.3)
        assert await s.auth_failures("192.0.2.1", "b@x.test", 0.2) == (0, 0, 0)  # out of a short window
        await s.record_auth_failure("192.0.2.7", "c@x.test", 0.2)  # and dropped as the next one is written
        assert await s.auth_failures("192.0.2.1", "b@x.test", 60) == (0, 0, 0)
        assert await s.auth_failures("192.0.2.7", "c@x.test", 60) == (1, 1, 1)

    # ------------------------------------------------------------------ two replicas at once

    async def test_two_replicas_hammering_one_mailbox_keep_uid_and_modseq_invariants(
        self, open_store: OpenStore
    ) -> None:
        """APPEND, STORE, MOVE and EXPUNGE through two store instances (as two mailstore replicas) on one
        mailbox, while a client on each checks what IMAP relies on (ClientView)."""
        first, second = await open_store(), await open_store()
        acc = await account(first)
        box = await inbox(first, acc)
        archive = await second.create_mailbox(acc.id, "Archive")
        inserted: list[InsertResult] = []
        expunged: list[int] = []  # messages gone for good (moves keep them)

        async def appender(store: MetadataStore, tag: str) -> None:
            for i in range(24):
                inserted.append(await insert(store, box.id, f"{tag}{i}", size=10))

        async def flagger(store: MetadataStore, flag: str) -> None:
            for i in range(12):
                await store.store_flags(box.id, [(1 + i % 5, 0)], "add" if i % 2 else "remove", [flag], None)

        async def mover(store: MetadataStore) -> None:
            for i in range(8):
                source, target = (box.id, archive.id) if i % 2 == 0 else (archive.id, box.id)
                await store.copy(source, [(1, 0)] if i % 4 else [(i + 1, i + 3)], target, move=True, enforce_quota=True)

        async def expunger(store: MetadataStore) -> None:
            for i in range(8):
                await store.store_flags(box.id, [(3 * i + 1, 3 * i + 1)], "add", ["\\Deleted"], None)
                expunged.extend((await store.expunge(box.id, None)).expunged)

        views = [ClientView(first, box.id), ClientView(second, box.id)]
        await asyncio.gather(
            views[0].watch(), views[1].watch(),
            ClientView.until_done(
                views, appender(first, "a"), appender(second, "b"), flagger(first, "\\Seen"), flagger(second, "kw"),
                mover(first), mover(second), expunger(second), expunger(first),
            ),
        )  # fmt: skip
        assert min(v.looks for v in views) >= 2

        # Inserts into one mailbox: UIDs distinct, and in UID order their MODSEQs rise (commit order).
        assert len({r.uid for r in inserted}) == len(inserted) == 48
        by_uid = sorted(inserted, key=lambda r: r.uid)
        assert [r.modseq for r in by_uid] == sorted({r.modseq for r in by_uid})
        for store in (first, second):
            present = await check_mailboxes(store, acc, [box, archive])
            assert present + len(expunged) == 48  # moved messages are neither lost nor doubled
            assert await usage(store, acc.name) == (present * 10, present)
        assert await first.recompute_usage(acc.id) == (present * 10, present)

    async def test_flag_changes_from_two_replicas_at_once_are_never_lost(self, open_store: OpenStore) -> None:
        # STORE reads flags and writes them back: without the mailbox lock one replica's change would be lost.
        first, second = await open_store(), await open_store()
        box = await inbox(first, await account(first))
        for i in range(10):
            await insert(second, box.id, f"k{i}")
        for k in range(5):
            await asyncio.gather(
                first.store_flags(box.id, [(1, 0)], "add", [f"a{k}"], None),
                second.store_flags(box.id, [(1, 0)], "add", [f"b{k}"], None),
            )
        for record in await second.fetch(box.id):
            assert {f"a{k}" for k in range(5)} | {f"b{k}" for k in range(5)} <= set(record.flags)

    async def test_delivery_racing_mailbox_delete_leaves_no_orphan(self, open_store: OpenStore) -> None:
        first, second = await open_store(), await open_store()
        acc = await account(first)
        for round_ in range(3):
            target = await first.create_mailbox(acc.id, f"Doomed{round_}")

            async def deliveries(target_id: int = target.id, tag: str = f"r{round_}-") -> list[object]:
                return [(await second.deliver([target_id], message(f"{tag}{i}"), True))[0] for i in range(10)]

            async def delete(name: str = target.name) -> None:
                await asyncio.sleep(0.005)
                await first.delete_mailbox(acc.id, name)

            outcomes, _ = await asyncio.gather(deliveries(), delete())
            assert all(isinstance(o, InsertResult | MailboxNotFound) for o in outcomes)
        # Every stored message went with its mailbox: no counters, no blob references left behind.
        assert await usage(first, acc.name) == (0, 0)
        assert await second.recompute_usage(acc.id) == (0, 0)
        assert await first.body_references(acc.id) == []
        for round_ in range(3):
            assert not any([await second.blob_referenced(f"r{round_}-{i}") for i in range(10)])

    async def test_replicas_share_leases_and_recent_claims(self, open_store: OpenStore) -> None:
        first, second = await open_store(), await open_store()
        grants = await asyncio.gather(
            *(store.acquire_lease("job:sweep", f"replica-{i}", 60) for i, store in enumerate([first, second] * 4))
        )
        assert sum(granted for granted, _ in grants) == 1, "one replica holds a background job"
        assert len({holder for _, holder in grants}) == 1
        acc = await account(first)
        box = await inbox(first, acc)

        async def deliver_and_claim(store: MetadataStore, tag: str) -> list[tuple[int, int]]:
            claims = []
            for i in range(6):
                await insert(store, box.id, f"{tag}{i}")
                claims.append(await store.claim_recent(box.id))
            return claims

        claims = [c for batch in await asyncio.gather(deliver_and_claim(first, "a"), deliver_and_claim(second, "b"))
                  for c in batch]  # fmt: skip
        claimed = sorted(uid for floor, uidnext in claims for uid in range(floor, uidnext))
        assert claimed == list(range(1, 13)), "each message is \\Recent in exactly one session"

    async def test_replicas_count_each_others_failed_logins(self, open_store: OpenStore) -> None:
        first, second = await open_store(), await open_store()
        await asyncio.gather(
            *(store.record_auth_failure("198.51.100.4", "v@x.test", 300) for store in [first, second] * 5)
        )
        assert await first.auth_failures("198.51.100.4", "v@x.test", 300) == (10, 10, 10)
        await second.forget_auth_failures("198.51.100.4", "v@x.test")
        assert await first.auth_failures("198.51.100.4", "v@x.test", 300) == (0, 0, 0)

    async def test_two_replicas_delivering_to_a_full_account_never_overshoot(self, open_store: OpenStore) -> None:
        first, second = await open_store(), await open_store()
        acc = await account(first, quota_messages=5)
        box = await inbox(first, acc)
        sent = await first.get_mailbox(acc.id, "Sent")  # two mailboxes, one account: one quota
        outcomes = await asyncio.gather(
            *(
                store.insert_message(target, message(f"q{i}"), enforce_quota=True)
                for i, (store, target) in enumerate([(first, box.id), (second, sent.id)] * 8)
            ),
            return_exceptions=True,
        )
        assert sum(isinstance(o, InsertResult) for o in outcomes) == 5
        assert all(isinstance(o, InsertResult | OverQuota) for o in outcomes)
        assert await usage(second, acc.name) == (500, 5) == await first.recompute_usage(acc.id)

    async def test_delivery_racing_renames_loses_and_doubles_nothing(self, open_store: OpenStore) -> None:
        # Replica A renames a mailbox back and forth and renames INBOX (which moves its messages out)
        # while replica B delivers into both: every message ends up exactly once somewhere.
        first, second = await open_store(), await open_store()
        acc = await account(first)
        box = await inbox(first, acc)
        work = await first.create_mailbox(acc.id, "Work")

        async def deliveries() -> int:
            stored = 0
            for i in range(30):
                outcome = (await second.deliver([box.id if i % 2 else work.id], message(f"r{i}"), True))[0]
                stored += isinstance(outcome, InsertResult)
            return stored

        async def renames() -> None:
            for i in range(6):
                await first.rename_mailbox(acc.id, "Work" if i % 2 == 0 else "Play", "Play" if i % 2 == 0 else "Work")
                await first.rename_mailbox(acc.id, "INBOX", f"Old{i}")

        stored, _ = await asyncio.gather(deliveries(), renames())
        assert stored == 30
        keys = [m.blob_key for mailbox in await first.list_mailboxes(acc.id) for m in await first.fetch(mailbox.id)]
        assert sorted(keys) == sorted(f"r{i}" for i in range(30))
        assert await usage(second, acc.name) == (3000, 30) == await first.recompute_usage(acc.id)

    # ---- migration from another server (issue 16): kept UIDVALIDITY, UIDs and POP3 UIDLs

    async def test_adopted_uidvalidity_and_uidnext(self, metadata_store: MetadataStore) -> None:
        # A client that knew the mailbox on the old server keeps its cache only when UIDVALIDITY
        # and UIDs are the same (RFC 3501 §2.3.1.1): an empty mailbox takes the old server's.
        s = metadata_store
        acc = await account(s)
        box = await s.create_mailbox(acc.id, "Old")
        adopted = await s.adopt_uids(box.id, 1_234_567, 40)
        assert (adopted.uidvalidity, adopted.uidnext, adopted.name) == (1_234_567, 40, "Old")
        again = await s.adopt_uids(box.id, 1_234_567, 30)
        assert again.uidnext == 40, "UIDNEXT is never lowered"
        assert (await s.adopt_uids(box.id, 0, 50)).uidvalidity == 1_234_567, "0 keeps the UIDVALIDITY"
        first = await insert(s, box.id, "k1")
        assert (first.uid, first.uidvalidity) == (50, 1_234_567)
        with pytest.raises(NotAllowed):  # it has held a message: its UIDs may be in a client's cache
            await s.adopt_uids(box.id, 7_654_321, 0)
        await s.store_flags(box.id, [(first.uid, first.uid)], "add", ["\\Deleted"], None)
        await s.expunge(box.id, None)
        with pytest.raises(NotAllowed):  # empty again, but its old UIDs were seen
            await s.adopt_uids(box.id, 7_654_321, 0)
        with pytest.raises(NotAllowed):
            await s.adopt_uids(box.id, 2**32, 0)
        with pytest.raises(MailboxNotFound):
            await s.adopt_uids(box.id + 1000, 1, 1)

    async def test_own_uidvalidity_equal_by_chance_is_not_adopted(self, metadata_store: MetadataStore) -> None:
        # Two servers seed UIDVALIDITY from the clock: a mailbox of ours that already holds mail may
        # carry the very number the old server gave its folder. Its UIDs are ours, not the old
        # server's, so it must not pass as adopted (a client's cache would map UIDs to other mail).
        s = metadata_store
        acc = await account(s)
        box = await s.create_mailbox(acc.id, "Busy")
        await insert(s, box.id, "ours")
        with pytest.raises(NotAllowed):
            await s.adopt_uids(box.id, box.uidvalidity, 0)
        assert (await s.adopt_uids(box.id, 0, 0)).uidvalidity == box.uidvalidity, "0 still keeps it"
        empty = await s.create_mailbox(acc.id, "Empty")  # no message yet: taking its own value is adoption
        await s.adopt_uids(empty.id, empty.uidvalidity, 0)
        await insert(s, empty.id, "imported")
        again = await s.adopt_uids(empty.id, empty.uidvalidity, 0)  # a second pass
        assert again.uidvalidity == empty.uidvalidity

    async def test_adopted_uidvalidity_is_never_given_to_a_new_mailbox(self, metadata_store: MetadataStore) -> None:
        s = metadata_store
        acc = await account(s)
        future = int(time.time()) + 1000  # a counter seeded from the clock would reach it later
        box = await s.create_mailbox(acc.id, "Adopted")
        await s.adopt_uids(box.id, future, 0)
        created = [await s.create_mailbox(acc.id, f"New{i}") for i in range(3)]
        assert all(c.uidvalidity > future for c in created)

    async def test_message_stored_under_a_kept_uid(self, metadata_store: MetadataStore) -> None:
        s = metadata_store
        acc = await account(s)
        box = await inbox(s, acc)
        await s.adopt_uids(box.id, 99, 5)
        kept = await s.insert_message(box.id, replace(message("u7"), uid=7, pop3_uidl="UIDL-7"), enforce_quota=True)
        assert (kept.uid, kept.uidvalidity) == (7, 99)
        after = await insert(s, box.id, "next")
        assert after.uid == 8, "UIDNEXT moved past the kept UID"
        for low in (7, 8, 3):  # taken, or below UIDNEXT: UIDs only ever ascend
            with pytest.raises(NotAllowed):
                await s.insert_message(box.id, replace(message(f"low{low}"), uid=low), enforce_quota=True)
        with pytest.raises(NotAllowed):
            await s.insert_message(box.id, replace(message("big"), uid=2**32), enforce_quota=True)
        assert await usage(s, acc.name) == (200, 2), "a refused insert counts nothing"
        top = await s.insert_message(box.id, replace(message("top"), uid=2**32 - 1), enforce_quota=True)
        assert top.uid == 2**32 - 1
        rows = {r.uid: r for r in await s.fetch(box.id)}
        assert [u for u in rows] == [7, 8, 2**32 - 1]
        assert (rows[7].pop3_uidl, rows[8].pop3_uidl) == ("UIDL-7", ""), "'' = the default UIDL"
        assert (await s.get_mailbox(acc.id, "INBOX")).uidnext == 2**32

    async def test_kept_uid_respects_quota(self, metadata_store: MetadataStore) -> None:
        s = metadata_store
        acc = await account(s, quota_messages=1)
        box = await inbox(s, acc)
        await s.insert_message(box.id, replace(message("q1"), uid=3), enforce_quota=True)
        with pytest.raises(OverQuota):
            await s.insert_message(box.id, replace(message("q2"), uid=10), enforce_quota=True)
        assert (await s.get_mailbox(acc.id, "INBOX")).uidnext == 4
