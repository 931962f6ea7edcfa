#!/usr/bin/env python3
"""Server CPU per IMAP command in a persistent session, one command kind at a time (issue 19):
one client logs in once, appends N messages, selects INBOX, then repeats each kind K times while
the server's CPU is read from /proc before and after. Optionally py-spy records the server while
one kind runs (--profile KIND, raw folded stacks to --profile-out).

Not a test. mailstack only, all-in-one (`mailstack serve`, in-process mailstore, ADR 0039) as
bench/imap_load.py --shape all starts it, or split (--shape split):

    .venv/bin/python bench/imap_command_cpu.py [--messages 100] [--repeat 300] [--rounds 3]
        [--expunge-repeat 5] [--kinds select,noop,...] [--shape all|split] [--profile KIND --profile-out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from subprocess import DEVNULL

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.cpu import processes_cpu, py_spy
from bench.imap_load import PASSWORD, Client, all_in_one, connect, messages, split

HEADERS = b"FETCH 1:* (UID FLAGS RFC822.SIZE BODY.PEEK[HEADER.FIELDS (FROM SUBJECT DATE)])"


def kinds(count: int) -> dict[str, tuple[list[bytes], int]]:
    """Each kind: the commands of one pass and the operations they count for."""
    numbers = range(1, count + 1)
    return {
        "select": ([b"SELECT INBOX"], 1),
        "noop": ([b"NOOP"], 1),
        "fetch_headers": ([HEADERS], count),  # per message, as bench/imap_load.py counts it
        "fetch_flags": ([b"FETCH 1:* FLAGS"], 1),
        "fetch_bodies": ([b"FETCH %d (BODY.PEEK[])" % n for n in numbers], count),
        "store": ([b"STORE %d +FLAGS.SILENT (\\Seen)" % n for n in numbers], count),
        "store_unseen": ([b"STORE %d -FLAGS.SILENT (\\Seen)" % n for n in numbers], count),
        # as bench/imap_load.py counts it: one operation flags and expunges every message
        "expunge": ([b"STORE 1:* +FLAGS.SILENT (\\Deleted)", b"EXPUNGE"], 1),
    }


async def refill(client: Client, count: int) -> None:
    """The mailbox back to `count` messages (before an expunge pass; its CPU is not counted)."""
    await client.command(b"UID STORE 1:* +FLAGS.SILENT (\\Deleted)")
    await client.command(b"EXPUNGE")
    for data in messages(count):
        await client.command(b"APPEND INBOX ()", data)
    await client.command(b"NOOP")


async def run_kind(client: Client, pids: list[int], name: str, count: int, repeat: int) -> tuple[float, int]:
    """Repeats a pass of the kind's commands until at least `repeat` operations ran: the server CPU
    seconds they took and the operations run."""
    commands, ops = kinds(count)[name]
    done, cpu = 0, 0.0
    while done < repeat:
        if name == "expunge":
            await refill(client, count)
        before = processes_cpu(pids)
        for c in commands:
            await client.command(c)
        cpu += processes_cpu(pids) - before
        done += ops
    return cpu, done


async def run(port: int, user: str, pids: list[int], args: argparse.Namespace) -> dict[str, list[float]]:
    client = await connect(port)
    await client.command(f'LOGIN {user} "{PASSWORD}"'.encode())
    for data in messages(args.messages):
        await client.command(b"APPEND INBOX ()", data)
    await client.command(b"SELECT INBOX")
    out: dict[str, list[float]] = {}
    for name in args.kinds.split(","):
        await run_kind(client, pids, name, args.messages, 1)  # warm: index, caches
        spy = None
        if name == args.profile:
            command = [py_spy(), "record", "-r", "500", "--format", "raw", "-o", args.profile_out, "-p", str(pids[-1])]
            spy = await asyncio.create_subprocess_exec(*command, stdout=DEVNULL, stderr=DEVNULL)
            await asyncio.sleep(1.0)  # attached
        for _ in range(args.rounds):
            repeat = args.expunge_repeat if name == "expunge" else args.repeat
            cpu, done = await run_kind(client, pids, name, args.messages, repeat)
            out.setdefault(name, []).append(cpu * 1000 / done)
        if spy is not None:
            spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
            await asyncio.wait_for(spy.wait(), 30)
    client.writer.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=300, help="operations per kind per round")
    parser.add_argument("--expunge-repeat", type=int, default=5, help="expunge passes per round (each refills)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--kinds", default=",".join(kinds(1)), help="comma-separated, from: %(default)s")
    parser.add_argument("--shape", choices=("split", "all"), default="all", help="mailstack's processes")
    parser.add_argument("--profile", default="", help="a kind to record with py-spy")
    parser.add_argument("--profile-out", default="profile.txt")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        started = split(Path(tmp), 1) if args.shape == "split" else all_in_one(Path(tmp), 1, "auto")
        with started as (pids, port, users):
            time.sleep(0.5)
            results = asyncio.run(run(port, users[0], pids, args))
    print(f"{args.messages} messages, {args.repeat} operations x {args.rounds} rounds, {args.shape}; CPU ms per op")
    for name, values in results.items():
        shown = " ".join(f"{v:.3f}" for v in values)
        print(f"  {name:14s} median {statistics.median(values):.3f}  min {min(values):.3f}  ({shown})")


if __name__ == "__main__":
    main()
