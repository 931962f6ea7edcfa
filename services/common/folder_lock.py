"""One process per folder: a lock file held (flock) for as long as the process uses the folder.

The mailstore holds one next to its SQLite database: two mailstores on one database would each
believe its caches (UIDs, quota, the in-process event bus) and corrupt what clients see. The kernel
drops the lock when the process dies, so a crash never leaves a stale lock behind; the file keeps
the holder's pid only to name it in the message. `serve`'s worker processes share one database on
purpose (ADR 0043): their supervisor holds the lock for them.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path
from urllib.parse import urlsplit

LOCK_NAME = "mailstore.lock"


class FolderInUse(Exception):
    """Another process holds the folder's lock: a message for the operator."""


def lock_path(metadata_url: str) -> Path | None:
    """The lock file of a mailstore's metadata: beside its SQLite database (DATA_DIR by default);
    None for PostgreSQL, which several mailstore replicas share by design (ADR 0027)."""
    if urlsplit(metadata_url).scheme != "sqlite":
        return None
    return Path(metadata_url.split("://", 1)[1]).parent / LOCK_NAME


class FolderLock:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise FolderInUse naming the folder and the holder's pid."""
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            pid = f" (pid {holder})" if holder.isdigit() else ""
            raise FolderInUse(
                f"data folder {self.path.parent} is in use by another mailstore{pid}: stop it, or give this one "
                f"its own MAILSTACK_DATA_DIR (lock file {self.path})"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def probe(self) -> None:
        """Raise FolderInUse when another process holds the lock; hold nothing afterwards (and
        create nothing: a folder not there yet is held by nobody)."""
        if not self.path.parent.is_dir():
            return
        self.acquire()
        self.release()
