"""The BlobStore contract, run against every backend: memory, files, and a real S3 server (SeaweedFS)."""

from __future__ import annotations

import asyncio
import errno
import os
import random
import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from mailstack.storage.blob.base import BlobStore
from mailstack.storage.blob.cache import CachedBlobStore
from mailstack.storage.blob.file import FileBlobStore
from mailstack.storage.blob.memory import MemoryBlobStore
from mailstack.storage.blob.s3 import S3BlobStore
from mailstack.storage.errors import BlobNotFound, StorageUnavailable

from tests.fixtures.s3_server import S3Server, make_bucket, s3_client

ALL_BYTES = bytes(range(256))


@pytest.fixture(params=["memory", "file", "s3", "cached-s3"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[BlobStore]:
    blobs: BlobStore
    if request.param == "memory":
        blobs = MemoryBlobStore()
    elif request.param == "file":
        blobs = FileBlobStore(str(tmp_path / "blobs"))
    else:
        endpoint, bucket = request.getfixturevalue("s3_bucket")
        blobs = S3BlobStore(bucket, prefix="mail/blobs", endpoint_url=endpoint)
        if request.param == "cached-s3":
            blobs = CachedBlobStore(blobs, max_bytes=8 * 1024 * 1024)
    yield blobs
    await blobs.close()


async def collect(chunks: AsyncIterator[bytes]) -> list[bytes]:
    return [chunk async for chunk in chunks]


async def all_keys(blobs: BlobStore) -> dict[str, float]:
    return {key: mtime async for key, mtime in blobs.list_keys()}


# -- the contract


async def test_round_trip_is_byte_exact(store: BlobStore) -> None:
    data = ALL_BYTES * 3 + b"\r\n.\r\n\x00"
    await store.put("all-bytes", data)
    assert await store.get("all-bytes") == data
    assert b"".join(await collect(store.stream("all-bytes"))) == data
    assert await store.exists("all-bytes")


async def test_large_blob_round_trip(store: BlobStore) -> None:
    data = random.Random(5).randbytes(5 * 1024 * 1024)
    await store.put("big", data)
    assert await store.get("big") == data
    assert await store.get("big", 4 * 1024 * 1024 + 3, 4 * 1024 * 1024 + 9) == data[4 * 1024 * 1024 + 3 :][:6]


async def test_empty_blob(store: BlobStore) -> None:
    await store.put("empty", b"")
    assert await store.exists("empty")
    assert await store.get("empty") == b""
    assert await store.get("empty", 0, 10) == b""
    assert await store.get("empty", 3) == b""
    assert await collect(store.stream("empty")) == []


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        (0, None, ALL_BYTES),
        (10, 20, ALL_BYTES[10:20]),
        (0, 1, b"\x00"),
        (255, None, b"\xff"),
        (250, 1000, ALL_BYTES[250:]),  # end past the size is clamped
        (256, None, b""),  # start at the end
        (300, None, b""),  # start past the end
        (300, 400, b""),
        (10, 10, b""),  # empty range
        (20, 10, b""),  # reversed range reads as empty
    ],
)
async def test_ranges(store: BlobStore, start: int, end: int | None, expected: bytes) -> None:
    await store.put("ranged", ALL_BYTES)
    assert await store.get("ranged", start, end) == expected
    assert b"".join(await collect(store.stream("ranged", start, end, chunk_size=7))) == expected


