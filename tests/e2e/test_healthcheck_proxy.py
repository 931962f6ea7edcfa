"""The container health check with MAILSTACK_PROXY_PROTOCOL=true (issue 17): 127.0.0.1 is a trusted
proxy by default, so a check that spoke SMTP to the mail port without a PROXY header got no
greeting and marked a healthy container unhealthy. `mailstack healthcheck` asks /ready instead:
it passes while `mailstack serve` runs, and fails once it has stopped."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.serve_process import Served, running_serve, stop

pytestmark = pytest.mark.slow


def healthcheck(served: Served, *names: str) -> subprocess.CompletedProcess[str]:
    """What Docker runs: `mailstack healthcheck` with the container's environment."""
    return subprocess.run(
        [sys.executable, "-m", "mailstack", "healthcheck", *names],
        env=served.env, capture_output=True, text=True, timeout=30,
    )  # fmt: skip


def test_healthcheck_passes_with_proxy_protocol_on_and_fails_when_stopped(tmp_path: Path) -> None:
    with running_serve(tmp_path, {"MAILSTACK_PROXY_PROTOCOL": "true"}) as served:
        # The mail port now waits for a PROXY header from 127.0.0.1: a greeting check would fail.
        with socket.create_connection(("127.0.0.1", served.ports["smtp"]), timeout=10) as conn:
            conn.settimeout(1.0)
            with pytest.raises(TimeoutError):
                conn.recv(100)
        for names in ((), ("smtp",), ("mailstore", "smtp", "imap", "pop3")):
            result = healthcheck(served, *names)
            assert result.returncode == 0, result.stderr
        stop(served.proc)
        result = healthcheck(served, "smtp", "imap")
        assert result.returncode == 1
        assert result.stderr.startswith("mailstack healthcheck: smtp, imap: ") and result.stderr.count("\n") == 1
