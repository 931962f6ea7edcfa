"""Writers of several processes on one SQLite file take turns on a lock file (ADR 0043).

SQLite's own busy handler waits for a locked database by sleeping 1, 2, 5, 10 ... 100 ms between
tries, so with `serve` workers a write that meets another process's transaction (about a
millisecond) waited several. Taking this flock first, retried every 0.1 to 2 ms, hands the turn over
within a fraction of a millisecond; SQLite's lock stays what guarantees correctness, so a writer
that does not know this lock (a CLI, an older process) only waits as before.
"""

from __future__ import annotations

import fcntl
import os
import time

FIRST_RETRY = 0.0001  # seconds; doubled up to LAST_RETRY
LAST_RETRY = 0.002


class WritersLock:
    """An exclusive flock on PATH-writers, held from BEGIN IMMEDIATE to COMMIT by one thread."""

    def __init__(self, database_path: str, timeout: float) -> None:
        self._path = f"{database_path}-writers"
        self._timeout = timeout
        self._fd: int | None = None

    def acquire(self) -> bool:
        """Wait for the turn up to the timeout; False: not taken (SQLite's lock then decides)."""
        if self._fd is None:
            try:
                self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError:
                return False  # never the writer thread's end: SQLite's own lock still orders writes
        deadline = time.monotonic() + self._timeout
        delay = FIRST_RETRY
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    return False
                time.sleep(delay)
                delay = min(delay * 2, LAST_RETRY)

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
