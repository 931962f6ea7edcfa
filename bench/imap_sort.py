#!/usr/bin/env python3
"""SORT and THREAD over a big mailbox: wall seconds per command and the CPU seconds the imap and
mailstore processes spend on it, for SORT (ARRIVAL), SORT (SUBJECT), SORT (FROM DATE) and THREAD
REFERENCES (RFC 5256) over every message of a mailbox of --messages (10,000) messages.

Not a test: it asserts nothing. mailstack as deployed (a mailstore process and an imap process, as
bench/imap_load.py starts them). The messages have realistic headers: subjects with "Re:"/"Fwd:"
and list tags, threads of up to 8 replies linked by References, a few encoded words.

    .venv/bin/python bench/imap_sort.py [--messages 10000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.cpu import process_cpu as cpu_seconds
from bench.imap_load import PASSWORD, Client, connect, start_mailstack

COMMANDS = {
    "SORT (ARRIVAL)": b"SORT (ARRIVAL) UTF-8 ALL",
    "SORT (SUBJECT)": b"SORT (SUBJECT) UTF-8 ALL",
    "SORT (FROM DATE)": b"SORT (FROM DATE) UTF-8 ALL",
    "THREAD REFERENCES": b"THREAD REFERENCES UTF-8 ALL",
}
APPEND_BATCH = 200  # APPENDs in flight at once (LITERAL+)


def message(n: int, rng: random.Random) -> bytes:
    thread, depth = divmod(n, 8)
    subject = f"topic {thread} " + rng.choice(["", "[list] ", "=?utf-8?q?caf=C3=A9?= "])
    refs = " ".join(f"<{thread}.{d}@bench>" for d in range(depth))
    head = [
        f"From: User {rng.randrange(500)} <user{rng.randrange(500)}@example.org>",
        f"To: list{rng.randrange(20)}@example.org",
        f"Subject: {'Re: ' * min(depth, 2)}{subject}",
        f"Date: {rng.randrange(1, 28)} Mar 2025 {rng.randrange(24):02d}:{rng.randrange(60):02d}:00 +0100",
        f"Message-ID: <{thread}.{depth}@bench>",
    ]
    if refs:
        head.append(f"References: {refs}")
    body = "line of text\r\n" * rng.randrange(2, 40)
    return ("\r\n".join(head) + "\r\n\r\n" + body).encode()


async def fill(client: Client, count: int) -> None:
    """APPENDs pipelined with non-synchronizing literals (RFC 7888), APPEND_BATCH at a time."""
    rng = random.Random(5256)
    for start in range(0, count, APPEND_BATCH):
        tags = []
        for n in range(start, min(count, start + APPEND_BATCH)):
            data = message(n, rng)
            tag = b"f%d" % n
            tags.append(tag)
            client.writer.write(tag + b" APPEND INBOX () {%d+}\r\n" % len(data) + data + b"\r\n")
        await client.writer.drain()
        pending = set(tags)
        while pending:
            line = await client.reader.readline()
            tag = line.split(b" ", 1)[0]
            if tag in pending:
                if b" OK " not in line:
                    raise RuntimeError(line.decode(errors="replace"))
                pending.discard(tag)


Timings = dict[str, list[tuple[float, ...]]]  # command -> (wall, imap CPU, mailstore CPU) per round


async def run(port: int, user: str, pids: dict[str, int], count: int, rounds: int) -> Timings:
    client = await connect(port)
    await client.command(f'LOGIN {user} "{PASSWORD}"'.encode())
    started = time.monotonic()
    await fill(client, count)
    print(f"filled {count} messages in {time.monotonic() - started:.1f} s")
    await client.command(b"SELECT INBOX")
    results: Timings = {name: [] for name in COMMANDS}
    for _ in range(rounds):
        for name, command in COMMANDS.items():
            cpu = {p: cpu_seconds(pid) for p, pid in pids.items()}
            started = time.perf_counter()
            answer = await client.command(command)
            wall = time.perf_counter() - started
            assert answer.count(b" ") >= count // 8, "an answer with every message"
            results[name].append((wall, *(cpu_seconds(pid) - cpu[p] for p, pid in pids.items())))
    client.writer.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store, proc, port, users = start_mailstack(Path(tmp), 1)
        assert store.proc is not None
        pids = {"imap": proc.pid, "mailstore": store.proc.pid}
        try:
            time.sleep(0.5)
            results = asyncio.run(run(port, users[0], pids, args.messages, args.rounds))
        finally:
            proc.terminate()
            proc.wait(10)
            store.stop()
    print(f"{args.messages} messages, median of {args.rounds} rounds")
    print(f"  {'command':20s} {'wall s':>8s} {'imap CPU s':>11s} {'mailstore CPU s':>16s}")
    for name, values in results.items():
        wall, imap, mailstore = (statistics.median(v[i] for v in values) for i in range(3))
        print(f"  {name:20s} {wall:8.3f} {imap:11.3f} {mailstore:16.3f}")


if __name__ == "__main__":
    main()
