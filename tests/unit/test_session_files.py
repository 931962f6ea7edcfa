"""The workers' session directory (storage/sessions/files.py, ADR 0043): what one worker's mailstore
records, every other worker's answers (`mailstack who`, `kick`), and it expires by itself."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest
from mailstack.storage.registry import open_session_directory
from mailstack.storage.sessions.base import MAX_SESSIONS_PER_REPORT, KickOrder, SessionRecord
from mailstack.storage.sessions.files import FileSessionDirectory


def record(account: str, started: float, frontend: str = "vm-1-a") -> SessionRecord:
    return SessionRecord(frontend, "imap", account, "192.0.2.1", True, started)


async def test_one_worker_reports_and_another_lists_and_kicks(tmp_path: Path) -> None:
    first, second = FileSessionDirectory(tmp_path), FileSessionDirectory(tmp_path)
    await first.report("vm-1-a", [record("ann@example.test", 2.0)], ttl=30)
    await second.report("vm-2-b", [record("bob@example.test", 1.0, "vm-2-b")], ttl=30)
    assert [s.account for s in await first.sessions()] == ["bob@example.test", "ann@example.test"]
    assert [s.account for s in await second.sessions("ann@example.test")] == ["ann@example.test"]
    order = KickOrder("ann@example.test", "", time.time())
    await second.kick(order, ttl=30)
    assert await first.kicks() == [order]
    await first.report("vm-1-a", [], ttl=30)  # a clean stop withdraws the list
    assert [s.account for s in await second.sessions()] == ["bob@example.test"]


async def test_lists_and_orders_expire(tmp_path: Path) -> None:
    directory = FileSessionDirectory(tmp_path)
    await directory.report("vm-1-a", [record("ann@example.test", 1.0)], ttl=0.05)
    await directory.kick(KickOrder("ann@example.test", "imap", time.time()), ttl=0.05)
    await asyncio.sleep(0.1)
    assert await directory.sessions() == []
    assert await directory.kicks() == []
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".json")]  # removed as they are found expired


async def test_a_stray_or_broken_file_is_skipped(tmp_path: Path) -> None:
    directory = FileSessionDirectory(tmp_path)
    (tmp_path / "report-broken.json").write_text("{not json")
    (tmp_path / "report-list.json").write_text("[1, 2]")
    await directory.report("vm-1-a", [record("ann@example.test", 1.0)], ttl=30)
    assert [s.account for s in await directory.sessions()] == ["ann@example.test"]


async def test_a_report_too_large_is_refused(tmp_path: Path) -> None:
    directory = FileSessionDirectory(tmp_path)
    with pytest.raises(ValueError):
        await directory.report("vm-1-a", [record("a@example.test", 1.0)] * (MAX_SESSIONS_PER_REPORT + 1), ttl=30)


def test_the_registry_puts_it_beside_the_workers_sockets(tmp_path: Path) -> None:
    directory = open_session_directory(f"workers://{tmp_path}?worker=0&count=2")
    assert isinstance(directory, FileSessionDirectory)
    assert directory.folder == tmp_path / "sessions"
