"""What MAILSTACK_WORKERS allows and what each worker changes in its settings (ADR 0043)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from mailstack.services.common.config import Settings
from mailstack.services.common.lifecycle import ServeError
from mailstack.services.common.setting_rules import AUTO_WORKERS_MAX, WORKERS
from mailstack.services.common.workers import check, worker_changes, worker_count


@pytest.mark.parametrize("value", ["1", "2", "64", "auto"])
def test_good_values(value: str) -> None:
    assert WORKERS(value) is None


@pytest.mark.parametrize("value", ["0", "65", "-1", "two", "", "2.5", "AUTO"])
def test_bad_values(value: str) -> None:
    assert WORKERS(value) is not None


def test_auto_is_the_cpu_count_within_bounds() -> None:
    count = worker_count(Settings(workers="auto"))
    assert 1 <= count <= AUTO_WORKERS_MAX
    assert count == min(os.cpu_count() or 1, AUTO_WORKERS_MAX)
    assert worker_count(Settings(workers="3")) == 3


def test_each_worker_shares_the_ports_and_gets_its_metrics_port_and_its_bus(tmp_path: Path) -> None:
    settings = Settings(data_dir=str(tmp_path), metrics_port=9100, workers="2")
    common, mailstore = worker_changes(settings, 1, 2)
    assert common == {"reuse_port": True, "metrics_port": 9101}
    assert mailstore == {"events_url": f"workers://{tmp_path.resolve()}/workers?worker=1&count=2"}


def test_with_redis_the_workers_use_it_as_replicas_do(tmp_path: Path) -> None:
    settings = Settings(data_dir=str(tmp_path), events_url="redis://127.0.0.1:6379/0", workers="2")
    assert worker_changes(settings, 0, 2) == ({"reuse_port": True}, {})


def test_a_data_folder_too_deep_for_the_sockets_is_refused(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 100)
    with pytest.raises(ServeError, match="too long a path"):
        check(Settings(data_dir=str(deep), workers="2"), [], 2)
