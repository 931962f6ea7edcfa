"""The blob contract in memory (unit tests' store)."""

from __future__ import annotations

import pytest

from tests.contract.blob_contract import BlobStoreContract


class TestMemoryBlobStore(BlobStoreContract):
    @pytest.fixture
    def blob_url(self) -> str:
        return "memory://"