async def test_stream_respects_chunk_size(store: BlobStore) -> None:
    data = random.Random(7).randbytes(10_000)
    await store.put("chunked", data)
    for chunk_size in (1000, 4096, 10_000, 65536):
        chunks = await collect(store.stream("chunked", chunk_size=chunk_size))
        assert all(0 < len(c) <= chunk_size for c in chunks)
        assert b"".join(chunks) == await store.get("chunked")
        assert len(chunks) == -(-len(data) // chunk_size)
    chunks = await collect(store.stream("chunked", 100, 130, chunk_size=8))
    assert [len(c) for c in chunks] == [8, 8, 8, 6]
    assert b"".join(chunks) == data[100:130]


async def test_stream_can_be_abandoned(store: BlobStore) -> None:
    await store.put("abandoned", ALL_BYTES * 100)
    stream = store.stream("abandoned", chunk_size=100)
    assert await anext(stream) == ALL_BYTES[:100]
    await stream.aclose()  # type: ignore[attr-defined]  # every store streams with an async generator
    assert await store.get("abandoned", 0, 3) == b"\x00\x01\x02"


async def test_missing_key(store: BlobStore) -> None:
    assert not await store.exists("missing")
    with pytest.raises(BlobNotFound):
        await store.get("missing")
    with pytest.raises(BlobNotFound):
        await store.get("missing", 5, 5)
    with pytest.raises(BlobNotFound):
        await collect(store.stream("missing"))
    with pytest.raises(BlobNotFound):
        await collect(store.stream("missing", 3, 9, chunk_size=2))


async def test_delete_is_idempotent(store: BlobStore) -> None:
    await store.put("doomed", b"bye")
    await store.delete("doomed")
    await store.delete("doomed")
    await store.delete("never-there")
    assert not await store.exists("doomed")
    with pytest.raises(BlobNotFound):
        await store.get("doomed")


async def test_list_keys_sees_puts_not_deletes(store: BlobStore) -> None:
    assert await all_keys(store) == {}
    before = time.time()
    for key in ("01HZX-a", "01HZX-b", "01HZX-c"):
        await store.put(key, key.encode())
    await store.delete("01HZX-b")
    keys = await all_keys(store)
    assert set(keys) == {"01HZX-a", "01HZX-c"}
    # Servers keep whole seconds; allow for that and a little clock skew.
    assert all(before - 5 <= mtime <= time.time() + 5 for mtime in keys.values())


async def test_overwrite_with_same_content(store: BlobStore) -> None:
    await store.put("twice", b"same body")
    await store.put("twice", b"same body")
    assert await store.get("twice") == b"same body"
    assert list(await all_keys(store)) == ["twice"]


async def test_concurrent_puts_are_all_readable(store: BlobStore) -> None:
    bodies = {f"msg-{i:02d}": random.Random(i).randbytes(1000 + 997 * i) for i in range(20)}
    await asyncio.gather(*(store.put(key, body) for key, body in bodies.items()))
    for key, body in bodies.items():
        assert await store.get(key) == body
    assert set(await all_keys(store)) == set(bodies)


@pytest.mark.parametrize("key", ["", ".hidden", "..", "a/b", "../etc", "x" * 201, "caf\u00e9", "sp ace", "nul\x00"])
async def test_invalid_keys_are_rejected(store: BlobStore, key: str) -> None:
    with pytest.raises(ValueError):
        await store.put(key, b"x")
    with pytest.raises(ValueError):
        await store.get(key)
    with pytest.raises(ValueError):
        await store.exists(key)
    with pytest.raises(ValueError):
        await store.delete(key)


async def test_longest_valid_key(store: BlobStore) -> None:
    key = "K" * 199 + "."
    await store.put(key, b"ok")
    assert await store.get(key) == b"ok"


# -- files


def files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


async def test_file_layout_and_no_temp_left(tmp_path: Path) -> None:
    root = tmp_path / "new" / "deeper"
    blobs = FileBlobStore(str(root))
    await asyncio.gather(*(blobs.put(f"k{i}", b"x" * i) for i in range(30)))
    files = files_under(root)
    assert sorted(p.name for p in files) == sorted(f"k{i}" for i in range(30))
    # Two levels of fan-out folders between the root and every blob.
    assert all(len(p.relative_to(root).parts) == 3 for p in files)
    assert len({p.parent for p in files}) > 1


async def test_file_list_keys_skips_temp_files(tmp_path: Path) -> None:
    blobs = FileBlobStore(str(tmp_path))
    await blobs.put("kept", b"1")
    leaf = files_under(tmp_path)[0].parent
    (leaf / ".tmp-stray.123abc").write_bytes(b"half a message")
    assert list(await all_keys(blobs)) == ["kept"]


async def test_file_put_failing_fsync_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blobs = FileBlobStore(str(tmp_path))
    await blobs.put("earlier", b"fine")
    real_fsync = os.fsync

    def failing_fsync(fd: int) -> None:
        if stat.S_ISREG(os.fstat(fd).st_mode):  # the disk fails while flushing the data
            raise OSError(errno.EIO, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(StorageUnavailable):
        await blobs.put("doomed", b"never durable")
    monkeypatch.undo()
    assert not await blobs.exists("doomed")
    with pytest.raises(BlobNotFound):
        await blobs.get("doomed")
    assert [p.name for p in files_under(tmp_path)] == ["earlier"]


async def test_file_unusable_folder_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "afile").write_bytes(b"not a folder")
    blobs = FileBlobStore(str(tmp_path / "afile" / "blobs"))
    with pytest.raises(StorageUnavailable):
        await blobs.put("k", b"x")
    with pytest.raises(StorageUnavailable):
        await blobs.get("k")
    with pytest.raises(StorageUnavailable):
        await blobs.exists("k")


# -- S3


async def test_s3_prefix_places_and_filters_keys(s3_bucket: tuple[str, str]) -> None:
    endpoint, bucket = s3_bucket
    client = s3_client(endpoint)
    client.put_object(Bucket=bucket, Key="outside", Body=b"not ours")
    client.put_object(Bucket=bucket, Key="tenant/blobs/sub/dir", Body=b"not ours")
    blobs = S3BlobStore(bucket, prefix="/tenant/blobs/", endpoint_url=endpoint)
    try:
        await blobs.put("m1", b"mail")
        listed = client.list_objects_v2(Bucket=bucket)["Contents"]
        assert sorted(o["Key"] for o in listed) == ["outside", "tenant/blobs/m1", "tenant/blobs/sub/dir"]
        assert list(await all_keys(blobs)) == ["m1"]
    finally:
        await blobs.close()


async def test_s3_missing_bucket_is_not_a_missing_blob(s3_bucket: tuple[str, str]) -> None:
    endpoint, _ = s3_bucket
    blobs = S3BlobStore("mailstack-no-such-bucket", endpoint_url=endpoint)
    try:
        with pytest.raises(StorageUnavailable):
            await blobs.get("k")
        with pytest.raises(StorageUnavailable):
            await blobs.exists("k")
    finally:
        await blobs.close()


async def test_s3_server_down_then_back(s3_server: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A server of our own, so the session's server keeps serving the other tests.
    server = S3Server(str(tmp_path / "s3"))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", server.secret_key)
    server.start()
    try:
        bucket = make_bucket(server.endpoint)
        blobs = S3BlobStore(bucket, endpoint_url=server.endpoint)
        await blobs.put("before", b"kept across the outage")
        server.stop(graceful=False)
        for attempt in (blobs.put("during", b"x"), blobs.get("before"), collect(blobs.stream("before"))):
            began = time.monotonic()
            with pytest.raises(StorageUnavailable):
                await attempt
            assert time.monotonic() - began < 10
        server.start()
        # The same store object serves again without being reopened. A restarted weed answers on its
        # S3 port a moment before its volume server has re-registered the old volumes (HTTP 500
        # meanwhile, seen on a loaded machine): that is a temporary error, so wait it out, bounded.
        deadline = time.monotonic() + 30
        while True:
            try:
                assert await blobs.get("before") == b"kept across the outage"
                break
            except StorageUnavailable:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)
        await blobs.put("after", b"works again")
        assert await blobs.get("after") == b"works again"
        await blobs.close()
    finally:
        server.close()
