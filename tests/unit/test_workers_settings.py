"""What MAILSTACK_WORKERS allows and what each worker changes in its settings (ADR 0043)."""

from __future__ import annotations

import dataclasses
import os
import socket
from pathlib import Path

import pytest
from mailstack.services.common.config import Settings
from mailstack.services.common.lifecycle import ServeError
from mailstack.services.common.setting_rules import AUTO_WORKERS_MAX, WORKERS
from mailstack.services.common.workers import check, resolve, usable_cpus, worker_changes, worker_count


@pytest.mark.parametrize("value", ["1", "2", "64", "auto"])
def test_good_values(value: str) -> None:
    assert WORKERS(value) is None


@pytest.mark.parametrize("value", ["0", "65", "-1", "two", "", "2.5", "AUTO"])
def test_bad_values(value: str) -> None:
    assert WORKERS(value) is not None


def test_auto_is_the_default_and_the_usable_cpu_count_within_bounds() -> None:
    assert Settings().workers == "auto"  # ADR 0047
    count = worker_count(Settings(workers="auto"))
    assert 1 <= count <= AUTO_WORKERS_MAX
    assert count == min(len(os.sched_getaffinity(0)), usable_cpus(), AUTO_WORKERS_MAX)
    assert worker_count(Settings(workers="3")) == 3


@pytest.mark.parametrize(
    ("cpu_max", "cap"),
    [("max 100000\n", None), ("150000 100000\n", 2), ("50000 100000\n", 1), ("garbage", None), (None, None)],
)
def test_a_containers_cpu_quota_bounds_auto(tmp_path: Path, cpu_max: str | None, cap: int | None) -> None:
    # os.cpu_count() tells the host's CPUs; a container limited to 1.5 CPUs gets 2 workers, not 64
    path = tmp_path / "cpu.max"
    if cpu_max is not None:
        path.write_text(cpu_max)
    affinity = len(os.sched_getaffinity(0))
    assert usable_cpus(path) == (affinity if cap is None else min(affinity, cap))


def test_auto_settles_on_one_process_where_workers_cannot_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("mailstack.services.common.workers.usable_cpus", lambda: 4)
    auto = Settings(data_dir=str(tmp_path), workers="auto", metrics_port=0)
    assert resolve(auto, []) == (4, "")
    count, why = resolve(auto, ["imap"])
    assert count == 1 and "named services" in why
    count, why = resolve(dataclasses.replace(auto, blob_url="memory://"), [])
    assert count == 1 and "memory://" in why
    count, why = resolve(dataclasses.replace(auto, imap_port=0), [])
    assert count == 1 and "MAILSTACK_IMAP_PORT=0" in why
    # a metrics port + N taken: one process when starting; the healthcheck, asking about the serve
    # that holds those ports, does not probe them
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        busy = dataclasses.replace(auto, bind="127.0.0.1", metrics_port=port - 1)
        assert resolve(busy, [])[0] == 1
        assert resolve(busy, [], probe_ports=False) == (4, "")
    # a number is what the operator asked for: refused later in one line, never reduced
    assert resolve(Settings(data_dir=str(tmp_path), workers="3", blob_url="memory://"), []) == (3, "")


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
