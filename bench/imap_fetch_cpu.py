#!/usr/bin/env python3
"""Frontend CPU for IMAP FETCH of large bodies: the CPU seconds the `mailstack serve imap` process
spends while one client fetches large messages (BODY.PEEK[] one by one, then 1:* at once).

Not a test. mailstack only, as deployed (a mailstore process and an imap process, as
bench/imap_load.py starts them). Run it before and after a change to the IMAP writer:

    .venv/bin/python bench/imap_fetch_cpu.py [--messages 20] [--size-mb 2] [--rounds 5]
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
from bench.imap_load import PASSWORD, Client, connect, start_mailstack


def message(n: int, size: int) -> bytes:
    head = f"From: a@test\r\nTo: u@test\r\nSubject: large {n}\r\nMessage-ID: <{n}@cpu>\r\n\r\n".encode()
    line = b"z" * 76 + b"\r\n"
    return head + line * (size // len(line))


async def run(port: int, user: str, pid: int, count: int, size: int, rounds: int) -> dict[str, list[float]]:
    client: Client = await connect(port)
    await client.command(f'LOGIN {user} "{PASSWORD}"'.encode())
    for n in range(count):
        await client.command(b"APPEND INBOX ()", message(n, size))
    await client.command(b"SELECT INBOX")
    out: dict[str, list[float]] = {"one by one": [], "1:* at once": []}
    for _ in range(rounds):
        start = process_cpu(pid)
        for n in range(1, count + 1):
            await client.command(b"FETCH %d (BODY.PEEK[])" % n)
        out["one by one"].append(process_cpu(pid) - start)
        start = process_cpu(pid)
        await client.command(b"FETCH 1:* (BODY.PEEK[])")
        out["1:* at once"].append(process_cpu(pid) - start)
    client.writer.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=20)
    parser.add_argument("--size-mb", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    size = int(args.size_mb * 1024 * 1024)
    with tempfile.TemporaryDirectory() as tmp:
        store, proc, port, users = start_mailstack(Path(tmp), 1)
        try:
            time.sleep(0.5)
            results = asyncio.run(run(port, users[0], proc.pid, args.messages, size, args.rounds))
        finally:
            proc.terminate()
            proc.wait(10)
            store.stop()
    megabytes = args.messages * size / 1024 / 1024
    print(f"{args.messages} messages of {args.size_mb} MB ({megabytes:.0f} MB per pass), {args.rounds} rounds")
    for name, values in results.items():
        median = statistics.median(values)
        print(f"  {name:12s} imap process CPU median {median:.3f} s  ({median / megabytes * 1000:.2f} ms per MB)")


if __name__ == "__main__":
    main()
