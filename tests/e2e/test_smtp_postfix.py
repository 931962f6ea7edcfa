"""Postfix (a private instance on loopback, relayhost = mailstack) delivers through mailstack to a local user.

The instance has its own config_directory, queue and log under a temporary
directory (like shared/peers/start.sh): the system's /etc/postfix is neither read
nor changed. Mail enters Postfix over SMTP and leaves for our inbound port with
opportunistic STARTTLS, as between real MTAs.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import smtplib
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.e2e.smtp_support import ALICE, require_tool, smtp_stack, without_trace
from tests.fixtures.ports import free_port

pytestmark = pytest.mark.slow

MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {dir}/spool
data_directory = {dir}/data
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
mail_owner = postfix
setgid_group = postdrop
maillog_file = {dir}/log/postfix.log
maillog_file_prefixes = {dir}/log
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = relay.test
mydomain = relay.test
myorigin = relay.test
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
relayhost = [127.0.0.1]:{relay_port}
smtp_tls_security_level = may
smtp_dns_support_level = disabled
smtpd_peername_lookup = no
notify_classes =
biff = no
"""

MASTER_CF = """\
127.0.0.1:{smtpd_port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
lmtp      unix  -       -       n       -       -       lmtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def _log_tail(directory: Path) -> str:
    try:
        return "\n".join((directory / "log" / "postfix.log").read_text(errors="replace").splitlines()[-30:])
    except OSError:
        return "(no log)"


def _master_pid(directory: Path) -> int | None:
    try:
        return int((directory / "spool" / "pid" / "master.pid").read_text().strip())
    except (OSError, ValueError):
        return None


@contextmanager
def private_postfix(relay_port: int, main_extra: str = "") -> Iterator[tuple[int, Path]]:
    """(smtpd port, instance dir) of a Postfix that relays everything to 127.0.0.1:relay_port
    (`main_extra` is appended to main.cf: later lines win, e.g. another transport)."""
    postfix = require_tool("postfix")
    # Under /tmp with mode 755: Postfix's unprivileged processes must reach the queue.
    directory = Path(tempfile.mkdtemp(prefix="mailstack-pf.", dir="/tmp"))
    os.chmod(directory, 0o755)
    smtpd_port = free_port()
    for sub in ("etc", "spool", "data", "log"):
        (directory / sub).mkdir(mode=0o755)
    shutil.chown(directory / "data", "postfix")
    (directory / "etc" / "main.cf").write_text(MAIN_CF.format(dir=directory, relay_port=relay_port) + main_extra)
    (directory / "etc" / "master.cf").write_text(MASTER_CF.format(smtpd_port=smtpd_port))
    config = str(directory / "etc")
    started = subprocess.run([postfix, "-c", config, "start"], capture_output=True, text=True, timeout=60, check=False)
    try:
        assert started.returncode == 0, (
            f"postfix start failed: {started.stdout}{started.stderr}\n{_log_tail(directory)}"
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with smtplib.SMTP("127.0.0.1", smtpd_port, timeout=5) as probe:
                    probe.noop()
                break
            except OSError:
                time.sleep(0.2)
        else:
            raise AssertionError(f"postfix smtpd did not listen:\n{_log_tail(directory)}")
        yield smtpd_port, directory
    finally:
        pid = _master_pid(directory)
        subprocess.run([postfix, "-c", config, "stop"], capture_output=True, timeout=60, check=False)
        deadline = time.monotonic() + 20
        while pid is not None and time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            time.sleep(0.1)
        if pid is not None and Path(f"/proc/{pid}").exists():
            os.kill(pid, signal.SIGKILL)  # only this instance's master, by its own pid file
        shutil.rmtree(directory, ignore_errors=True)


async def test_postfix_relays_through_mailstack_to_a_local_user(tmp_path: Path) -> None:
    async with smtp_stack(tmp_path) as stack:
        body = b"Hello through Postfix.\r\n.leading dot survives\r\n"
        message = b"From: sender@relay.test\r\nTo: " + ALICE.encode() + b"\r\nSubject: via postfix\r\n\r\n" + body
        with private_postfix(stack.ports["smtp"]) as (smtpd_port, directory):

            def submit() -> None:
                with smtplib.SMTP("127.0.0.1", smtpd_port, timeout=30) as s:
                    assert s.sendmail("sender@relay.test", [ALICE], message) == {}

            await asyncio.to_thread(submit)
            for _ in range(300):  # at most 60 s
                if await stack.count():
                    break
                await asyncio.sleep(0.2)
            assert await stack.count() == 1, f"not delivered within 60 s:\n{_log_tail(directory)}"
            log = _log_tail(directory)
        [stored] = await stack.inbox()
        # Our trace headers first, then Postfix's own Received line, then the message.
        rest = without_trace(stored)
        assert stored.startswith(b"Return-Path: <sender@relay.test>\r\nReceived: from relay.test ([127.0.0.1])")
        assert b"with ESMTPS id" in stored  # Postfix used STARTTLS towards us
        assert rest.startswith(b"Received: from ") and b"by relay.test (Postfix)" in rest
        assert rest.endswith(body) and b"Subject: via postfix\r\n" in rest
        assert "status=sent" in log and "250 2.0.0 Ok: queued as" in log
