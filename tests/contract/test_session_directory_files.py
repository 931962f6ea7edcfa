"""The session directory contract for `mailstack serve`'s worker processes: files in a folder of the
data dir (ADR 0043)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from mailstack.storage.sessions.files import FileSessionDirectory

from tests.contract.session_directory_contract import SessionDirectoryContract


class TestFileSessionDirectory(SessionDirectoryContract):
    @pytest.fixture
    async def directory(self, tmp_path: Path) -> AsyncIterator[FileSessionDirectory]:
        directory = FileSessionDirectory(tmp_path / "sessions")
        yield directory
        await directory.close()
