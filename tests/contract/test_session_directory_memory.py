"""The session directory contract in the mailstore's memory (one mailstore process)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from mailstack.storage.sessions.memory import MemorySessionDirectory

from tests.contract.session_directory_contract import SessionDirectoryContract


class TestMemorySessionDirectory(SessionDirectoryContract):
    @pytest.fixture
    async def directory(self) -> AsyncIterator[MemorySessionDirectory]:
        directory = MemorySessionDirectory()
        yield directory
        await directory.close()
