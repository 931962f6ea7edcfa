"""The queue contract on a real PostgreSQL (tests/fixtures/postgres_server.py)."""

from __future__ import annotations

import pytest

from tests.contract.queue_contract import QueueStoreContract


class TestPostgresQueueStore(QueueStoreContract):
    @pytest.fixture
    def metadata_url(self, postgres_url: str) -> str:
        return postgres_url
