"""kill -9 of the mailstore in the middle of 200 concurrent deliveries loses nothing acknowledged."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import grpc
import pytest
from mailstack.services.common.config import env_name
from mailstack.v1 import mailstore_pb2 as pb

from tests.fixtures.mailstore import MailstoreProcess, deliver, fetch_body, open_client
from tests.integration.messages import simple

pytestmark = pytest.mark.slow

ALICE = "alice@example.test"
DELIVERIES = 200
IN_FLIGHT = 20


def message(n: int) -> bytes:
    return simple(f"crash-{n:04d}", f"body of message {n}\r\n" * 50)


def stored_bodies(data_dir: Path) -> int:
    """Body files plus bodies kept in the metadata database (ADR 0045)."""
    files = [p for p in (data_dir / "blobs").rglob("*") if p.is_file() and not p.name.startswith(".")]
    with sqlite3.connect(data_dir / "metadata.sqlite3") as conn:
        return len(files) + int(conn.execute("SELECT count(*) FROM blobs WHERE body IS NOT NULL").fetchone()[0])


# Bodies as files (blob first, then the metadata) and kept in the metadata transaction.
@pytest.mark.parametrize("kept_body_bytes", ["0", "65536"])
async def test_kill_during_deliveries_keeps_every_acknowledged_message(tmp_path: Path, kept_body_bytes: str) -> None:
    kept = {env_name("kept_body_bytes"): kept_body_bytes}
    proc = MailstoreProcess(tmp_path / "data", kept)
    proc.start()
    acked: set[int] = set()
    try:
        client = open_client(proc.address, proc.data_dir, proc.send_address)
        await client.admin.CreateAccount(pb.CreateAccountRequest(name=ALICE, password="pw-123456"))
        enough = asyncio.Event()
        # At most IN_FLIGHT at once, so that the kill lands while many are still to come, however
        # fast each is (a body kept in the metadata commits with one fsync, ADR 0045).
        in_flight = asyncio.Semaphore(IN_FLIGHT)

        async def one(n: int) -> None:
            try:
                async with in_flight:
                    reply = await deliver(client, [ALICE], message(n))
            except grpc.aio.AioRpcError:
                return  # not acknowledged: may or may not be stored
            if reply.results[0].status == pb.RECIPIENT_LOCAL:
                acked.add(n)
                if len(acked) >= 40:
                    enough.set()

        tasks = [asyncio.create_task(one(n)) for n in range(DELIVERIES)]
        await asyncio.wait_for(enough.wait(), 60)
        proc.kill()  # SIGKILL while deliveries are still running
        await asyncio.gather(*tasks)
        await client.channel.close()
    finally:
        proc.kill()
    assert 40 <= len(acked) < DELIVERIES, "the kill should land mid-run"

    # Restart on the same data, with the sweeper running at once (nothing is in flight now).
    proc = MailstoreProcess(
        tmp_path / "data",
        {env_name("orphan_sweep_seconds"): "1", env_name("orphan_min_age_seconds"): "0", **kept},
    )
    proc.start()
    try:
        client = open_client(proc.address, proc.data_dir, proc.send_address)
        metas = [
            m
            async for batch in client.store.FetchMetadata(
                pb.FetchMetadataRequest(account=ALICE, mailbox="INBOX", fields=pb.MetadataFields(envelope=True))
            )
            for m in batch.messages
        ]
        by_subject = {m.envelope.subject.decode(): m.uid for m in metas}
        for n in acked:
            uid = by_subject.get(f"crash-{n:04d}")
            assert uid is not None, f"acknowledged delivery {n} lost"
            assert await fetch_body(client, ALICE, "INBOX", uid) == message(n)
        # No message without its body: every stored message reads back whole.
        for subject, uid in by_subject.items():
            n = int(subject.split("-")[1])
            assert await fetch_body(client, ALICE, "INBOX", uid) == message(n)
        # The sweeper removes blobs left by deliveries cut between blob and metadata write.
        for _ in range(100):
            if (bodies := stored_bodies(tmp_path / "data")) == len(metas):
                break
            await asyncio.sleep(0.1)
        assert bodies == len(metas)
        await client.channel.close()
    finally:
        proc.stop()
