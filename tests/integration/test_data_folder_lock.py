"""One mailstore per SQLite data folder: a second is refused before it opens anything, and the
folder is free again once the first stops (or dies: the kernel drops an flock with its holder)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from mailstack.services.common.folder_lock import FolderInUse, FolderLock, lock_path
from mailstack.services.mailstore.server import MailstoreServer

from tests.fixtures.mailstore import running_mailstore, settings_for


async def test_a_second_mailstore_on_the_folder_is_refused_until_the_first_stops(tmp_path: Path) -> None:
    settings = settings_for(tmp_path / "data")
    async with running_mailstore(settings):
        second = MailstoreServer(settings)
        with pytest.raises(FolderInUse) as refused:
            await second.start()
        assert str(refused.value) == (
            f"data folder {(tmp_path / 'data').resolve()} is in use by another mailstore (pid {os.getpid()}): "
            f"stop it, or give this one its own MAILSTACK_DATA_DIR (lock file "
            f"{(tmp_path / 'data').resolve() / 'mailstore.lock'})"
        )
        assert second.address == "" and second.core is None  # it opened nothing, listens nowhere
    async with running_mailstore(settings) as (server, _):  # free again
        assert server.address


def test_the_lock_dies_with_its_holder(tmp_path: Path) -> None:
    path = tmp_path / "mailstore.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from mailstack.services.common.folder_lock import FolderLock; "
         "FolderLock(__import__('pathlib').Path(sys.argv[1])).acquire(); print('held', flush=True); time.sleep(60)",
         str(path)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with pytest.raises(FolderInUse, match=rf"\(pid {holder.pid}\)"):
            FolderLock(path).probe()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.communicate(timeout=10)
    FolderLock(path).probe()  # no stale lock after a crash


def test_postgresql_metadata_takes_no_lock() -> None:
    """Several mailstore replicas share one PostgreSQL database by design (ADR 0027)."""
    assert lock_path("postgresql://mailstack@db.internal/mail") is None
    assert lock_path("sqlite:///var/lib/mailstack/metadata.sqlite3") == Path("/var/lib/mailstack/mailstore.lock")
