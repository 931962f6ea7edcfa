#!/usr/bin/env python3
"""Server CPU per IMAP SELECT, per process: the mailstore's and the `mailstack serve imap` one's,
while one client re-selects a mailbox of N messages (the mailbox index's path: the first SELECT
lists the mailbox, the next ones ask only for what changed).

Not a test. mailstack only, as deployed (a mailstore process and an imap process, as
bench/imap_load.py starts them):

    .venv/bin/python bench/imap_select_cpu.py [--messages 100] [--selects 200] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.cpu import process_cpu
from bench.imap_load import PASSWORD, Client, connect, messages, start_mailstack


async def run(
    port: int, user: str, pids: tuple[int, int], count: int, selects: int, rounds: int
) -> list[tuple[float, float]]:
    """(mailstore, imap) CPU milliseconds per SELECT, one pair per round."""
    client: Client = await connect(port)
    await client.command(f'LOGIN {user} "{PASSWORD}"'.encode())
    for data in messages(count):
        await client.command(b"APPEND INBOX ()", data)
    await client.command(b"SELECT INBOX")
    out = []
    for _ in range(rounds):
        before = [process_cpu(p) for p in pids]
        for _ in range(selects):
            await client.command(b"SELECT INBOX")
        after = [process_cpu(p) for p in pids]
        store_ms, imap_ms = ((a - b) * 1000 / selects for a, b in zip(after, before, strict=True))
        out.append((store_ms, imap_ms))
    client.writer.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=100)
    parser.add_argument("--selects", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store, proc, port, users = start_mailstack(Path(tmp), 1)
        assert store.proc is not None
        try:
            time.sleep(0.5)
            results = asyncio.run(
                run(port, users[0], (store.proc.pid, proc.pid), args.messages, args.selects, args.rounds)
            )
        finally:
            proc.terminate()
            proc.wait(10)
            store.stop()
    store_ms = statistics.median(r[0] for r in results)
    imap_ms = statistics.median(r[1] for r in results)
    print(f"SELECT of {args.messages} messages, {args.selects} x {args.rounds} rounds, medians, CPU ms per SELECT:")
    print(f"  mailstore {store_ms:.3f}  imap {imap_ms:.3f}  total {store_ms + imap_ms:.3f}")


if __name__ == "__main__":
    main()
