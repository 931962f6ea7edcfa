"""The SQLite writers' turn lock (ADR 0043): one holder at a time across open files (processes), a
waiter gets the turn as soon as it is released, and gives up at its timeout instead of hanging."""

from __future__ import annotations

import os
import stat
import threading
import time
from pathlib import Path

from mailstack.storage.metadata.sqlite_writers import WritersLock


def test_one_holder_at_a_time_and_the_turn_passes_at_release(tmp_path: Path) -> None:
    first = WritersLock(str(tmp_path / "m.sqlite3"), timeout=5.0)
    second = WritersLock(str(tmp_path / "m.sqlite3"), timeout=5.0)
    assert first.acquire()
    got: list[float] = []
    waiter = threading.Thread(target=lambda: got.append(time.monotonic()) if second.acquire() else None)
    waiter.start()
    time.sleep(0.05)
    assert got == [], "the second waits while the first holds the turn"
    released = time.monotonic()
    first.release()
    waiter.join(5)
    assert len(got) == 1 and got[0] >= released
    second.release()
    for lock in (first, second):
        lock.close()
    mode = os.stat(tmp_path / "m.sqlite3-writers").st_mode
    assert stat.S_IMODE(mode) == 0o600


def test_a_holder_that_never_lets_go_costs_a_waiter_its_timeout_only(tmp_path: Path) -> None:
    holder = WritersLock(str(tmp_path / "m.sqlite3"), timeout=5.0)
    waiter = WritersLock(str(tmp_path / "m.sqlite3"), timeout=0.2)
    assert holder.acquire()
    started = time.monotonic()
    assert waiter.acquire() is False  # SQLite's own lock and busy_timeout decide from here
    assert 0.2 <= time.monotonic() - started < 3.0
    holder.release()
    assert waiter.acquire()
    waiter.release()
    holder.close()
    waiter.close()


def test_a_lock_file_that_cannot_be_made_leaves_the_turn_to_sqlite(tmp_path: Path) -> None:
    lock = WritersLock(str(tmp_path / "no-such-folder" / "m.sqlite3"), timeout=1.0)
    assert lock.acquire() is False  # no exception: the writer thread must not die of it
    lock.release()
    lock.close()
