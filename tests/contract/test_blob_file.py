"""The blob contract on local files, and what only the file store has (layout, temp files, fsync)."""

from __future__ import annotations

import asyncio
import errno
import os
import stat
from pathlib import Path

import pytest
from mailstack.storage.blob.file import FileBlobStore
from mailstack.storage.errors import BlobNotFound, StorageUnavailable

from tests.contract.blob_contract import BlobStoreContract, all_keys


class TestFileBlobStore(BlobStoreContract):
    @pytest.fixture
    def blob_url(self, tmp_path: Path) -> str:
        return f"file://{tmp_path / 'blobs'}"


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
