"""The blob cache's own rules (LRU by bytes, what is kept, evictions); the BlobStore contract
runs against it over a real S3 server in tests/contract/test_blob_s3.py."""

from __future__ import annotations

import pytest
from mailstack.storage.blob.cache import CachedBlobStore
from mailstack.storage.blob.memory import MemoryBlobStore
from mailstack.storage.errors import BlobNotFound


class CountingStore(MemoryBlobStore):
    def __init__(self) -> None:
        super().__init__()
        self.gets = 0

    async def get(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        self.gets += 1
        return await super().get(key, start, end)


async def test_puts_and_whole_gets_are_served_from_memory() -> None:
    inner = CountingStore()
    cache = CachedBlobStore(inner, max_bytes=100)
    await cache.put("a", b"0123456789")
    assert await cache.get("a") == b"0123456789"
    assert await cache.get("a", 2, 5) == b"234"
    assert await cache.get("a", 8, 99) == b"89"
    assert [c async for c in cache.stream("a", 1, 9, chunk_size=3)] == [b"123", b"456", b"78"]
    assert inner.gets == 0 and cache.hits == 4

    await inner.put("b", b"bbbb")  # written by another mailstore: first read fills the cache
    assert await cache.get("b") == b"bbbb"
    assert await cache.get("b") == b"bbbb"
    assert inner.gets == 1


async def test_least_recently_used_is_evicted_by_bytes() -> None:
    inner = CountingStore()
    cache = CachedBlobStore(inner, max_bytes=25)
    for key in "abc":
        await cache.put(key, key.encode() * 10)  # 30 bytes in all: "a", the oldest, goes
    assert cache.cached_bytes == 20
    await cache.get("b")  # "b" is now the most recent: "c" goes next
    await cache.put("d", b"d" * 10)
    assert (await cache.get("b"), await cache.get("d"), inner.gets) == (b"b" * 10, b"d" * 10, 0)
    assert await cache.get("c") == b"c" * 10  # from the store: evicted, not lost
    assert await cache.get("a") == b"a" * 10
    assert inner.gets == 2 and cache.cached_bytes <= 25


async def test_big_blobs_and_ranges_of_uncached_blobs_are_not_kept() -> None:
    inner = CountingStore()
    cache = CachedBlobStore(inner, max_bytes=1000, max_blob_bytes=10)
    await cache.put("big", b"x" * 11)
    assert cache.cached_bytes == 0
    await inner.put("small", b"y" * 5)
    assert await cache.get("small", 1, 3) == b"yy"
    assert cache.cached_bytes == 0  # a range read is not the whole body


async def test_delete_evicts_and_missing_keys_raise() -> None:
    cache = CachedBlobStore(MemoryBlobStore(), max_bytes=100)
    await cache.put("a", b"abc")
    await cache.delete("a")
    assert cache.cached_bytes == 0 and not await cache.exists("a")
    with pytest.raises(BlobNotFound):
        await cache.get("a")
    with pytest.raises(ValueError):
        await cache.get("a", -1)
    with pytest.raises(ValueError):
        CachedBlobStore(MemoryBlobStore(), max_bytes=0)


async def test_lookups_and_size_reach_the_metrics() -> None:
    from mailstack.services.mailstore.core.stores import export_cache_metrics
    from prometheus_client import REGISTRY

    def sample(name: str, **labels: str) -> float:
        value = REGISTRY.get_sample_value(name, labels)
        return value or 0.0

    cache = CachedBlobStore(MemoryBlobStore(), max_bytes=100)
    export_cache_metrics(cache)
    hits, misses = (
        sample("mailstack_blob_cache_lookups_total", result="hit"),
        sample("mailstack_blob_cache_lookups_total", result="miss"),
    )
    await cache.put("a", b"abc")
    await cache.get("a")
    with pytest.raises(BlobNotFound):
        await cache.get("nope")
    assert sample("mailstack_blob_cache_lookups_total", result="hit") == hits + 1
    assert sample("mailstack_blob_cache_lookups_total", result="miss") == misses + 1
    assert sample("mailstack_blob_cache_bytes") == 3
