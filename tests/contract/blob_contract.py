"""The contract of storage.blob.base.BlobStore, written once (issue 20).

A backend's test class subclasses BlobStoreContract with a `blob_url` fixture (and `blob_options`
when it needs the registry's options); the store is opened through the registry as the mailstore
opens it: test_blob_memory.py, test_blob_file.py, test_blob_s3.py (SeaweedFS, with and without the cache).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from mailstack.storage.blob.base import BlobStore
from mailstack.storage.errors import BlobNotFound
from mailstack.storage.registry import open_blob_store

ALL_BYTES = bytes(range(256))


async def collect(chunks: AsyncIterator[bytes]) -> list[bytes]:
    return [chunk async for chunk in chunks]


async def all_keys(blobs: BlobStore) -> dict[str, float]:
    return {key: mtime async for key, mtime in blobs.list_keys()}


class BlobStoreContract:
    """Every BlobStore passes these. A subclass provides `blob_url`."""

    @pytest.fixture
    def blob_options(self) -> dict[str, Any]:
        return {}

    @pytest.fixture
    async def store(self, blob_url: str, blob_options: dict[str, Any]) -> AsyncIterator[BlobStore]:
        blobs = open_blob_store(blob_url, **blob_options)
        yield blobs
        await blobs.close()

    async def test_round_trip_is_byte_exact(self, store: BlobStore) -> None:
        data = ALL_BYTES * 3 + b"\r\n.\r\n\x00"
        await store.put("all-bytes", data)
        assert await store.get("all-bytes") == data
        assert b"".join(await collect(store.stream("all-bytes"))) == data
        assert await store.exists("all-bytes")

    async def test_large_blob_round_trip(self, store: BlobStore) -> None:
        data = random.Random(5).randbytes(5 * 1024 * 1024)
        await store.put("big", data)
        assert await store.get("big") == data
        assert await store.get("big", 4 * 1024 * 1024 + 3, 4 * 1024 * 1024 + 9) == data[4 * 1024 * 1024 + 3 :][:6]

    async def test_empty_blob(self, store: BlobStore) -> None:
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
    async def test_ranges(self, store: BlobStore, start: int, end: int | None, expected: bytes) -> None:
        await store.put("ranged", ALL_BYTES)
        assert await store.get("ranged", start, end) == expected
        assert b"".join(await collect(store.stream("ranged", start, end, chunk_size=7))) == expected

    async def test_stream_respects_chunk_size(self, store: BlobStore) -> None:
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

    async def test_stream_can_be_abandoned(self, store: BlobStore) -> None:
        await store.put("abandoned", ALL_BYTES * 100)
        stream = store.stream("abandoned", chunk_size=100)
        assert await anext(stream) == ALL_BYTES[:100]
        await stream.aclose()  # type: ignore[attr-defined]  # every store streams with an async generator
        assert await store.get("abandoned", 0, 3) == b"\x00\x01\x02"

    async def test_missing_key(self, store: BlobStore) -> None:
        assert not await store.exists("missing")
        with pytest.raises(BlobNotFound):
            await store.get("missing")
        with pytest.raises(BlobNotFound):
            await store.get("missing", 5, 5)
        with pytest.raises(BlobNotFound):
            await collect(store.stream("missing"))
        with pytest.raises(BlobNotFound):
            await collect(store.stream("missing", 3, 9, chunk_size=2))

    async def test_delete_is_idempotent(self, store: BlobStore) -> None:
        await store.put("doomed", b"bye")
        await store.delete("doomed")
        await store.delete("doomed")
        await store.delete("never-there")
        assert not await store.exists("doomed")
        with pytest.raises(BlobNotFound):
            await store.get("doomed")

    async def test_list_keys_sees_puts_not_deletes(self, store: BlobStore) -> None:
        assert await all_keys(store) == {}
        before = time.time()
        for key in ("01HZX-a", "01HZX-b", "01HZX-c"):
            await store.put(key, key.encode())
        await store.delete("01HZX-b")
        keys = await all_keys(store)
        assert set(keys) == {"01HZX-a", "01HZX-c"}
        # Servers keep whole seconds; allow for that and a little clock skew.
        assert all(before - 5 <= mtime <= time.time() + 5 for mtime in keys.values())

    async def test_overwrite_with_same_content(self, store: BlobStore) -> None:
        await store.put("twice", b"same body")
        await store.put("twice", b"same body")
        assert await store.get("twice") == b"same body"
        assert list(await all_keys(store)) == ["twice"]

    async def test_concurrent_puts_are_all_readable(self, store: BlobStore) -> None:
        bodies = {f"msg-{i:02d}": random.Random(i).randbytes(1000 + 997 * i) for i in range(20)}
        await asyncio.gather(*(store.put(key, body) for key, body in bodies.items()))
        for key, body in bodies.items():
            assert await store.get(key) == body
        assert set(await all_keys(store)) == set(bodies)

    @pytest.mark.parametrize("key", ["", ".hidden", "..", "a/b", "../etc", "x" * 201, "caf\u00e9", "sp ace", "nul\x00"])
    async def test_invalid_keys_are_rejected(self, store: BlobStore, key: str) -> None:
        with pytest.raises(ValueError):
            await store.put(key, b"x")
        with pytest.raises(ValueError):
            await store.get(key)
        with pytest.raises(ValueError):
            await store.exists(key)
        with pytest.raises(ValueError):
            await store.delete(key)

    async def test_longest_valid_key(self, store: BlobStore) -> None:
        key = "K" * 199 + "."
        await store.put(key, b"ok")
        assert await store.get(key) == b"ok"

    # -- files
