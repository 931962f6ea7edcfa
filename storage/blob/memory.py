"""Blobs in a dict (memory://): for unit tests of logic only, nothing survives the process."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from mailstack.storage.blob.base import DEFAULT_CHUNK
from mailstack.storage.blob.keys import clamp_range, validate_key
from mailstack.storage.errors import BlobNotFound


class MemoryBlobStore:
    local_reads = True  # see BlobStore

    def __init__(self) -> None:
        self._blobs: dict[str, tuple[bytes, float]] = {}

    def _data(self, key: str, start: int, end: int | None) -> bytes:
        validate_key(key)
        clamp_range(0, start, end)
        try:
            data = self._blobs[key][0]
        except KeyError:
            raise BlobNotFound(key) from None
        begin, stop = clamp_range(len(data), start, end)
        return data[begin:stop]

    async def put(self, key: str, data: bytes) -> None:
        self._blobs[validate_key(key)] = (bytes(data), time.time())

    async def get(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        return self._data(key, start, end)

    async def stream(
        self, key: str, start: int = 0, end: int | None = None, chunk_size: int = DEFAULT_CHUNK
    ) -> AsyncIterator[bytes]:
        if chunk_size <= 0:
            raise ValueError("chunk_size must be positive")
        data = self._data(key, start, end)
        for i in range(0, len(data), chunk_size):
            yield data[i : i + chunk_size]

    async def delete(self, key: str) -> None:
        self._blobs.pop(validate_key(key), None)

    async def exists(self, key: str) -> bool:
        return validate_key(key) in self._blobs

    async def list_keys(self) -> AsyncIterator[tuple[str, float]]:
        for key, (_, mtime) in list(self._blobs.items()):
            yield key, mtime

    async def close(self) -> None:
        return None
