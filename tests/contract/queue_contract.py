"""The contract of storage.queue.base.QueueStore and TokenStore, written once (issue 20).

The queue lives in the metadata database (ADR 0008): each backend's test module subclasses
QueueStoreContract with a `metadata_url` fixture, and the queue is opened beside that metadata store
through the registry, as the mailstore opens it (test_queue_sqlite.py, test_queue_postgresql.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace

import pytest
from mailstack.storage.errors import AlreadyExists, NotAllowed, NotFound
from mailstack.storage.metadata.base import MetadataStore
from mailstack.storage.queue.base import NewOutbound, NewRecipient, QueueBackend, RecipientOutcome, TokenRecord
from mailstack.storage.registry import open_metadata_store, open_queue_store

T0 = 1_800_000_000.0
Stores = tuple[MetadataStore, QueueBackend]
OpenStores = Callable[[], Awaitable[Stores]]


def item(message_id: str, *recipients: str, key: str = "", sender: str = "a@example.test") -> NewOutbound:
    return NewOutbound(
        id=message_id,
        sender=sender,
        blob_key=key or f"blob-{message_id}",
        size=10,
        recipients=[NewRecipient(r, False, "queued") for r in recipients],
        client="shop",
        message_id_header=f"{message_id}@example.test",
        original_headers=b"Subject: x\r\n",
    )


class QueueStoreContract:
    """Every queue backend passes these. A subclass provides the fixture `metadata_url`."""

    @pytest.fixture
    async def open_stores(self, metadata_url: str) -> AsyncIterator[OpenStores]:
        """Each call: a fresh metadata store on the same data (as another replica) and the queue beside it."""
        opened: list[MetadataStore] = []

        async def open_() -> Stores:
            metadata = open_metadata_store(metadata_url)
            await metadata.migrate()
            opened.append(metadata)
            return metadata, open_queue_store(metadata)

        yield open_
        for metadata in opened:
            await metadata.close()

    @pytest.fixture
    async def stores(self, open_stores: OpenStores) -> Stores:
        return await open_stores()

    async def test_enqueue_references_the_blob_until_every_recipient_is_final(self, stores: Stores) -> None:
        metadata, queue = stores
        await queue.enqueue(item("m1", "x@one.test", "y@two.test"), T0)
        assert await metadata.blob_referenced("blob-m1")  # the orphan sweeper keeps it
        [leased] = await queue.lease_next("w1", 60, T0, 10)
        assert leased.by_domain == {"one.test": ["x@one.test"], "two.test": ["y@two.test"]}
        assert leased.attempt == 1
        result = await queue.report(
            "m1",
            "w1",
            [
                RecipientOutcome("x@one.test", "delivered"),
                RecipientOutcome("y@two.test", "deferred", "451 later", next_attempt=T0 + 30),
            ],
            T0,
        )
        assert not result.done and await metadata.blob_referenced("blob-m1")
        assert await queue.lease_next("w1", 60, T0 + 10, 10) == []  # not due yet
        [again] = await queue.lease_next("w1", 60, T0 + 30, 10)
        assert again.by_domain == {"two.test": ["y@two.test"]} and again.attempt == 2
        result = await queue.report("m1", "w1", [RecipientOutcome("y@two.test", "bounced", "550 5.1.1 no")], T0 + 31)
        assert result.done and result.freed_blobs == ["blob-m1"]
        assert [r.address for r in result.newly_bounced] == ["y@two.test"]
        assert not await metadata.blob_referenced("blob-m1")
        status = await queue.status("m1")
        assert status is not None and status.done
        assert [(r.state, r.attempts, r.last_error) for r in status.recipients] == [
            ("delivered", 1, ""), ("bounced", 2, "550 5.1.1 no")]  # fmt: skip

    async def test_a_message_is_leased_to_one_worker_until_its_lease_expires(self, stores: Stores) -> None:
        _, queue = stores
        for n in range(20):
            await queue.enqueue(item(f"m{n}", f"r{n}@remote.test"), T0)
        first, second = await asyncio.gather(queue.lease_next("w1", 60, T0, 15), queue.lease_next("w2", 60, T0, 15))
        ids1, ids2 = {m.id for m in first}, {m.id for m in second}
        assert not ids1 & ids2 and len(ids1 | ids2) == 20
        assert await queue.lease_next("w3", 60, T0 + 59, 50) == []
        # w1 died: its messages come back after the lease, and w1 can no longer report on them.
        taken = await queue.lease_next("w3", 60, T0 + 61, 50)
        assert {m.id for m in taken} == ids1 | ids2
        victim = next(iter(ids1))
        with pytest.raises(NotAllowed):
            await queue.report(victim, "w1", [RecipientOutcome(f"r{victim[1:]}@remote.test", "delivered")], T0 + 62)
        assert (
            await queue.report(victim, "w3", [RecipientOutcome(f"r{victim[1:]}@remote.test", "delivered")], T0 + 62)
        ).done

    async def test_idempotency_key_is_scoped_per_client(self, stores: Stores) -> None:
        _, queue = stores
        first = replace(item("m1", "x@one.test"), idempotency_key="k")
        assert not (await queue.enqueue(first, T0)).duplicate
        again = await queue.enqueue(replace(item("m2", "x@one.test"), idempotency_key="k"), T0)
        assert again.duplicate and again.id == "m1"
        assert await queue.find_idempotent("shop", "k") == "m1"
        assert await queue.find_idempotent("other", "k") is None

    async def test_expire_bounces_what_outlived_its_lifetime(self, stores: Stores) -> None:
        metadata, queue = stores
        await queue.enqueue(item("old", "x@one.test"), T0)
        await queue.enqueue(item("new", "y@one.test"), T0 + 100)
        expired = await queue.expire(T0 + 50, T0 + 200)
        assert [(mid, r.done, [b.address for b in r.newly_bounced]) for mid, r in expired] == [
            ("old", True, ["x@one.test"])
        ]
        status = await queue.status("old")
        assert status is not None and "expired" in status.recipients[0].last_error
        assert not await metadata.blob_referenced("blob-old") and await metadata.blob_referenced("blob-new")
        assert await queue.queue_depth() == 1

    async def test_oldest_pending_is_the_first_message_still_to_deliver(self, stores: Stores) -> None:
        _, queue = stores
        assert await queue.oldest_pending() is None
        await queue.enqueue(item("first", "x@one.test"), T0)
        await queue.enqueue(item("second", "y@one.test"), T0 + 30)
        assert await queue.oldest_pending() == T0
        # the first delivered: the second is the oldest still to deliver
        leased = {m.id for m in await queue.lease_next("w", 60, T0 + 40, 10)}
        assert "first" in leased
        assert (await queue.report("first", "w", [RecipientOutcome("x@one.test", "delivered")], T0 + 41)).done
        assert await queue.oldest_pending() == T0 + 30

    async def test_local_only_messages_are_recorded_done_without_a_blob_reference(self, stores: Stores) -> None:
        metadata, queue = stores
        local = NewOutbound("m1", "a@example.test", "blob-m1", 10, [NewRecipient("b@example.test", True, "delivered")])
        await queue.enqueue(local, T0)
        assert not await metadata.blob_referenced("blob-m1")
        assert await queue.lease_next("w1", 60, T0, 10) == []
        status = await queue.status("m1")
        assert status is not None and status.done and status.recipients[0].local

    async def test_tokens(self, stores: Stores) -> None:
        _, tokens = stores
        record = TokenRecord("shop", ("shop.test",), ("a@b.test",), T0)
        await tokens.create_token(record, "hash1")
        with pytest.raises(AlreadyExists):
            await tokens.create_token(record, "hash2")
        assert await tokens.token_by_hash("hash1") == record
        assert await tokens.token_by_hash("nope") is None
        assert await tokens.list_tokens() == [record]
        await tokens.revoke_token("shop")
        assert await tokens.token_by_hash("hash1") is None
        with pytest.raises(NotFound):
            await tokens.revoke_token("shop")

    async def test_queue_survives_reopening(self, open_stores: OpenStores) -> None:
        metadata, queue = await open_stores()
        await queue.enqueue(item("m1", "x@one.test"), T0)
        await metadata.close()
        _, again = await open_stores()
        [leased] = await again.lease_next("w1", 60, T0, 10)
        assert leased.id == "m1"

    async def test_two_replicas_lease_disjoint_messages_and_share_idempotency(self, open_stores: OpenStores) -> None:
        (_, first), (_, second) = await open_stores(), await open_stores()
        for n in range(30):
            await (first if n % 2 else second).enqueue(item(f"m{n}", f"r{n}@remote.test"), T0)
        batches = await asyncio.gather(
            *(queue.lease_next(f"w{i}", 60, T0, 4) for i, queue in enumerate([first, second] * 5))
        )
        ids = [m.id for batch in batches for m in batch]
        assert len(ids) == len(set(ids)) == 30, "no message is leased twice, none is left out"
        results = await asyncio.gather(
            *(queue.enqueue(replace(item(f"dup{i}", "x@one.test"), idempotency_key="k"), T0)
              for i, queue in enumerate([first, second] * 3))
        )  # fmt: skip
        assert sum(not r.duplicate for r in results) == 1 and len({r.id for r in results}) == 1
