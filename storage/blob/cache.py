"""A bounded in-memory LRU of message bodies in front of a remote blob store (S3).

Blobs are written once and never modified, and a key is never reused, so a cached copy is never
stale; a delete evicts it. New mail is mostly read soon after delivery (an IDLE client fetches
what it was just told about, a POP3 client polls), so puts are cached as well as whole-blob
gets. Range reads of blobs not cached go straight to the store and are not kept. The file store
needs none of this: the OS page cache does it there.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import AsyncIterator, Callable

from mailstack.storage.blob.base import DEFAULT_CHUNK, BlobStore
from mailstack.storage.blob.keys import chunks, clamp_range, validate_key

MAX_BLOB_BYTES = 1024 * 1024  # bigger bodies are rare and would push out many small ones


class CachedBlobStore:
    local_reads = False  # see BlobStore

    def __init__(self, inner: BlobStore, max_bytes: int, max_blob_bytes: int = MAX_BLOB_BYTES) -> None:
        if max_bytes <= 0:
            raise ValueError("a blob cache needs a positive size")
        self._inner = inner
        self._max_bytes = max_bytes
        self._max_blob_bytes = min(max_blob_bytes, max_bytes)
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._bytes = 0
        self.hits = 0
        self.misses = 0
        self.on_lookup: Callable[[bool], None] | None = None  # (hit) -> None, for metrics

    @property
    def cached_bytes(self) -> int:
        return self._bytes

    def _remember(self, key: str, data: bytes) -> None:
        if len(data) > self._max_blob_bytes:
            return
        self._forget(key)
        self._items[key] = data
        self._bytes += len(data)
        while self._bytes > self._max_bytes:
            _, evicted = self._items.popitem(last=False)
            self._bytes -= len(evicted)

    def _forget(self, key: str) -> None:
        old = self._items.pop(key, None)
        if old is not None:
            self._bytes -= len(old)

    def _lookup(self, key: str) -> bytes | None:
        data = self._items.get(key)
        if self.on_lookup is not None:
            self.on_lookup(data is not None)
        if data is None:
            self.misses += 1
            return None
        self.hits += 1
        self._items.move_to_end(key)
        return data

    async def put(self, key: str, data: bytes) -> None:
        await self._inner.put(key, data)  # durable first: the cache never holds what the store lacks
        self._remember(key, bytes(data))

    async def get(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        validate_key(key)
        clamp_range(0, start, end)  # bad ranges fail the same way, cached or not
        data = self._lookup(key)
        if data is None:
            if start or end is not None:
                return await self._inner.get(key, start, end)
            data = await self._inner.get(key)
            self._remember(key, data)
            return data
        begin, stop = clamp_range(len(data), start, end)
        return data[begin:stop]

    async def stream(
        self, key: str, start: int = 0, end: int | None = None, chunk_size: int = DEFAULT_CHUNK
    ) -> AsyncIterator[bytes]:
        validate_key(key)
        if chunk_size <= 0:
            raise ValueError("chunk_size must be positive")
        clamp_range(0, start, end)
        data = self._lookup(key)
        if data is None:
            async for chunk in self._inner.stream(key, start, end, chunk_size):
                yield chunk
            return
        for chunk in chunks(data, start, end, chunk_size):
            yield chunk

    async def delete(self, key: str) -> None:
        self._forget(key)
        await self._inner.delete(key)

    async def exists(self, key: str) -> bool:
        return key in self._items or await self._inner.exists(key)

    def list_keys(self) -> AsyncIterator[tuple[str, float]]:
        return self._inner.list_keys()

    async def close(self) -> None:
        self._items.clear()
        self._bytes = 0
        await self._inner.close()
