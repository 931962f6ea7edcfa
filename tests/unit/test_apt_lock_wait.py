"""Every apt-get the scripts run waits for the dpkg lock instead of giving up at once: a freshly
booted Debian machine runs unattended-upgrades, which holds the lock for minutes."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"|\'[^\']*\'')  # messages that only name the command
CALL = re.compile(r"\bapt-get\b(?P<rest>.*)")
WAIT = re.compile(r"^\s+-o\s+DPkg::Lock::Timeout=(?P<seconds>\d+)\s")


def shell_files() -> list[Path]:
    files = [*ROOT.glob("scripts/**/*.sh"), *ROOT.glob("Dockerfile*"), *ROOT.glob(".github/**/*.y*ml")]
    return sorted(f for f in files if f.is_file())


def apt_get_calls(path: Path) -> list[tuple[int, str]]:
    """(line number, what follows `apt-get`) of each apt-get run outside a quoted message or comment."""
    calls = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        code = QUOTED.sub('""', line.split(" #", 1)[0])
        if code.lstrip().startswith("#"):
            continue
        calls += [(number, match["rest"]) for match in CALL.finditer(code)]
    return calls


def test_every_apt_get_waits_for_the_dpkg_lock() -> None:
    calls = {f"{path.relative_to(ROOT)}:{n}": rest for path in shell_files() for n, rest in apt_get_calls(path)}
    assert len(calls) >= 4  # bootstrap.sh and install_clients.sh: update and install each
    for where, rest in calls.items():
        wait = WAIT.match(rest)
        assert wait, f"{where}: apt-get without -o DPkg::Lock::Timeout=SECONDS"
        assert int(wait["seconds"]) >= 300, f"{where}: waits only {wait['seconds']} s"


def test_the_check_sees_a_call_without_the_option(tmp_path: Path) -> None:
    text = (ROOT / "scripts" / "install_clients.sh").read_text()
    probe = tmp_path / "install_clients.sh"
    probe.write_text(text.replace("apt-get -o DPkg::Lock::Timeout=600 update", "apt-get update"))
    assert [rest for _, rest in apt_get_calls(probe) if not WAIT.match(rest)] == [" update -qq"]
