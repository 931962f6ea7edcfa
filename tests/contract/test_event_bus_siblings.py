"""The event bus contract for `mailstack serve`'s worker processes (ADR 0043): each bus made is the
next worker of four over one folder, so a test's subscriber and publisher may be different workers."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from mailstack.storage.events.siblings import SiblingEventBus

from tests.contract.event_bus_contract import EventBusContract, NewBus

WORKERS = 4


class TestSiblingEventBus(EventBusContract):
    @pytest.fixture
    def new_bus(self, tmp_path: Path) -> NewBus:
        numbers = itertools.count()

        def make(**options: int) -> SiblingEventBus:
            return SiblingEventBus(tmp_path, next(numbers) % WORKERS, WORKERS, **options)

        return make
