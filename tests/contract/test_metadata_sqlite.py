"""The metadata contract on SQLite (the embedded default), and what only SQLite has."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
from mailstack.storage.errors import StorageUnavailable
from mailstack.storage.metadata.sqlite import SqliteMetadataStore
from mailstack.storage.metadata.sqlite_schema import MIGRATIONS

from tests.contract.metadata_contract import MetadataStoreContract, insert


class TestSqliteMetadataStore(MetadataStoreContract):
    @pytest.fixture
    def metadata_url(self, tmp_path: Path) -> str:
        return f"sqlite://{tmp_path / 'data' / 'metadata.db'}"

    async def test_migration_from_step_2_dates_the_logged_expunges(self, tmp_path: Path) -> None:
        # A database from before the change log was pruned: its expunges start aging at the upgrade.
        path = tmp_path / "old.db"
        conn = sqlite3.connect(path)
        for statement in (s for step in MIGRATIONS[:2] for s in step):
            conn.execute(statement)
        conn.execute("PRAGMA user_version = 2")
        conn.execute("INSERT INTO changes (mailbox_id, modseq, uid, kind) VALUES (1, 5, 3, 'expunge')")
        conn.commit()
        conn.close()
        store = SqliteMetadataStore(str(path))
        await store.migrate()
        try:
            assert await store.prune_changes(time.time() - 60) == 0, "dated now, not at 1970"
            assert await store.prune_changes(time.time() + 1) == 1
        finally:
            await store.close()

    async def test_migration_from_step_3_gives_old_rows_a_save_date(self, tmp_path: Path) -> None:
        # A database from before SAVEDATE (no save_date column): the upgrade adds it, and the rows
        # already there get their internal date as save date (ADR 0024); new rows the time stored.
        path = tmp_path / "old.db"
        conn = sqlite3.connect(path)
        for statement in (s for step in MIGRATIONS[:3] for s in step):
            conn.execute(statement)
        conn.execute("PRAGMA user_version = 3")
        conn.execute("INSERT INTO accounts (name, password_hash) VALUES ('a@example.org', 'h')")
        conn.execute("INSERT INTO mailboxes (account_id, name, uidvalidity, uidnext) VALUES (1, 'INBOX', 7, 2)")
        conn.execute(
            "INSERT INTO messages (mailbox_id, uid, modseq, created_modseq, internal_date, tz_offset, size, blob_key,"
            " envelope, structure, header) VALUES (1, 1, 1, 1, 946720800, 0, 10, 'k', x'', x'', x'')"
        )
        conn.commit()
        conn.close()
        store = SqliteMetadataStore(str(path))
        await store.migrate()
        try:
            [old] = await store.fetch(1)
            assert old.save_date == 946720800
            new = await insert(store, 1, "after")
            [row] = await store.fetch(1, [(new.uid, new.uid)])
            assert row.save_date >= int(time.time()) - 5
        finally:
            await store.close()

    async def test_sqlite_locked_database_is_unavailable(self, tmp_path: Path) -> None:
        path = str(tmp_path / "metadata.db")
        store = SqliteMetadataStore(path, busy_timeout_ms=100)
        await store.migrate()
        blocker = sqlite3.connect(path, isolation_level=None)
        try:
            blocker.execute("BEGIN IMMEDIATE")  # another writer holds the lock past our busy timeout
            with pytest.raises(StorageUnavailable):
                await store.add_domain("example.org")
            assert await store.list_domains() == []  # WAL: reads still work during the write
            blocker.execute("ROLLBACK")
            await store.add_domain("example.org")
            assert await store.list_domains() == ["example.org"]
        finally:
            blocker.close()
            await store.close()
