#!/usr/bin/env python3
"""Server CPU per IMAP SELECT, per process, while one client re-selects a mailbox of N messages
(the mailbox index's path, ADR 0041: the first SELECT lists the mailbox, the next ones ask only
for what changed). Run it with MAILSTACK_IMAP_INDEX_MESSAGES=0 for the path without the index.

Not a test. mailstack only: as deployed (--shape split: a mailstore process and an imap process,
as bench/imap_load.py starts them; CPU of each) or all-in-one (--shape all: one `mailstack serve`
calling the mailstore in-process, ADR 0039):

    .venv/bin/python bench/imap_select_cpu.py [--messages 100] [--selects 200] [--rounds 3] [--shape split|all]
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
from bench.imap_load import PASSWORD, Client, all_in_one, connect, messages, split


async def run(port: int, user: str, pids: list[int], count: int, selects: int, rounds: int) -> list[list[float]]:
    """CPU milliseconds per SELECT of each process, one list per round."""
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
        out.append([(a - b) * 1000 / selects for a, b in zip(after, before, strict=True)])
    client.writer.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=100)
    parser.add_argument("--selects", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--shape", choices=("split", "all"), default="split", help="mailstack's processes")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        started = split(Path(tmp), 1) if args.shape == "split" else all_in_one(Path(tmp), 1, "auto")
        with started as (pids, port, users):
            time.sleep(0.5)
            results = asyncio.run(run(port, users[0], pids, args.messages, args.selects, args.rounds))
    names = ["mailstore", "imap"] if args.shape == "split" else ["mailstack serve"]
    medians = [statistics.median(r[i] for r in results) for i in range(len(names))]
    title = f"SELECT of {args.messages} messages, {args.selects} x {args.rounds} rounds, {args.shape}"
    print(f"{title}, median CPU ms per SELECT:")
    print("  " + "  ".join(f"{n} {m:.3f}" for n, m in zip(names, medians, strict=True)) + f"  total {sum(medians):.3f}")


if __name__ == "__main__":
    main()
