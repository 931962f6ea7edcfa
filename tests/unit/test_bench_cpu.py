"""bench/cpu.py: a benchmark divides by the CPU it reads here, so a wrong process must fail loudly
instead of reading as 0 ms per operation (the peers' ports are fixed: a second PEER_DIR's Dovecot
may be the one answering)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.cpu import dovecot_master, process_cpu, py_spy, tree_cpu


def _pid_file(peer_dir: Path, pid: int) -> None:
    (peer_dir / "run" / "dovecot").mkdir(parents=True)
    (peer_dir / "run" / "dovecot" / "master.pid").write_text(f"{pid}\n")


def test_a_stale_dovecot_pid_file_is_refused(tmp_path: Path) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    _pid_file(tmp_path, gone.pid)
    with pytest.raises(SystemExit, match="not running"):
        dovecot_master(tmp_path)


def test_a_pid_that_is_not_this_peer_dirs_dovecot_is_refused(tmp_path: Path) -> None:
    _pid_file(tmp_path, os.getpid())  # alive, but a Python process
    with pytest.raises(SystemExit, match="not running"):
        dovecot_master(tmp_path)


def test_cpu_of_a_busy_child_is_counted_in_its_tree() -> None:
    before = tree_cpu(os.getpid()) - process_cpu(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "sum(i * i for i in range(5_000_000))"])
    child.wait()
    # a finished child's CPU is its parent's cutime once waited for: the tree of this process holds it
    assert tree_cpu(os.getpid()) - process_cpu(os.getpid()) - before >= 0.1


def test_py_spy_is_found_beside_this_python_without_path(monkeypatch: pytest.MonkeyPatch) -> None:
    # a bench run as .venv/bin/python, with the venv's bin not on PATH, still finds the venv's py-spy
    monkeypatch.setenv("PATH", "/nonexistent")
    beside = Path(sys.executable).parent / "py-spy"
    assert py_spy() == (str(beside) if beside.exists() else "")
