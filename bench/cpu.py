"""CPU time of server processes, from /proc (Linux): what a benchmark divides by its operations.

`process_cpu` is one process's own user + system time. `tree_cpu` is a whole process tree's: each
live process's own time plus what its reaped children used (cutime + cstime), so a forking server
such as Dovecot, whose per-connection processes come and go, is counted whole as long as its master
stays up.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterable
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the command name (field 3 onwards)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def process_cpu(pid: int) -> float:
    fields = _stat(pid)
    return (int(fields[11]) + int(fields[12])) / _TICK


def processes_cpu(pids: Iterable[int]) -> float:
    return sum(process_cpu(pid) for pid in pids)


def _children() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int(_stat(int(entry.name))[1])
            except (OSError, IndexError, ValueError):
                continue  # gone meanwhile
            out.setdefault(parent, []).append(int(entry.name))
    return out


def tree_cpu(root: int) -> float:
    """utime + stime + cutime + cstime over the live tree below (and including) root."""
    children = _children()
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        try:
            fields = _stat(pid)
        except OSError:
            continue
        total += sum(int(f) for f in fields[11:15]) / _TICK
        todo.extend(children.get(pid, []))
    return total


def dovecot_master(peers_dir: str | Path) -> int:
    """The Dovecot master's pid of a PEERS_KIT/start.sh PEER_DIR; refuses a stale pid file (the
    peers' ports are fixed: another PEER_DIR's Dovecot may be the one answering, whose CPU would
    then be counted as 0)."""
    pid = int((Path(peers_dir) / "run" / "dovecot" / "master.pid").read_text().split()[0])
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        command = []
    if not command or b"dovecot" not in command[0] or str(Path(peers_dir)).encode() not in b" ".join(command):
        raise SystemExit(f"{peers_dir}: its Dovecot (pid {pid}) is not running; is another PEER_DIR's?")
    return pid


def py_spy() -> str:
    """py-spy beside this Python (a venv's) or on PATH; '' when neither has it."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy") or ""
