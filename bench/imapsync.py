#!/usr/bin/env python3
"""imapsync into mailstack and into Dovecot, in the same run (issue 16: APPEND as a migration
target). Not a test.

A private Dovecot (tests/fixtures/dovecot_server.py) holds a source user filled with varied
messages in several folders (tests/e2e/migration_support.py) and an empty second user; mailstack
runs as `mailstack serve mailstore imap pop3`. Each round, imapsync copies the source into a
fresh mailstack account and into a fresh Dovecot user (which goes first alternates), timed; then
a second imapsync into each must copy nothing. Prints messages/s per target per round and the
medians, and exits 1 when a first pass did not copy everything or a second pass copied anything.

    .venv/bin/python bench/imapsync.py [--messages 200] [--rounds 3] [--imapsync PATH]

imapsync is not in Debian 12's main archive: point --imapsync at an installed one.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mailstack.cli.imap_source import parse_list
from tests.e2e.migration_support import PASSWORD, MailstackServer, imap_login, populate, quoted
from tests.fixtures.dovecot_server import DovecotServer

SOURCE = "source"
_TRANSFERRED = re.compile(r"Messages transferred\s*:\s*(\d+)")


def imapsync(binary: str, source: DovecotServer, port2: int, user2: str) -> tuple[float, int, str]:
    """(seconds, messages transferred, output) of one imapsync run, plaintext on 127.0.0.1 both sides."""
    args = [
        binary, "--host1", "127.0.0.1", "--port1", str(source.port_imap), "--user1", SOURCE,
        "--password1", PASSWORD, "--host2", "127.0.0.1", "--port2", str(port2), "--user2", user2,
        "--password2", PASSWORD, "--nossl1", "--nossl2", "--notls1", "--notls2", "--nolog",
        "--noreleasecheck", "--nofoldersizes", "--nofoldersizesatend", "--tmpdir", tempfile.gettempdir(),
    ]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True, timeout=3600)
    seconds = time.perf_counter() - start
    found = _TRANSFERRED.search(done.stdout)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"imapsync failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-2000:]}")
    return seconds, int(found[1]), done.stdout


def source_messages(dovecot: DovecotServer) -> int:
    conn = imap_login(dovecot.port_imap, SOURCE)
    try:
        total = 0
        for name, attrs in parse_list(conn.list('""', "*")[1]):
            if not attrs & {"\\noselect", "\\nonexistent"}:
                answer = conn.status(quoted(name), "(MESSAGES)")[1][0]
                assert isinstance(answer, bytes)
                total += int(answer.rsplit(b"MESSAGES ", 1)[1].rstrip(b")"))
        return total
    finally:
        conn.logout()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--imapsync", default=shutil.which("imapsync") or "")
    args = parser.parse_args()
    if not args.imapsync:
        print("imapsync not found: install it (not in Debian 12 main) and pass --imapsync PATH", file=sys.stderr)
        return 2
    dovecot = DovecotServer()
    dovecot.add_user(SOURCE, PASSWORD)
    for r in range(args.rounds):
        dovecot.add_user(f"copy{r}", PASSWORD)
    work = Path(tempfile.mkdtemp(prefix="mailstack-bench-imapsync-"))
    mailstack = MailstackServer(work / "mailstack")
    ok = True
    rates: dict[str, list[float]] = {"mailstack": [], "dovecot": []}
    try:
        dovecot.start()
        mailstack.start()
        populate(dovecot, SOURCE, args.messages)
        expected = source_messages(dovecot)
        print(f"source: {expected} messages")
        for r in range(args.rounds):
            account = f"copy{r}@example.test"
            added = mailstack.cli("user", "add", account, "--password-stdin", stdin=PASSWORD + "\n")
            if added.returncode != 0:
                raise RuntimeError(added.stderr)
            targets = [("mailstack", mailstack.imap_port, account), ("dovecot", dovecot.port_imap, f"copy{r}")]
            for name, port, user in targets if r % 2 == 0 else targets[::-1]:
                seconds, copied, _ = imapsync(args.imapsync, dovecot, port, user)
                _, again, _ = imapsync(args.imapsync, dovecot, port, user)
                rates[name].append(copied / seconds)
                print(f"round {r} {name:9} {copied} messages in {seconds:.1f} s = {copied / seconds:.1f}/s; "
                      f"second pass copied {again}")  # fmt: skip
                ok = ok and again == 0 and copied == expected
        for name, values in rates.items():
            print(f"{name:9} median {statistics.median(values):.1f} messages/s over {len(values)} rounds")
        if statistics.median(rates["dovecot"]) > 0:
            ratio = statistics.median(rates["mailstack"]) / statistics.median(rates["dovecot"])
            print(f"mailstack / dovecot = {ratio:.2f}")
    finally:
        mailstack.stop()
        dovecot.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
