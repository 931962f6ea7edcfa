"""The event bus contract in one process (the embedded default)."""

from __future__ import annotations

import pytest
from mailstack.storage.events.memory import MemoryEventBus

from tests.contract.event_bus_contract import EventBusContract, NewBus


class TestMemoryEventBus(EventBusContract):
    @pytest.fixture
    def new_bus(self) -> NewBus:
        return MemoryEventBus
