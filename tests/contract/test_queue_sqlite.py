"""The queue contract on SQLite, beside the embedded metadata store."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.contract.queue_contract import QueueStoreContract


class TestSqliteQueueStore(QueueStoreContract):
    @pytest.fixture
    def metadata_url(self, tmp_path: Path) -> str:
        return f"sqlite://{tmp_path / 'metadata.db'}"
