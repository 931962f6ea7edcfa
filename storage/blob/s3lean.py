"""The S3 blob store with its hot path (put, get, stream, exists, delete) on our own client (ADR 0042).

boto3 still resolves the endpoint, region and credentials (environment, profiles, instance roles)
once, and lists the bucket for the orphan sweeper: rare calls where its cost does not matter.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

from mailstack.storage.blob.base import DEFAULT_CHUNK
from mailstack.storage.blob.keys import clamp_range, validate_key
from mailstack.storage.blob.s3 import S3BlobStore
from mailstack.storage.blob.s3http import Credentials, S3Client, S3Error, S3Unreachable
from mailstack.storage.errors import BlobNotFound, StorageUnavailable

_T = TypeVar("_T")

# As in s3.py: NoSuchBucket is an outage, not a missing blob.
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "404", "NotFound"})


class LeanS3BlobStore(S3BlobStore):
    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        path_style: bool = True,
        max_workers: int = 16,
        *,
        connect_timeout: float = 2.0,
        read_timeout: float = 5.0,
        max_attempts: int = 3,
    ) -> None:
        super().__init__(
            bucket,
            prefix,
            endpoint_url,
            region,
            path_style,
            max_workers,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_attempts=max_attempts,
        )
        meta = self._client.meta
        resolved = self._session.get_credentials()

        def credentials() -> Credentials | None:
            if resolved is None:
                return None
            # Frozen per request: refreshable (role) credentials renew themselves here.
            frozen: Any = resolved.get_frozen_credentials()
            return Credentials(frozen.access_key, frozen.secret_key, frozen.token)

        self._s3 = S3Client(
            meta.endpoint_url,
            bucket,
            meta.region_name or "us-east-1",
            credentials,
            path_style=path_style,
            max_connections=max_workers,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_attempts=max_attempts,
        )

    def _error(self, key: str, exc: S3Error | S3Unreachable) -> Exception:
        """The store's error for a client error, as s3.py maps botocore's (retries and readiness
        see the same StorageUnavailable)."""
        if isinstance(exc, S3Error) and exc.code in _NOT_FOUND_CODES:
            return BlobNotFound(key)
        return StorageUnavailable(f"S3 bucket {self._bucket}: {exc}")

    async def _mapped(self, key: str, call: Awaitable[_T]) -> _T:
        try:
            return await call
        except (S3Error, S3Unreachable) as exc:
            raise self._error(key, exc) from exc

    async def put(self, key: str, data: bytes) -> None:
        # S3 PUT is atomic: the object is invisible until the whole body is stored.
        await self._mapped(key, self._s3.put(self._object_key(key), bytes(data)))

    async def _read(self, key: str, start: int, end: int | None) -> bytes:
        try:
            return await self._s3.get(self._object_key(key), start, end)
        except S3Error as exc:
            if exc.code == "InvalidRange":
                return b""  # 416: the object exists and start is at or past its end
            raise

    async def get(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        validate_key(key)
        clamp_range(0, start, end)
        if end is not None and end <= start:
            return await self._empty_range(key)
        return await self._mapped(key, self._read(key, start, end))

    async def stream(
        self, key: str, start: int = 0, end: int | None = None, chunk_size: int = DEFAULT_CHUNK
    ) -> AsyncIterator[bytes]:
        validate_key(key)
        clamp_range(0, start, end)
        if chunk_size <= 0:
            raise ValueError("chunk_size must be positive")
        if end is not None and end <= start:
            await self._empty_range(key)
            return
        chunks = self._s3.stream(self._object_key(key), start, end, chunk_size)
        try:
            while True:
                try:
                    chunk = await anext(chunks)
                except StopAsyncIteration:
                    return
                except S3Error as exc:
                    if exc.code == "InvalidRange":
                        return  # 416: start at or past the end
                    raise self._error(key, exc) from exc
                except S3Unreachable as exc:
                    raise self._error(key, exc) from exc
                yield chunk
        finally:
            await chunks.aclose()  # type: ignore[attr-defined]  # an async generator

    async def exists(self, key: str) -> bool:
        # A one-byte GET, not HEAD: HEAD's bare 404 cannot tell a missing key from a missing bucket.
        validate_key(key)
        try:
            await self._mapped(key, self._read(key, 0, 1))
        except BlobNotFound:
            return False
        return True

    async def delete(self, key: str) -> None:
        # S3 DELETE of a missing key succeeds (204), which is the idempotence we want.
        await self._mapped(key, self._s3.delete(self._object_key(key)))

    async def close(self) -> None:
        await self._s3.close()
        await super().close()
