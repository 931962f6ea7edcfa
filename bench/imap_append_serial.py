#!/usr/bin/env python3
"""APPEND as imapsync sends it: one message at a time, each with a synchronising literal (the
client waits for "+" before the message, then for the tagged OK before the next), into
mailstack and into a private Dovecot, same messages, same run (issue 16). Not a test.

    .venv/bin/python bench/imap_append_serial.py [--messages 300] [--profile OUT.txt]

With --profile, py-spy (when installed) samples the mailstack process during its run (wall
clock, idle threads included) and writes the collapsed stacks to OUT.txt, then prints the
functions holding the most samples.
"""

from __future__ import annotations

import argparse
import collections
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.cpu import py_spy
from tests.e2e.migration_support import PASSWORD, MailstackServer, imap_login, make_message, random_flags
from tests.fixtures.dovecot_server import DovecotServer


def serial_appends(port: int, user: str, messages: list[tuple[list[str], bytes]]) -> float:
    """imaplib's APPEND, as imapsync's Mail::IMAPClient does it: seconds for all."""
    conn = imap_login(port, user)
    try:
        start = time.perf_counter()
        for flags, data in messages:
            status, answer = conn.append("INBOX", "(" + " ".join(flags) + ")", None, data)
            if status != "OK":
                raise RuntimeError(f"APPEND refused: {answer!r}")
        return time.perf_counter() - start
    finally:
        conn.logout()


def raw_appends(port: int, user: str, messages: list[bytes], nodelay: bool, joined: bool) -> tuple[float, float]:
    """The same over a raw socket: (ms from command to "+", ms from literal to tagged OK) per
    APPEND. nodelay: TCP_NODELAY on the client; joined: the literal and its CRLF in one write
    (imaplib writes them apart, so a client without TCP_NODELAY holds the CRLF back under Nagle's
    algorithm until the server ACKs the literal)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    if nodelay:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    lines = sock.makefile("rb")
    lines.readline()
    sock.sendall(f"a LOGIN {user} {PASSWORD}\r\n".encode())
    while not lines.readline().startswith(b"a "):
        pass
    to_plus = to_ok = 0.0
    for i, data in enumerate(messages):
        t0 = time.perf_counter()
        sock.sendall(f"t{i} APPEND INBOX {{{len(data)}}}\r\n".encode())
        if not lines.readline().startswith(b"+"):
            raise RuntimeError("no continuation")
        t1 = time.perf_counter()
        if joined:
            sock.sendall(data + b"\r\n")
        else:
            sock.sendall(data)
            sock.sendall(b"\r\n")
        while not lines.readline().startswith(f"t{i} OK".encode()):
            pass
        to_plus, to_ok = to_plus + t1 - t0, to_ok + time.perf_counter() - t1
    sock.close()
    return to_plus / len(messages) * 1000, to_ok / len(messages) * 1000


def top_frames(collapsed: Path, count: int = 25) -> list[tuple[str, float]]:
    """Inclusive share of samples per function (each counted once per stack)."""
    totals: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in collapsed.read_text(errors="replace").splitlines():
        stack, _, number = line.rpartition(" ")
        if not number.isdigit():
            continue
        samples += int(number)
        for frame in set(stack.split(";")):
            totals[frame] += int(number)
    return [(frame, n / samples) for frame, n in totals.most_common(count)] if samples else []


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--profile", type=Path)
    args = parser.parse_args()
    rng = random.Random(19)
    bodies = [make_message(rng, n, "INBOX").replace(b"\n", b"\r\n") for n in range(args.messages)]
    messages = [(random_flags(rng), body) for body in bodies]
    dovecot = DovecotServer()
    dovecot.add_user("target", PASSWORD)
    work = Path(tempfile.mkdtemp(prefix="mailstack-bench-append-"))
    mailstack = MailstackServer(work / "mailstack")
    spy: subprocess.Popen[bytes] | None = None
    try:
        dovecot.start()
        mailstack.start()
        account = "target@example.test"
        added = mailstack.cli("user", "add", account, "--password-stdin", stdin=PASSWORD + "\n")
        if added.returncode != 0:
            raise RuntimeError(added.stderr)
        if args.profile is not None and mailstack.proc is not None and py_spy():
            spy = subprocess.Popen(
                [py_spy(), "record", "--idle", "--subprocesses", "--format", "raw", "--rate", "200",
                 "-o", str(args.profile), "--pid", str(mailstack.proc.pid)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            time.sleep(1.0)
        ours = serial_appends(mailstack.imap_port, account, messages)
        if spy is not None:
            spy.send_signal(2)  # SIGINT: py-spy writes its file and exits
            spy.wait(60)
        theirs = serial_appends(dovecot.port_imap, "target", messages)
        n = len(messages)
        print(f"mailstack {n / ours:7.1f} APPEND/s ({ours / n * 1000:.1f} ms each)")
        print(f"dovecot   {n / theirs:7.1f} APPEND/s ({theirs / n * 1000:.1f} ms each)")
        print(f"mailstack / dovecot = {theirs / ours:.2f}")
        for nodelay, joined in ((False, False), (True, False), (True, True)):
            mine = raw_appends(mailstack.imap_port, account, bodies, nodelay, joined)
            other = raw_appends(dovecot.port_imap, "target", bodies, nodelay, joined)
            print(f"raw nodelay={nodelay!s:5} joined={joined!s:5}: to '+' / literal to OK, ms: "
                  f"mailstack {mine[0]:.1f} / {mine[1]:.1f}, dovecot {other[0]:.1f} / {other[1]:.1f}")  # fmt: skip
        if spy is not None and args.profile is not None and args.profile.exists():
            for frame, share in top_frames(args.profile):
                print(f"{share:6.1%}  {frame}")
    finally:
        if spy is not None and spy.poll() is None:
            spy.kill()
        mailstack.stop()
        dovecot.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
