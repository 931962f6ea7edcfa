"""The metadata contract on a real PostgreSQL (tests/fixtures/postgres_server.py), and what only it has:
migrations raced by replicas starting together."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from mailstack.storage.errors import StorageUnavailable
from mailstack.storage.metadata.postgresql_schema import MIGRATIONS
from mailstack.storage.registry import open_metadata_store

from tests.contract.metadata_contract import MetadataStoreContract, account
from tests.fixtures.postgres_server import PostgresServer, database_url


class TestPostgresMetadataStore(MetadataStoreContract):
    @pytest.fixture
    def metadata_url(self, postgres_url: str) -> str:
        return postgres_url

    async def test_replicas_starting_together_migrate_once(self, postgres_url: str) -> None:
        # Three replicas start at the same moment: each step is applied once, by one of them.
        stores = [open_metadata_store(postgres_url) for _ in range(3)]
        try:
            await asyncio.gather(*(s.migrate() for s in stores))
            conn = await asyncpg.connect(postgres_url)
            try:
                versions = [r[0] for r in await conn.fetch("SELECT version FROM schema_version ORDER BY version")]
            finally:
                await conn.close()
            assert versions == list(range(1, len(MIGRATIONS) + 1))
            acc = await account(stores[0])
            assert await stores[2].get_account(acc.name) == acc
        finally:
            for s in stores:
                await s.close()


async def test_database_down_is_unavailable_and_the_store_recovers(restartable_postgres_server: PostgresServer) -> None:
    server = restartable_postgres_server
    store = open_metadata_store(database_url(server.url, "postgres"))
    try:
        await store.migrate()
        acc = await account(store)
        await asyncio.to_thread(server.stop)
        for call in (store.get_account(acc.name), store.create_mailbox(acc.id, "Down")):
            async with asyncio.timeout(10):
                with pytest.raises(StorageUnavailable):
                    await call
        await asyncio.to_thread(server.start)
        # Pooled connections died with the server; each failing call discards its own, so the
        # store is usable again within a few calls, without being reopened.
        for _ in range(20):
            try:
                await store.create_mailbox(acc.id, "Up")
                break
            except StorageUnavailable:
                await asyncio.sleep(0.1)
        assert (await store.get_mailbox(acc.id, "Up")).name == "Up"
        assert await store.get_account(acc.name) == acc
    finally:
        await store.close()
