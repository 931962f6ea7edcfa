"""Small bodies kept in the SQLite metadata database (ADR 0045), seen from outside: what lands in
the blob folder and what in the database file, that every body reads back byte for byte (whole
and in ranges), that a kept body lives exactly as long as its last reference, that lowering the
limit strands nothing, and that S3 and PostgreSQL never keep one."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import grpc
import pytest
from mailstack.services.common.config import check_settings, load
from mailstack.services.mailstore.core.stores import Stores
from mailstack.storage import registry
from mailstack.storage.metadata.base import NewMessage
from mailstack.v1 import mailstore_pb2 as pb

from tests.fixtures.mailstore import Client, append, deliver, fetch_body, running_mailstore, settings_for
from tests.integration.messages import simple

ALICE = "alice@example.test"
BOB = "bob@example.test"
PASSWORD = "correct horse battery staple"
LIMIT = 4096
SMALL = simple("small", "a short note\r\n" * 20)
LARGE = simple("large", "a long report line\r\n" * 600)


def blob_files(data_dir: Path) -> int:
    return sum(1 for p in (data_dir / "blobs").rglob("*") if p.is_file() and not p.name.startswith("."))


def kept_rows(data_dir: Path) -> list[tuple[str, int]]:
    """(key, refcount) of every body kept in the database, read from the file as an operator would."""
    with sqlite3.connect(data_dir / "metadata.sqlite3") as conn:
        return conn.execute("SELECT key, refcount FROM blobs WHERE body IS NOT NULL ORDER BY key").fetchall()


async def accounts(client: Client, *names: str) -> None:
    for name in names:
        await client.admin.CreateAccount(pb.CreateAccountRequest(name=name, password=PASSWORD))


def every(uid: int) -> pb.UidSet:
    return pb.UidSet(ranges=[pb.UidRange(first=uid, last=uid)])


async def test_small_bodies_go_into_the_database_large_ones_into_files(tmp_path: Path) -> None:
    assert len(SMALL) <= LIMIT < len(LARGE)
    async with running_mailstore(settings_for(tmp_path, kept_body_bytes=LIMIT)) as (_, client):
        await accounts(client, ALICE)
        files = blob_files(tmp_path)
        small = await append(client, ALICE, "INBOX", SMALL)
        assert blob_files(tmp_path) == files, "a kept body writes no file"
        assert len(kept_rows(tmp_path)) == 1
        large = await append(client, ALICE, "INBOX", LARGE)
        assert blob_files(tmp_path) == files + 1
        assert len(kept_rows(tmp_path)) == 1
        assert await fetch_body(client, ALICE, "INBOX", small.uid) == SMALL
        assert await fetch_body(client, ALICE, "INBOX", large.uid) == LARGE
        text = pb.Section(text=pb.SECTION_TEXT)
        assert await fetch_body(client, ALICE, "INBOX", small.uid, text) == SMALL.split(b"\r\n\r\n", 1)[1]


async def test_a_kept_body_lives_as_long_as_its_last_reference(tmp_path: Path) -> None:
    async with running_mailstore(settings_for(tmp_path, kept_body_bytes=LIMIT)) as (_, client):
        await accounts(client, ALICE)
        uid = (await append(client, ALICE, "INBOX", SMALL, ["\\Deleted"])).uid
        copied = await client.store.Copy(
            pb.CopyRequest(account=ALICE, mailbox="INBOX", uids=every(uid), destination="Archive")
        )
        [(_, refcount)] = kept_rows(tmp_path)
        assert refcount == 2
        await client.store.Expunge(pb.ExpungeRequest(account=ALICE, mailbox="INBOX", all_deleted=True))
        assert [r[1] for r in kept_rows(tmp_path)] == [1]
        archived = copied.mapping[0].destination
        assert await fetch_body(client, ALICE, "Archive", archived) == SMALL
        await client.store.Expunge(pb.ExpungeRequest(account=ALICE, mailbox="Archive", uids=every(archived)))
        assert kept_rows(tmp_path) == [], "the body goes in the transaction that drops its last reference"
        with sqlite3.connect(tmp_path / "metadata.sqlite3") as conn:
            assert conn.execute("SELECT count(*) FROM blobs").fetchone()[0] == 0


async def test_a_delivery_to_several_accounts_keeps_one_body_even_when_one_is_refused(tmp_path: Path) -> None:
    async with running_mailstore(settings_for(tmp_path, kept_body_bytes=LIMIT)) as (_, client):
        await accounts(client, ALICE, BOB)
        await client.admin.SetQuota(pb.SetQuotaRequest(name=ALICE, quota_bytes=0, quota_messages=1))
        await append(client, ALICE, "INBOX", simple("fills the quota"))
        before = {key for key, _ in kept_rows(tmp_path)}
        reply = await deliver(client, [ALICE, BOB], SMALL)
        assert [r.status for r in reply.results] == [pb.RECIPIENT_OVER_QUOTA, pb.RECIPIENT_LOCAL]
        new = [(key, refs) for key, refs in kept_rows(tmp_path) if key not in before]
        assert [refs for _, refs in new] == [1], "one body, referenced by Bob's copy only"
        assert await fetch_body(client, BOB, "INBOX", 1) == SMALL


async def test_lowering_the_limit_strands_no_kept_body(tmp_path: Path) -> None:
    async with running_mailstore(settings_for(tmp_path, kept_body_bytes=LIMIT)) as (_, client):
        await accounts(client, ALICE)
        kept = await append(client, ALICE, "INBOX", SMALL)
    async with running_mailstore(settings_for(tmp_path, kept_body_bytes=0)) as (_, client):
        files = blob_files(tmp_path)
        assert await fetch_body(client, ALICE, "INBOX", kept.uid) == SMALL
        later = await append(client, ALICE, "INBOX", simple("after", "x\r\n"))
        assert blob_files(tmp_path) == files + 1, "with 0 every body is a file again"
        assert len(kept_rows(tmp_path)) == 1
        assert await fetch_body(client, ALICE, "INBOX", later.uid) == simple("after", "x\r\n")


async def test_with_s3_bodies_stay_in_the_object_store(tmp_path: Path, s3_bucket: tuple[str, str]) -> None:
    endpoint, bucket = s3_bucket
    settings = settings_for(tmp_path, blob_url=f"s3://{bucket}/kept", s3_endpoint=endpoint, kept_body_bytes=LIMIT)
    async with running_mailstore(settings) as (server, client):
        await accounts(client, ALICE)
        uid = (await append(client, ALICE, "INBOX", SMALL)).uid
        assert kept_rows(tmp_path) == []
        assert server.core is not None
        keys = [key async for key, _ in server.core.stores.blobs.list_keys()]
        assert len(keys) == 1
        assert await fetch_body(client, ALICE, "INBOX", uid) == SMALL


async def test_postgresql_keeps_no_body_and_refuses_one(tmp_path: Path, postgres_url: str) -> None:
    store = registry.open_metadata_store(postgres_url)
    await store.migrate()
    try:
        assert store.keeps_bodies is False
        message = NewMessage("k-1", 5, 0, 0, (), b"", b"", b"", None, body=b"hello")
        with pytest.raises(ValueError, match="keeps no bodies"):
            await store.insert_message(1, message, False)
        with pytest.raises(ValueError, match="keeps no bodies"):
            await store.deliver([1], message, False)
        assert await store.kept_body("k-1") is None
    finally:
        await store.close()
    settings = settings_for(tmp_path, metadata_url=postgres_url, kept_body_bytes=LIMIT)
    stores = await Stores.open(settings)
    try:
        assert stores.kept_body_bytes == 0
    finally:
        await stores.close()


def test_a_limit_over_a_mebibyte_is_refused_by_the_config_check() -> None:
    # A whole large message on the event loop and in every WAL checkpoint: refused, with the name.
    [error] = check_settings(load({"MAILSTACK_KEPT_BODY_BYTES": str(2 << 20)}))
    assert str(error).startswith("MAILSTACK_KEPT_BODY_BYTES=2097152")


async def test_a_missing_mailbox_leaves_no_kept_body(tmp_path: Path) -> None:
    async with running_mailstore(settings_for(tmp_path, kept_body_bytes=LIMIT)) as (_, client):
        await accounts(client, ALICE)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await append(client, ALICE, "Nowhere", SMALL)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert kept_rows(tmp_path) == [] and blob_files(tmp_path) == 0
