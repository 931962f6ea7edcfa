"""The SQL quota contract on each metadata backend: SQLite and a real PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.contract.quota_contract import SqlQuotaContract


class TestSqlQuotaOnSqlite(SqlQuotaContract):
    @pytest.fixture
    def metadata_url(self, tmp_path: Path) -> str:
        return f"sqlite://{tmp_path / 'm.sqlite3'}"


class TestSqlQuotaOnPostgres(SqlQuotaContract):
    @pytest.fixture
    def metadata_url(self, postgres_url: str) -> str:
        return postgres_url
