"""Open a storage backend from its URL: file:// s3:// sqlite:// postgresql:// redis:// memory://
(and workers://, which `mailstack serve` gives its worker processes)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from mailstack.storage.blob.base import BlobStore
from mailstack.storage.events.base import EventBus
from mailstack.storage.metadata.base import MetadataStore
from mailstack.storage.queue.base import QueueBackend
from mailstack.storage.quota.base import QuotaStore
from mailstack.storage.sessions.base import SessionDirectory


def _path(url: str) -> str:
    # file:///abs/path and file://relative/path both mean a local path.
    rest = url.split("://", 1)[1]
    if not rest:
        raise ValueError(f"{url!r}: a path is required")
    return rest


def open_blob_store(
    url: str,
    *,
    s3_endpoint: str = "",
    s3_region: str = "",
    s3_path_style: bool = True,
    cache_bytes: int = 0,
    s3_client: str = "lean",
) -> BlobStore:
    """cache_bytes > 0 puts an in-memory cache of bodies in front of S3 (the file store has the
    OS page cache). s3_client "boto3" keeps every S3 call on boto3 (ADR 0042)."""
    scheme = urlsplit(url).scheme
    if scheme == "file":
        from mailstack.storage.blob.file import FileBlobStore

        return FileBlobStore(_path(url))
    if scheme == "s3":
        from mailstack.storage.blob.s3 import S3BlobStore
        from mailstack.storage.blob.s3lean import LeanS3BlobStore

        parts = urlsplit(url)
        if not parts.netloc:
            raise ValueError(f"{url!r}: s3://BUCKET/PREFIX needs a bucket")
        if s3_client not in ("lean", "boto3"):
            raise ValueError(f"S3 client {s3_client!r}: lean or boto3")
        store_class = LeanS3BlobStore if s3_client == "lean" else S3BlobStore
        s3: BlobStore = store_class(
            bucket=parts.netloc,
            prefix=parts.path.lstrip("/"),
            endpoint_url=s3_endpoint or None,
            region=s3_region or None,
            path_style=s3_path_style,
        )
        if cache_bytes > 0:
            from mailstack.storage.blob.cache import CachedBlobStore

            s3 = CachedBlobStore(s3, cache_bytes)
        return s3
    if scheme == "memory":
        from mailstack.storage.blob.memory import MemoryBlobStore

        return MemoryBlobStore()
    raise ValueError(f"unsupported blob store URL {url!r} (file://, s3://, memory://)")


def open_metadata_store(url: str) -> MetadataStore:
    scheme = urlsplit(url).scheme
    if scheme == "sqlite":
        from mailstack.storage.metadata.sqlite import SqliteMetadataStore

        return SqliteMetadataStore(_path(url))
    if scheme in ("postgresql", "postgres"):
        from mailstack.storage.metadata.postgresql import PostgresMetadataStore

        return PostgresMetadataStore(url)
    raise ValueError(f"unsupported metadata URL {scheme + '://'!r} (sqlite://PATH, postgresql://USER@HOST/DB)")


def open_queue_store(metadata: MetadataStore) -> QueueBackend:
    """The outbound queue and API tokens, in the database of this metadata store (ADR 0008): its queue
    shares the store's transactions and the `blobs` table the orphan sweeper reads."""
    from mailstack.storage.metadata.sqlite import SqliteMetadataStore

    if isinstance(metadata, SqliteMetadataStore):
        from mailstack.storage.queue.sqlite import SqliteQueueStore

        return SqliteQueueStore(metadata)
    from mailstack.storage.metadata.postgresql import PostgresMetadataStore

    if isinstance(metadata, PostgresMetadataStore):
        from mailstack.storage.queue.postgresql import PostgresQueueStore

        return PostgresQueueStore(metadata)
    raise ValueError(f"no outbound queue for a {type(metadata).__name__}")


def open_event_bus(url: str) -> EventBus:
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        from mailstack.storage.events.memory import MemoryEventBus

        return MemoryEventBus()
    if scheme in ("redis", "rediss", "unix"):
        from mailstack.storage.events.redis import RedisEventBus

        return RedisEventBus(url)
    if scheme == "workers":
        from mailstack.storage.events.siblings import SiblingEventBus

        folder, me, count = workers_url(url)
        return SiblingEventBus(folder, me, count)
    raise ValueError(f"unsupported event bus URL {url!r} (memory://, redis://)")


def workers_url(url: str) -> tuple[Path, int, int]:
    """workers:///FOLDER?worker=I&count=N, what `mailstack serve` gives each of its worker processes
    (ADR 0043): the folder of their sockets and session files, this worker's number and their count."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    return Path(parts.path), int(query["worker"][0]), int(query["count"][0])


def open_quota_store(url: str, metadata: MetadataStore) -> QuotaStore:
    scheme = urlsplit(url).scheme if url else ""
    if scheme in ("", "sql"):
        from mailstack.storage.quota.sql import SqlQuotaStore

        return SqlQuotaStore(metadata)
    if scheme in ("redis", "rediss", "unix"):
        from mailstack.storage.quota.redis import RedisQuotaStore

        return RedisQuotaStore(url)
    raise ValueError(f"unsupported quota URL {url!r} (empty for SQL, redis://)")


def open_session_directory(events_url: str) -> SessionDirectory:
    """Where the events go, the session directory goes: Redis shared by every replica, else the
    mailstore's memory (one mailstore process)."""
    scheme = urlsplit(events_url).scheme
    if scheme in ("redis", "rediss", "unix"):
        from mailstack.storage.sessions.redis import RedisSessionDirectory

        return RedisSessionDirectory(events_url)
    if scheme == "memory":
        from mailstack.storage.sessions.memory import MemorySessionDirectory

        return MemorySessionDirectory()
    if scheme == "workers":
        from mailstack.storage.sessions.files import FileSessionDirectory

        return FileSessionDirectory(workers_url(events_url)[0] / "sessions")
    raise ValueError(f"unsupported event bus URL {events_url!r} for the session directory (redis://, memory://)")
