"""The shared real-client proofs (../shared/clients/run_all.sh: curl, swaks, fetchmail, mbsync,
mutt, getmail, Python stdlib) against `mailstack serve`, all-in-one, as a user would run it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from mailstack.services.common.config import env_name

from tests.fixtures.ports import free_port

pytestmark = pytest.mark.slow


def _clients_dir() -> Path | None:
    """The workplace's shared client scripts: MAILSTACK_SHARED_CLIENTS, ../shared/clients beside
    the checkout, or /work/shared/clients (a CI clone may live elsewhere)."""
    candidates = [os.environ.get("MAILSTACK_SHARED_CLIENTS", "")]
    candidates += [str(Path(__file__).resolve().parents[3] / "shared" / "clients"), "/work/shared/clients"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "run_all.sh").exists():
            return Path(candidate)
    return None


CLIENTS = _clients_dir()
PORTS = ["mailstore_listen", "smtp_port", "submission_port", "submissions_port", "lmtp_port", "imap_port",
         "imaps_port", "pop3_port", "pop3s_port"]  # fmt: skip


def test_every_shared_client_check_passes(tmp_path: Path) -> None:
    if CLIENTS is None:
        # Not part of this repository: each client is also driven by our own tests
        # (test_smtp_clients, test_imap_clients, test_pop3_clients); this is the independent check.
        pytest.skip("shared client scripts not found (set MAILSTACK_SHARED_CLIENTS)")
    ports = {name: free_port() for name in PORTS}
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILSTACK_")}
    env.update({env_name(name): str(port) for name, port in ports.items()})
    mailstore = f"127.0.0.1:{ports['mailstore_listen']}"
    env.update(
        {
            env_name("mailstore_listen"): mailstore,
            env_name("mailstore_addr"): mailstore,
            env_name("send_listen"): f"127.0.0.1:{free_port()}",
            env_name("data_dir"): str(tmp_path / "data"),
            env_name("allow_plaintext_auth"): "true",  # the independent checker logs in over plain IMAP
        }
    )
    # getmail delivers as nobody (it refuses root): its Maildir must be reachable from /tmp down,
    # and pytest's tmp_path parents are private.
    work = Path(tempfile.mkdtemp(prefix="mailstack-clients-"))
    os.chmod(work, 0o777)
    log = (tmp_path / "serve.log").open("wb")
    serve = subprocess.Popen(
        [sys.executable, "-m", "mailstack", "serve"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        cert = tmp_path / "data" / "tls" / "cert.pem"
        add = None
        for _ in range(100):
            add = subprocess.run(
                [sys.executable, "-m", "mailstack", "user", "add", "u4@example.test", "--password-stdin"],
                input=b"Secret123\n", env=env, capture_output=True,
            )  # fmt: skip
            if add.returncode == 0 and cert.exists():
                break
            time.sleep(0.2)
        assert add is not None and add.returncode == 0, add and add.stderr
        client_env = dict(env)
        client_env.update(
            HOST="127.0.0.1", TLS_HOST="localhost", USER="u4", PASS="Secret123", DOMAIN="example.test",
            CA_CERT=str(cert), WORK=str(work),
            SMTP_PORT=str(ports["smtp_port"]), SUBMISSION_PORT=str(ports["submission_port"]),
            SMTPS_PORT=str(ports["submissions_port"]), IMAP_PORT=str(ports["imap_port"]),
            IMAPS_PORT=str(ports["imaps_port"]), POP3_PORT=str(ports["pop3_port"]), POP3S_PORT=str(ports["pop3s_port"]),
        )  # fmt: skip
        run = subprocess.run(
            ["bash", str(CLIENTS / "run_all.sh")], env=client_env, capture_output=True, text=True, timeout=600
        )
        out = run.stdout + run.stderr
        summary = re.findall(r"^(\d+) passed, (\d+) failed", out, re.M)
        failures = "\n".join(line for line in out.splitlines() if line.startswith("FAIL"))
        assert summary and summary[-1][1] == "0" and run.returncode == 0, failures or out[-3000:]
        assert int(summary[-1][0]) >= 50, out[-3000:]
    finally:
        shutil.rmtree(work, ignore_errors=True)
        serve.terminate()
        try:
            serve.wait(20)
        except subprocess.TimeoutExpired:
            serve.kill()
        log.close()
