"""`mailstack migrate metadata` (issue 20, ADR 0035) on a real PostgreSQL: an embedded SQLite store
with a row in every table moves whole (ids, UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ, UIDs, MODSEQs,
flags, dates, blob keys, expunge log, subscriptions, quotas, password hashes, tokens, the queue),
the PostgreSQL store then reads it alike and never hands out an id or UIDVALIDITY twice; a non-empty
target, a foreign source, a table the tool does not know and a copy that does not read back are
refused, with nothing committed."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, replace
from pathlib import Path

import asyncpg
import pytest
from mailstack.storage.blob.file import FileBlobStore
from mailstack.storage.metadata.base import ForwardRecord, MetadataStore
from mailstack.storage.queue.base import NewOutbound, NewRecipient, QueueBackend, TokenRecord
from mailstack.storage.registry import open_metadata_store, open_queue_store

from mailstack.cli.main import main
from mailstack.cli.migrate import SEQUENCE_TABLES, MigrationError, migrate_metadata
from tests.contract.metadata_contract import DEFAULT_MAILBOXES, insert, message

KEPT = (b"Subject: kept\r\n\r\nsmall body\r\n", bytes(range(256)) * 200)


@dataclass
class Source:
    path: Path
    url: str


async def populate(store: MetadataStore, queue: QueueBackend) -> None:
    """A row in every table, and the history that makes ids and counters interesting: a deleted
    account (AUTOINCREMENT keeps its id used), a deleted mailbox (its UIDVALIDITY stays used),
    expunges (UIDs gone, in the change log), moves, flags and keywords."""
    alice = await store.create_account("alice@example.org", "$argon2id$alice", 10_000_000, 500, DEFAULT_MAILBOXES)
    bob = await store.create_account("bob@example.org", "$argon2id$bob", 0, 0, DEFAULT_MAILBOXES)
    await store.add_domain("example.org")
    await store.add_domain("example.net")
    await store.add_alias("postmaster@example.org", alice.name)
    await store.add_alias("@example.net", bob.name)
    inbox = await store.get_mailbox(alice.id, "INBOX")
    work = await store.create_mailbox(alice.id, "Work/Projects")
    temp = await store.create_mailbox(alice.id, "Temp")
    await store.delete_mailbox(alice.id, temp.name)  # the highest mailbox id and UIDVALIDITY, now unused
    gone = await store.create_account("gone@example.org", "h0", 0, 0, DEFAULT_MAILBOXES)
    await store.delete_account(gone.name)  # the highest account id, now unused
    await store.set_subscribed(alice.id, "Work/Projects", True)
    await store.set_subscribed(bob.id, "INBOX", True)
    for i in range(12):
        await insert(store, inbox.id, f"blob-{i}", size=100 + i, flags=("\\Seen", "$Label1") if i % 3 else ())
    await store.store_flags(inbox.id, [(2, 4)], "add", ["\\Flagged", "Junk"], None)
    await store.store_flags(inbox.id, [(5, 6)], "add", ["\\Deleted"], None)
    await store.expunge(inbox.id, None)
    await store.copy(inbox.id, [(7, 8)], work.id, True, True)
    await store.copy(inbox.id, [(9, 9)], work.id, False, True)
    bob_inbox = await store.get_mailbox(bob.id, "INBOX")
    await insert(store, bob_inbox.id, "blob-bob", sent_date=None)
    # Bodies the SQLite file keeps itself (ADR 0045): PostgreSQL has no column for them.
    for n, body in enumerate(KEPT):
        await store.insert_message(bob_inbox.id, replace(message(f"kept-{n}", len(body), (), None), body=body), True)
    await store.claim_recent(inbox.id)
    await store.acquire_lease("job:orphan-sweep", "replica-1", 60)
    await store.set_forward(ForwardRecord("postmaster@example.org", ("ops@remote.test", "x@remote.test"), True))
    await store.record_auth_failure("192.0.2.8", "ann@example.org", 300)  # counts on after the move (ADR 0046)
    await queue.enqueue(
        NewOutbound(
            id="out-1",
            sender=alice.name,
            blob_key="blob-out-1",
            size=321,
            recipients=[
                NewRecipient("x@remote.test", False, "queued"),
                NewRecipient("bob@example.org", True, "delivered"),
            ],
            client="shop",
            message_id_header="<out-1@example.org>",
            original_headers=b"Subject: out\r\n",
            idempotency_key="key-1",
        ),
        1_800_000_000.0,
    )
    await queue.create_token(TokenRecord("shop", ("example.org",), ("alice@example.org",), 1_800_000_000.5), "h" * 64)


@pytest.fixture
async def source(tmp_path: Path) -> Source:
    path = tmp_path / "metadata.sqlite3"
    store = open_metadata_store(f"sqlite://{path}")
    await store.migrate()
    try:
        await populate(store, open_queue_store(store))
    finally:
        await store.close()
    return Source(path, f"sqlite://{path}")


@pytest.fixture
def blobs(tmp_path: Path) -> FileBlobStore:
    return FileBlobStore(str(tmp_path / "blobs"))


def table_rows(path: Path) -> dict[str, int]:
    with sqlite3.connect(path) as conn:
        names = [n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {n: conn.execute(f'SELECT count(*) FROM "{n}"').fetchone()[0] for n in names}


async def test_every_table_moves_and_reads_back_the_same(
    source: Source, postgres_url: str, blobs: FileBlobStore
) -> None:
    before = open_metadata_store(source.url)
    after = open_metadata_store(postgres_url)
    try:
        reports = await migrate_metadata(source.url, postgres_url, blobs)
        counts = table_rows(source.path)
        # Every table SQLite has is either copied or becomes a sequence position: a new table in the
        # SQLite schema fails here until the tool (and this test's populate) know it.
        assert {r.table for r in reports} | SEQUENCE_TABLES == set(counts)
        assert all(counts[r.table] == r.rows > 0 for r in reports), reports

        await after.migrate()  # the mailstore's own start on the migrated database: nothing to do
        assert await after.list_accounts() == await before.list_accounts()
        assert await after.list_domains() == await before.list_domains()
        assert await after.list_aliases() == await before.list_aliases()
        assert await after.list_forwards() == await before.list_forwards() != []
        for account in await before.list_accounts():
            assert await after.list_subscriptions(account.id) == await before.list_subscriptions(account.id)
            boxes = await before.list_mailboxes(account.id)
            assert await after.list_mailboxes(account.id) == boxes  # ids, UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ
            for box in boxes:
                assert await after.fetch(box.id, with_header=True) == await before.fetch(box.id, with_header=True)
                assert await after.changes_since(box.id, 0) == await before.changes_since(box.id, 0)
                assert await after.mailbox_counts(box.id) == await before.mailbox_counts(box.id)
        assert await after.body_references() == await before.body_references()
        for n, body in enumerate(KEPT):  # moved to the blob store, where PostgreSQL's mailstore reads them
            assert await blobs.get(f"kept-{n}") == body
        queue_before, queue_after = open_queue_store(before), open_queue_store(after)
        assert await queue_after.list_tokens() == await queue_before.list_tokens()
        assert await queue_after.status("out-1") == await queue_before.status("out-1")
        assert await queue_after.find_idempotent("shop", "key-1") == "out-1"
        assert await queue_after.token_by_hash("h" * 64) is not None

        # What PostgreSQL hands out next was never handed out by SQLite.
        old_accounts = {a.id for a in await before.list_accounts()}
        old_boxes = [b for a in await before.list_accounts() for b in await before.list_mailboxes(a.id)]
        carol = await after.create_account("carol@example.org", "h", 0, 0, [])
        assert carol.id > max(old_accounts) + 1  # the deleted account's id stays used too
        fresh = await after.create_mailbox(carol.id, "New")
        assert fresh.id > max(b.id for b in old_boxes) + 1  # so does the deleted mailbox's
        assert fresh.uidvalidity > max(b.uidvalidity for b in old_boxes) + 1  # Temp's and gone's too
        alice = await after.get_account("alice@example.org")
        assert alice is not None
        inbox = await after.get_mailbox(alice.id, "INBOX")
        result = await insert(after, inbox.id, "blob-after")
        assert result.uid == inbox.uidnext and result.modseq > inbox.highestmodseq
    finally:
        await before.close()
        await after.close()


async def test_a_non_empty_target_is_refused_and_left_alone(
    source: Source, postgres_url: str, blobs: FileBlobStore
) -> None:
    await migrate_metadata(source.url, postgres_url, blobs)
    with pytest.raises(MigrationError, match="not empty"):
        await migrate_metadata(source.url, postgres_url, blobs)
    target = open_metadata_store(postgres_url)
    try:
        assert len(await target.list_accounts()) == 2
    finally:
        await target.close()


def test_cli_exit_codes_and_one_line_errors(
    source: Source, postgres_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blob_url = f"file://{tmp_path / 'moved-bodies'}"
    argv = ["migrate", "metadata", "--from", source.url, "--to", postgres_url, "--blob-url", blob_url]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "messages" in out and "migrated and verified" in out
    assert f"{len(KEPT)} bodies kept in the SQLite file written to {blob_url}" in out
    refusals = [
        (argv, "not empty"),
        (["migrate", "metadata", "--from", f"sqlite://{tmp_path}/absent.db", "--to", postgres_url], "no such SQLite"),
        (["migrate", "metadata", "--from", "postgresql://x/y", "--to", postgres_url], "expected sqlite"),
        (["migrate", "metadata", "--from", source.url, "--to", f"sqlite://{tmp_path}/x.db"], "expected postgresql"),
        (
            ["migrate", "metadata", "--from", source.url, "--to", "postgresql://nobody@127.0.0.1:1/none"],
            "cannot connect",
        ),
    ]
    for args, reason in refusals:
        assert main(args) == 1, args
        err = capsys.readouterr().err
        assert reason in err and err.count("\n") == 1, err


async def test_a_table_the_tool_does_not_know_stops_it(source: Source, postgres_url: str, blobs: FileBlobStore) -> None:
    with sqlite3.connect(source.path) as conn:
        conn.execute("CREATE TABLE sieve_scripts (account_id INTEGER, script TEXT)")
        conn.execute("INSERT INTO sieve_scripts VALUES (1, 'keep;')")
    with pytest.raises(MigrationError, match="sieve_scripts"):
        await migrate_metadata(source.url, postgres_url, blobs)


async def test_an_older_sqlite_schema_is_refused(source: Source, postgres_url: str, blobs: FileBlobStore) -> None:
    with sqlite3.connect(source.path) as conn:
        conn.execute("PRAGMA user_version = 3")
    with pytest.raises(MigrationError, match="schema version 3"):
        await migrate_metadata(source.url, postgres_url, blobs)


async def test_a_copy_that_does_not_read_back_is_rolled_back(
    source: Source, postgres_url: str, blobs: FileBlobStore
) -> None:
    """A target that changes what it is given (here a trigger rewriting flags) fails verification,
    and not one row stays: the operator may fix the target and run again."""
    target = open_metadata_store(postgres_url)
    await target.migrate()
    await target.close()
    conn = await asyncpg.connect(postgres_url)
    try:
        await conn.execute(
            "CREATE FUNCTION tamper() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN NEW.flags := ''; RETURN NEW; END $$;"
            " CREATE TRIGGER tamper BEFORE INSERT ON messages FOR EACH ROW EXECUTE FUNCTION tamper()"
        )
        with pytest.raises(MigrationError, match="table messages: verification failed"):
            await migrate_metadata(source.url, postgres_url, blobs)
        assert await conn.fetchval("SELECT count(*) FROM accounts") == 0
        assert await conn.fetchval("SELECT count(*) FROM messages") == 0
    finally:
        await conn.close()


async def test_a_damaged_row_stops_the_copy_with_nothing_committed(
    source: Source, postgres_url: str, blobs: FileBlobStore
) -> None:
    """SQLite keeps whatever it is given: a UID that is text cannot go into a BIGINT column."""
    with sqlite3.connect(source.path) as conn:
        conn.execute("UPDATE messages SET uid = 'abc' WHERE rowid = (SELECT MIN(rowid) FROM messages)")
    with pytest.raises(MigrationError, match="copy failed, nothing was committed"):
        await migrate_metadata(source.url, postgres_url, blobs)
    conn = await asyncpg.connect(postgres_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM accounts") == 0
    finally:
        await conn.close()


async def test_kept_bodies_without_a_blob_store_are_refused_with_nothing_committed(
    source: Source, postgres_url: str
) -> None:
    with pytest.raises(MigrationError, match=f"{len(KEPT)} bodies are kept in the SQLite file"):
        await migrate_metadata(source.url, postgres_url)
    target = await asyncpg.connect(postgres_url)
    try:
        assert await target.fetchval("SELECT to_regclass('public.accounts')") is None, "refused before any write"
    finally:
        await target.close()
