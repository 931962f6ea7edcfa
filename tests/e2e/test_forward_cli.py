"""`mailstack forward set|list|delete` against `mailstack serve` (all-in-one, zero configuration
but a data folder, ports and the SRS secret): exit codes and one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.ports import free_port

pytestmark = pytest.mark.slow

ALICE = "alice@example.test"
PORTS = ("SMTP", "SUBMISSION", "SUBMISSIONS", "IMAP", "IMAPS", "POP3", "POP3S", "LMTP")


def mailstack(env: dict[str, str], *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mailstack", *args], env=env, input=stdin, capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def serving(tmp_path: Path) -> Iterator[dict[str, str]]:
    listen = f"127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILSTACK_")}
    env.update(
        MAILSTACK_DATA_DIR=str(tmp_path / "data"),
        MAILSTACK_MAILSTORE_LISTEN=listen,
        MAILSTACK_MAILSTORE_ADDR=listen,
        MAILSTACK_SEND_LISTEN=f"127.0.0.1:{free_port()}",
        MAILSTACK_ORPHAN_SWEEP_SECONDS="0",
        MAILSTACK_PASSWORD_SCRYPT_LOG_N="10",
        MAILSTACK_SRS_SECRET="cli-test-secret",
        **{f"MAILSTACK_{name}_PORT": str(free_port()) for name in PORTS},
    )
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "mailstack", "serve"], env=env, stdout=log,
                                stderr=subprocess.STDOUT)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while mailstack(env, "user", "list").returncode != 0:
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
        yield env
    finally:
        proc.terminate()
        proc.wait(20)


def test_forward_commands(serving: dict[str, str]) -> None:
    env = serving
    assert mailstack(env, "user", "add", ALICE, "--password-stdin", stdin="pw-alice-123\n").returncode == 0
    done = mailstack(env, "forward", "set", ALICE, "a@remote.test", "b@remote.test", "--keep-copy")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{ALICE} -> a@remote.test, b@remote.test (a copy kept)"
    listed = mailstack(env, "forward", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == [
        {"address": ALICE, "targets": ["a@remote.test", "b@remote.test"], "keep_copy": True}
    ]
    table = mailstack(env, "forward", "list").stdout
    assert "ADDRESS" in table and "a@remote.test, b@remote.test" in table
    # Refusals: one line naming the problem, exit 1.
    for args, why in (
        (("forward", "set", "nobody@example.test", "a@remote.test"), "not an account or alias"),
        (("forward", "set", ALICE, ALICE), "not an outside address"),
    ):
        refused = mailstack(env, *args)
        assert refused.returncode == 1 and why in refused.stderr, refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    deleted = mailstack(env, "forward", "delete", ALICE)
    assert deleted.returncode == 0 and mailstack(env, "forward", "list", "--json").stdout.strip() == "[]"
