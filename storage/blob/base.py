"""The blob store: opaque keys, written once, never modified."""

from collections.abc import AsyncIterator, Callable
from typing import Protocol, runtime_checkable

DEFAULT_CHUNK = 256 * 1024


class BlobStore(Protocol):
    # Reads finish in microseconds (local files, memory): callers gain nothing by overlapping them.
    local_reads: bool

    async def put(self, key: str, data: bytes) -> None:
        """Store data under key; durable when this returns (fsync / S3 PUT done), never visible partially."""

    async def get(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        """Bytes [start, end) of the blob (end None = to the end). Raises BlobNotFound."""

    def stream(
        self, key: str, start: int = 0, end: int | None = None, chunk_size: int = DEFAULT_CHUNK
    ) -> AsyncIterator[bytes]:
        """Bytes [start, end) in chunks of at most chunk_size. Raises BlobNotFound."""

    async def delete(self, key: str) -> None:
        """Remove the blob; a missing key is not an error."""

    async def exists(self, key: str) -> bool: ...

    def list_keys(self) -> AsyncIterator[tuple[str, float]]:
        """Every key with its last-modified time (unix seconds), for the orphan sweeper."""

    async def close(self) -> None: ...


@runtime_checkable
class BlobCache(Protocol):
    """A blob store that keeps bodies in memory (the registry's cache_bytes > 0): what metrics read.
    The mailstore asks for this interface, never for the class that implements it."""

    on_lookup: Callable[[bool], None] | None  # called with hit=True/False on every lookup

    @property
    def cached_bytes(self) -> int: ...
