"""A blob store in front of the metadata database's kept bodies (ADR 0045).

Small bodies are written by the metadata store in the transaction of the message that brings
them, so no blob is put for them; reads look there first and fall back to the blob store.
Deletion needs nothing here: a kept body is deleted with its last reference, in the metadata
transaction that drops it, and an orphan can never be left behind.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

from mailstack.storage.blob.base import DEFAULT_CHUNK, BlobStore
from mailstack.storage.blob.keys import chunks, clamp_range, validate_key

KeptBody = Callable[[str], Awaitable[bytes | None]]


class KeptBodies:
    """BlobStore over `inner`, reading kept bodies through `kept` (MetadataStore.kept_body)."""

    def __init__(self, inner: BlobStore, kept: KeptBody) -> None:
        self._inner = inner
        self._kept = kept
        self.local_reads = inner.local_reads  # a kept body is a local read too

    async def put(self, key: str, data: bytes) -> None:
        await self._inner.put(key, data)

    async def get(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        body = await self._kept(validate_key(key))
        if body is None:
            return await self._inner.get(key, start, end)
        begin, stop = clamp_range(len(body), start, end)
        return body[begin:stop]

    async def stream(
        self, key: str, start: int = 0, end: int | None = None, chunk_size: int = DEFAULT_CHUNK
    ) -> AsyncIterator[bytes]:
        if chunk_size <= 0:
            raise ValueError("chunk_size must be positive")
        body = await self._kept(validate_key(key))
        if body is None:
            async for chunk in self._inner.stream(key, start, end, chunk_size):
                yield chunk
            return
        for chunk in chunks(body, start, end, chunk_size):
            yield chunk

    async def delete(self, key: str) -> None:
        await self._inner.delete(key)  # a kept body went with its last reference

    async def exists(self, key: str) -> bool:
        return await self._kept(validate_key(key)) is not None or await self._inner.exists(key)

    def list_keys(self) -> AsyncIterator[tuple[str, float]]:
        return self._inner.list_keys()  # kept bodies cannot be orphans: the sweeper has nothing to find

    async def close(self) -> None:
        await self._inner.close()
