"""The metadata contract on a real PostgreSQL (tests/fixtures/postgres_server.py), and what only it has:
migrations raced by replicas starting together."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from mailstack.storage.metadata.postgresql_schema import MIGRATIONS
from mailstack.storage.registry import open_metadata_store

from tests.contract.metadata_contract import MetadataStoreContract, account


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
