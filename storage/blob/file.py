"""Blobs as files under a folder (file://PATH): fsynced temp file renamed into place."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from typing import BinaryIO, TypeVar

from mailstack.storage.blob.base import DEFAULT_CHUNK
from mailstack.storage.blob.keys import clamp_range, validate_key
from mailstack.storage.errors import BlobNotFound, StorageUnavailable

_T = TypeVar("_T")
INLINE_READ_BYTES = 256 * 1024  # reads up to this size stay on the event loop (see get)

_TEMP_PREFIX = ".tmp-"  # never a valid key (validate_key refuses a leading dot)


class FileBlobStore:
    local_reads = True  # see BlobStore

    def __init__(self, path: str) -> None:
        self._root = os.path.abspath(path)

    def _dir_of(self, key: str) -> str:
        # Two levels of 256 folders from a hash: ULIDs share prefixes, hashes spread evenly.
        # (Plain concatenation: os.path.join cost more than the read of a small file.)
        digest = hashlib.sha256(key.encode()).hexdigest()
        return f"{self._root}/{digest[:2]}/{digest[2:4]}"

    def _path_of(self, key: str) -> str:
        """The file of a key already checked by validate_key (every public method checks first)."""
        return f"{self._dir_of(key)}/{key}"

    @contextlib.contextmanager
    def _errors(self, reading: bool) -> Iterator[None]:
        try:
            yield
        except FileNotFoundError as exc:
            if not reading:
                raise StorageUnavailable(f"blob store {self._root}: {exc}") from exc
            raise BlobNotFound(os.path.basename(str(exc.filename or ""))) from exc
        except OSError as exc:
            raise StorageUnavailable(f"blob store {self._root}: {exc}") from exc

    async def _run(self, fn: Callable[..., _T], *args: object, reading: bool = True) -> _T:
        # Blocking file I/O goes to asyncio's bounded default thread pool.
        with self._errors(reading):
            return await asyncio.to_thread(fn, *args)

    # -- writing

    def _ensure_dir(self, directory: str) -> list[str]:
        """Create missing levels; returns the folders whose new entries still need an fsync."""
        missing: list[str] = []
        d = directory
        while not os.path.isdir(d):
            missing.append(d)
            d = os.path.dirname(d)
        parents: list[str] = []
        for d in reversed(missing):
            try:
                os.mkdir(d)
            except FileExistsError:
                if not os.path.isdir(d):
                    raise
                continue
            parents.append(os.path.dirname(d))
        return parents

    def _put_sync(self, key: str, data: bytes) -> None:
        final = self._path_of(key)
        directory = os.path.dirname(final)
        parents = self._ensure_dir(directory)
        tmp = os.path.join(directory, f"{_TEMP_PREFIX}{key}.{secrets.token_hex(6)}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, final)
        except BaseException:
            _unlink_quietly(tmp)
            raise
        # The folder's fsync makes the rename durable; a folder created above is made durable in
        # its parent only now, after the file's: the file's fsync commits the filesystem journal
        # with the mkdir in it (ext4, XFS), so these are cheap, where before the file's they each
        # cost a journal commit of their own. Nothing is acknowledged before all are done.
        _fsync_dir(directory)
        for parent in reversed(parents):
            _fsync_dir(parent)

    async def put(self, key: str, data: bytes) -> None:
        validate_key(key)
        await self._run(self._put_sync, key, bytes(data), reading=False)

    # -- reading

    def _read_sync(self, key: str, start: int, end: int | None, at_most: int | None = None) -> bytes | None:
        """Bytes [start, end), or None when they are more than `at_most` (read them off the loop).
        os.open + pread: half the cost of open() with its buffered file object."""
        fd = os.open(self._path_of(key), os.O_RDONLY | os.O_CLOEXEC)
        try:
            begin, stop = clamp_range(os.fstat(fd).st_size, start, end)
            if at_most is not None and stop - begin > at_most:
                return None
            parts = []
            while begin < stop:
                part = os.pread(fd, stop - begin, begin)
                if not part:  # the file cannot shrink (written once), but never loop forever
                    break
                parts.append(part)
                begin += len(part)
            return parts[0] if len(parts) == 1 else b"".join(parts)
        finally:
            os.close(fd)

    async def get(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        validate_key(key)
        clamp_range(0, start, end)
        # Most mail is small and in the page cache: reading it here takes microseconds, less
        # than the hop to a thread (which, under load, doubles the latency of a FETCH).
        with self._errors(reading=True):
            data = self._read_sync(key, start, end, INLINE_READ_BYTES)
        if data is None:
            data = await self._run(self._read_sync, key, start, end)
        assert data is not None  # no limit off the loop
        return data

    def _open_sync(self, key: str, start: int, end: int | None) -> tuple[BinaryIO, int]:
        f = open(self._path_of(key), "rb")  # closed by stream()
        try:
            begin, stop = clamp_range(os.fstat(f.fileno()).st_size, start, end)
            f.seek(begin)
        except BaseException:
            f.close()
            raise
        return f, stop - begin

    async def stream(
        self, key: str, start: int = 0, end: int | None = None, chunk_size: int = DEFAULT_CHUNK
    ) -> AsyncIterator[bytes]:
        validate_key(key)
        clamp_range(0, start, end)
        if chunk_size <= 0:
            raise ValueError("chunk_size must be positive")
        f, remaining = await self._run(self._open_sync, key, start, end)
        try:
            while remaining > 0:
                chunk = await self._run(f.read, min(chunk_size, remaining))
                if not chunk:  # the file cannot shrink (written once), but never loop forever
                    break
                remaining -= len(chunk)
                yield chunk
        finally:
            f.close()

    def _exists_sync(self, key: str) -> bool:
        try:
            os.stat(self._path_of(key))
        except FileNotFoundError:
            return False
        return True  # other errors (EIO, ENOTDIR) are outages, not absence

    async def exists(self, key: str) -> bool:
        validate_key(key)
        return await self._run(self._exists_sync, key)

    # -- removing and listing

    async def delete(self, key: str) -> None:
        # On the event loop (an unlink takes microseconds) and with no fsync of the folder: the
        # metadata decides which messages exist, and a delete lost in a crash leaves an orphan
        # blob, which the sweeper removes. EXPUNGE of 100 messages waited ~200 ms for the fsyncs.
        validate_key(key)
        with self._errors(reading=False), contextlib.suppress(FileNotFoundError):
            os.unlink(self._path_of(key))

    def _scan_leaf(self, directory: str) -> list[tuple[str, float]]:
        found: list[tuple[str, float]] = []
        try:
            entries = list(os.scandir(directory))
        except FileNotFoundError:
            return found
        for entry in entries:
            if entry.name.startswith(".") or not entry.is_file(follow_symlinks=False):
                continue  # temp files start with a dot; keys never do
            try:
                found.append((entry.name, entry.stat(follow_symlinks=False).st_mtime))
            except FileNotFoundError:
                continue  # deleted while we listed
        return found

    def _subdirs(self, directory: str) -> list[str]:
        try:
            return sorted(e.path for e in os.scandir(directory) if e.is_dir(follow_symlinks=False))
        except FileNotFoundError:
            return []

    async def list_keys(self) -> AsyncIterator[tuple[str, float]]:
        # One thread hop per folder keeps memory bounded with millions of blobs.
        for top in await self._run(self._subdirs, self._root):
            for leaf in await self._run(self._subdirs, top):
                for item in await self._run(self._scan_leaf, leaf):
                    yield item

    async def close(self) -> None:
        return None


def _fsync_dir(directory: str) -> None:
    # A rename or unlink is durable only once the folder holding it is fsynced.
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
