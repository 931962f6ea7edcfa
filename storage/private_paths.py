"""Folders and files only this service's user may read: the data folder (0700) and the metadata
database with its -wal and -shm files (0600), which hold password and token hashes and every
mailbox's headers. Created so from the start (never a window with wider modes), and tightened with
a warning when found wider (a folder from an older version, a restored backup, a lax umask).
"""

from __future__ import annotations

import logging
import os
import stat

log = logging.getLogger("mailstack.storage")

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600
SQLITE_COMPANIONS = ("-wal", "-shm", "-journal")  # SQLite gives these the database file's mode


def private_dir(path: str | os.PathLike[str]) -> None:
    """Create `path` (and missing parents) with mode 0700, or tighten an existing one to 0700."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, exist_ok=True)  # parents keep the usual modes: they are not ours alone
        try:
            os.mkdir(path, PRIVATE_DIR)  # reduced by the umask, never widened
        except FileExistsError:
            if not os.path.isdir(path):
                raise
    _tighten(path, PRIVATE_DIR, "folder")


def private_file(path: str | os.PathLike[str]) -> None:
    """Create `path` empty with mode 0600 unless it exists; tighten an existing one to 0600."""
    path = os.fspath(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
    except FileExistsError:
        pass
    else:
        os.close(fd)
    _tighten(path, PRIVATE_FILE, "file")


def private_sqlite(path: str | os.PathLike[str]) -> None:
    """The database file 0600 before SQLite opens it (SQLite creates -wal/-shm with its mode); any
    companion left by an earlier run with wider modes is tightened too."""
    path = os.fspath(path)
    private_file(path)
    for suffix in SQLITE_COMPANIONS:
        if os.path.exists(path + suffix):
            _tighten(path + suffix, PRIVATE_FILE, "file")


def _tighten(path: str, wanted: int, what: str) -> None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    mode = stat.S_IMODE(st.st_mode)
    if not mode & ~wanted & 0o077:
        return  # no permission for group or others beyond what is wanted
    try:
        os.chmod(path, mode & wanted)
    except OSError as e:  # not its owner (a volume root with fsGroup), read-only mount
        log.warning("%s %s is open to group or others (mode %o) and could not be tightened: %s", what, path, mode, e)
        return
    log.warning("%s %s was mode %o: tightened to %o (password hashes, mail)", what, path, mode, mode & wanted)
