#!/usr/bin/env python3
"""Randomized mixed IMAP workload, mailstack vs Dovecot in the same run with the same client code.

Not a test. C clients (default 10) over A accounts (default 20; an account may be used by two clients at
once, like a phone and a desktop) each loop for a fixed time (--seconds) or number of operations (--ops),
choosing by a seeded RNG (bench/mixed_workload.py: the same sequence on both systems) among LOGIN (a new
connection), SELECT / EXAMINE a random mailbox, UID FETCH (all flags; envelopes and headers of up to 10
messages; one whole body), UID STORE +/-FLAGS, APPEND, EXPUNGE (UID STORE \\Deleted, then EXPUNGE), NOOP
and LOGOUT. Two modes: --mode cycle logs out after 2-8 operations and logs in again (like IMAP load
testers); --mode persistent keeps sessions (how real clients stay connected; a rare LOGOUT moves the
client to another account); --mode both (the default) runs both.

Every account starts with the same messages in INBOX, Work and Lists on both systems. The bench keeps a
model of every mailbox (Message-ID and flags per UID, from APPENDUID and what it stored and expunged);
each account's commands are serialized by a lock so the model is exact, and a session whose mailbox
another changed sends a NOOP before touching messages (the view is then current). Checks: every tagged
response OK (NO, BAD, BYE or a closed connection is a protocol error); SELECT's EXISTS, each FETCH's
UIDs, Message-IDs and flags against the model; after each run, per mailbox, UID SEARCH ALL and a FETCH
of every message's Message-ID and flags. Exit status 1 on any protocol error or mismatch, else 0.

Reported per mode: operations per second of each side and the ratio, server CPU ms per operation
(mailstack: its processes; Dovecot: its process tree), protocol errors, the state check, and per
operation the count and latency p50/p99. mailstack runs as bench/imap_load.py starts it (--shape
split: a mailstore and an imap process; --shape all: one `mailstack serve`, --transport auto|grpc),
with the scrypt cost matched to Dovecot's SHA512-CRYPT (bench/hashcost.py).

    PEERS_KIT/start.sh PEER_DIR
    .venv/bin/python bench/imap_mixed.py --peers-dir PEER_DIR [--shape split|all] [--transport auto|grpc]
        [--workers N]   (--shape all: MAILSTACK_WORKERS worker processes; every worker's CPU counts)
        [--mode both|cycle|persistent] [--clients 10] [--accounts 20] [--seconds 30] [--ops 100000]
        [--seed 1] [--rounds 1] [--prefill 12] [--first-user 1]
    (Dovecot users u1..u20 by default: their Maildirs are replaced by new ones.)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.cpu import dovecot_master, processes_cpu, tree_cpu
from bench.imap_load import DOVECOT_IMAP, PASSWORD, Client, all_in_one, connect, split
from bench.mixed_workload import (
    EVERY_UID,
    FLAGS,
    MAILBOXES,
    WEIGHTS,
    Chooser,
    Model,
    Op,
    message,
    parse_exists,
    parse_fetch,
    parse_search,
)

COMMAND_TIMEOUT = 30.0  # seconds for one operation before it counts as an error
UNLOCKED = frozenset({"login", "logout", "noop"})  # operations that touch no mailbox
MODES = {"cycle": "logout each cycle", "persistent": "persistent sessions"}
OPERATIONS = ("login", *WEIGHTS)  # the report's rows
PER_MESSAGE = {"fetch_headers": 10, "fetch_body": 1, "store": 1, "expunge": 1}  # messages each touches
HEADERS = "BODY.PEEK[HEADER.FIELDS (FROM TO SUBJECT DATE MESSAGE-ID)]"


@dataclass
class Target:
    name: str
    port: int
    users: list[str]  # the login name of each account
    cpu: Callable[[], float]  # the server's CPU seconds so far
    model: Model


@dataclass
class Run:
    """One timed run of one system in one mode."""

    seconds: float = 0.0
    cpu: float = 0.0  # server CPU seconds
    client_cpu: float = 0.0  # this load generator's CPU seconds (it shares the machine)
    latencies: dict[str, list[float]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)  # protocol errors
    mismatches: list[str] = field(default_factory=list)  # the server and the model disagree

    @property
    def ops(self) -> int:
        return sum(len(v) for v in self.latencies.values())


async def append(
    client: Client, target: Target, account: int, mailbox: str, message_id: str, flags: set[str], size: int
) -> None:
    """APPEND a message and enter it in the model under the UID of the server's APPENDUID (RFC 4315)."""
    listed = " ".join(sorted(flags))
    reply = await client.command(f'APPEND "{mailbox}" ({listed})'.encode(), message(message_id, size))
    found = re.search(rb"\[APPENDUID \d+ (\d+)\]", reply.rsplit(b"\r\n", 2)[-2])
    if found is None:
        raise RuntimeError(f"APPEND without APPENDUID: {reply[-200:]!r}")
    target.model.appended(account, mailbox, int(found.group(1)), message_id, flags)


async def prefill(target: Target, account: int, count: int, seed: int) -> None:
    """The account's mailboxes with `count` messages each, the same on every system."""
    rng = random.Random(f"{seed}/fill/{account}")
    client = await connect(target.port)
    await client.command(f'LOGIN {target.users[account]} "{PASSWORD}"'.encode())
    for mailbox in MAILBOXES[1:]:
        await client.command(f'CREATE "{mailbox}"'.encode())
    for mailbox in MAILBOXES:
        for n in range(count):
            flags = {f for f in FLAGS if rng.random() < 0.3}
            size = 600 + rng.randrange(30_000)
            await append(client, target, account, mailbox, f"<fill.{account}.{mailbox}.{n}@mixed.bench>", flags, size)
    await client.command(b"LOGOUT")
    client.writer.close()


class Runner:
    """One timed run: the clients, the per-account locks, which sessions have which mailbox selected."""

    def __init__(self, target: Target, args: argparse.Namespace, cycles: bool, tag: str) -> None:
        self.target, self.args, self.cycles, self.tag = target, args, cycles, tag
        self.locks = [asyncio.Lock() for _ in target.users]
        self.viewers: dict[tuple[int, str], set[Worker]] = {}
        self.run = Run()
        self.deadline = 0.0

    async def measure(self) -> Run:
        workers = [Worker(self, i) for i in range(self.args.clients)]
        cpu_start, start, own_start = self.target.cpu(), time.perf_counter(), time.process_time()
        self.deadline = time.monotonic() + self.args.seconds
        await asyncio.gather(*(w.loop() for w in workers))
        self.run.seconds, self.run.cpu = time.perf_counter() - start, self.target.cpu() - cpu_start
        self.run.client_cpu = time.process_time() - own_start
        await asyncio.gather(*(w.close() for w in workers))
        return self.run

    def changed(self, account: int, mailbox: str) -> None:
        """Every session with this mailbox selected syncs (NOOP) before it next touches a message."""
        for worker in self.viewers.get((account, mailbox), set()):
            worker.stale = True

    def problem(self, kind: list[str], worker: Worker, op: Op, text: str) -> None:
        kind.append(
            f"{self.target.name} client {worker.index} {op.name} (account {op.account + 1}): {text}\n"
            f"    its last commands: {' | '.join(worker.history)}"
        )


class Worker:
    """One client: its operations, its connection and its last commands (to report an error with)."""

    def __init__(self, runner: Runner, index: int) -> None:
        self.r, self.index = runner, index
        self.chooser = Chooser(runner.args.seed, index, len(runner.target.users), runner.cycles)
        self.client: Client | None = None
        self.selected: tuple[int, str] | None = None
        self.stale = False
        self.appends = 0
        self.history: deque[str] = deque(maxlen=10)
        self.handlers: dict[str, Callable[[Op], Awaitable[str]]] = {
            "login": self._login,
            "logout": self._logout,
            "select": self._select,
            "examine": self._select,
            "fetch_flags": self._fetch_flags,
            "append": self._append,
            "noop": self._noop,
            **dict.fromkeys(PER_MESSAGE, self._on_messages),
        }
        self.on_messages: dict[str, Callable[[Op, int, str, list[int]], Awaitable[None]]] = {
            "fetch_headers": self._fetch_headers,
            "fetch_body": self._fetch_body,
            "store": self._store,
            "expunge": self._expunge,
        }

    async def loop(self) -> None:
        for _ in range(self.r.args.ops):
            if time.monotonic() >= self.r.deadline:
                break
            await self.do(self.chooser.next())

    async def do(self, op: Op) -> None:
        try:
            name, seconds = await asyncio.wait_for(self._timed(op), COMMAND_TIMEOUT)
        except (RuntimeError, OSError, EOFError, TimeoutError) as e:  # NO/BAD, closed (BYE), reset or stuck
            self.r.problem(self.r.run.errors, self, op, str(e).strip() or repr(e))
            self._drop()  # the session's state is unknown: start again with a LOGIN
            return
        self.r.run.latencies.setdefault(name, []).append(seconds)

    async def _timed(self, op: Op) -> tuple[str, float]:
        lock = contextlib.nullcontext() if op.name in UNLOCKED else self.r.locks[op.account]
        async with lock:  # the model follows the server's order of this account's changes
            start = time.perf_counter()
            name = await self.handlers[op.name](op)
            return name, time.perf_counter() - start

    async def command(self, text: str, literal: bytes | None = None) -> bytes:
        assert self.client is not None
        self.history.append(text + (f" {{{len(literal)}}}" if literal else ""))
        return await self.client.command(text.encode(), literal)

    def _select_view(self, view: tuple[int, str] | None) -> None:
        if self.selected is not None:
            self.r.viewers[self.selected].discard(self)
        self.selected, self.stale = view, False
        if view is not None:
            self.r.viewers.setdefault(view, set()).add(self)

    def _disconnect(self) -> None:
        if self.client is not None:
            self.client.writer.close()
        self.client = None
        self._select_view(None)

    def _drop(self) -> None:
        self._disconnect()
        self.chooser.reset()

    async def close(self) -> None:
        """After the timed loop: LOGOUT (not counted)."""
        with contextlib.suppress(OSError, EOFError, RuntimeError):
            if self.client is not None:
                await asyncio.wait_for(self.command("LOGOUT"), COMMAND_TIMEOUT)
        self._drop()

    async def _login(self, op: Op) -> str:
        self._disconnect()
        self.client = await connect(self.r.target.port)
        await self.command(f'LOGIN {self.r.target.users[op.account]} "{PASSWORD}"')
        return "login"

    async def _logout(self, op: Op) -> str:
        await self.command("LOGOUT")
        self._disconnect()
        return "logout"

    async def _select(self, op: Op) -> str:
        reply = await self.command(f'{op.name.upper()} "{op.mailbox}"')
        self._select_view((op.account, op.mailbox))
        exists, want = parse_exists(reply), len(self.r.target.model.boxes[op.account, op.mailbox])
        if exists != want:
            self.r.problem(self.r.run.mismatches, self, op, f"EXISTS {exists}, expected {want}")
        return op.name

    async def _sync(self) -> tuple[int, str]:
        """The selected mailbox, after a NOOP if another session changed it (its untagged updates)."""
        if self.selected is None:
            raise RuntimeError("no mailbox selected")
        if self.stale:
            await self.command("NOOP")
            self.stale = False
        return self.selected

    async def _on_messages(self, op: Op) -> str:
        """An operation on `PER_MESSAGE[op.name]` messages of the selected mailbox (synced), from the one
        `op` picks; a NOOP when the mailbox is empty."""
        account, mailbox = await self._sync()
        uids = self.r.target.model.pick(account, mailbox, op.pick, PER_MESSAGE[op.name])
        if not uids:
            return await self._noop(op)
        await self.on_messages[op.name](op, account, mailbox, uids)
        return op.name

    async def _fetch_flags(self, op: Op) -> str:
        account, mailbox = await self._sync()
        uids = sorted(self.r.target.model.boxes[account, mailbox])
        if not uids:
            return await self._noop(op)
        got = parse_fetch(await self.command("UID FETCH 1:* (UID FLAGS)"))
        self._check(op, self.r.target.model.differences(account, mailbox, got, uids, EVERY_UID, ids=False))
        return "fetch_flags"

    async def _fetch_headers(self, op: Op, account: int, mailbox: str, uids: list[int]) -> None:
        span = range(uids[0], uids[-1] + 1)
        reply = await self.command(f"UID FETCH {uids[0]}:{uids[-1]} (UID FLAGS RFC822.SIZE ENVELOPE {HEADERS})")
        self._check(op, self.r.target.model.differences(account, mailbox, parse_fetch(reply), uids, span))

    async def _fetch_body(self, op: Op, account: int, mailbox: str, uids: list[int]) -> None:
        reply = await self.command(f"UID FETCH {uids[0]} (UID BODY.PEEK[])")
        got = parse_fetch(reply)
        self._check(
            op, self.r.target.model.differences(account, mailbox, got, uids, range(uids[0], uids[0] + 1), flags=False)
        )

    async def _store(self, op: Op, account: int, mailbox: str, uids: list[int]) -> None:
        await self.command(f"UID STORE {uids[0]} {'+' if op.add else '-'}FLAGS.SILENT ({op.flag})")
        self.r.target.model.stored(account, mailbox, uids[0], op.flag, op.add)

    async def _expunge(self, op: Op, account: int, mailbox: str, uids: list[int]) -> None:
        await self.command(f"UID STORE {uids[0]} +FLAGS.SILENT (\\Deleted)")
        await self.command("EXPUNGE")
        self.r.target.model.expunged(account, mailbox, uids[0])
        self.r.changed(account, mailbox)
        self.stale = False  # its own EXPUNGE answered with the expunges

    async def _append(self, op: Op) -> str:
        assert self.client is not None
        self.appends += 1
        message_id = f"<{self.r.tag}.{self.index}.{self.appends}@mixed.bench>"
        flags = {op.flag} if op.add else set()
        self.history.append(f"APPEND {op.mailbox} {message_id}")
        await append(self.client, self.r.target, op.account, op.mailbox, message_id, flags, op.size)
        self.r.changed(op.account, op.mailbox)
        return "append"

    async def _noop(self, op: Op) -> str:
        await self.command("NOOP")
        self.stale = False
        return "noop"

    def _check(self, op: Op, differences: list[str]) -> None:
        for text in differences:
            self.r.problem(self.r.run.mismatches, self, op, text)


async def check_state(target: Target) -> list[str]:
    """Every mailbox of every account against the model: UID SEARCH ALL and each message's Message-ID
    and flags (a failing command is itself a finding)."""
    out: list[str] = []
    for account, user in enumerate(target.users):
        try:
            out += await check_account(target, account, user)
        except (RuntimeError, OSError, EOFError) as e:
            out.append(f"{target.name}: account {account + 1}: the state check failed: {str(e).strip() or repr(e)}")
    return out


async def check_account(target: Target, account: int, user: str) -> list[str]:
    out: list[str] = []
    client = await connect(target.port)
    await client.command(f'LOGIN {user} "{PASSWORD}"'.encode())
    for mailbox in MAILBOXES:
        reply = await client.command(f'EXAMINE "{mailbox}"'.encode())
        searched = parse_search(await client.command(b"UID SEARCH ALL"))
        fetched = b""
        if parse_exists(reply):
            fetched = await client.command(b"UID FETCH 1:* (UID FLAGS BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
        out += [f"{target.name}: {d}" for d in target.model.compare(account, mailbox, parse_fetch(fetched), searched)]
    await client.command(b"LOGOUT")
    client.writer.close()
    return out


async def prepare(target: Target, args: argparse.Namespace) -> None:
    await asyncio.gather(*(prefill(target, a, args.prefill, args.seed) for a in range(len(target.users))))


def run_modes(targets: list[Target], args: argparse.Namespace) -> dict[str, dict[str, list[Run]]]:
    """Per mode, per system, the runs: interleaved so both see the same machine load."""
    modes = list(MODES) if args.mode == "both" else [args.mode]
    results: dict[str, dict[str, list[Run]]] = {m: {t.name: [] for t in targets} for m in modes}
    for n in range(args.rounds):
        for mode in modes:
            for target in targets:
                run = asyncio.run(Runner(target, args, mode == "cycle", f"{mode}{n}").measure())
                run.mismatches += asyncio.run(check_state(target))
                results[mode][target.name].append(run)
                print(f"  {mode} round {n + 1} {target.name}: {run.ops / run.seconds:.1f} ops/s", flush=True)
    return results


def main() -> int:
    args = parse_args()
    with tempfile.TemporaryDirectory() as d:
        started = (
            split(Path(d), args.accounts)
            if args.shape == "split"
            else all_in_one(Path(d), args.accounts, args.transport, args.workers)
        )
        with started as (pids, port, users):
            targets = [Target("mailstack", port, users, lambda: processes_cpu(pids), Model(args.accounts))]
            if args.peers_dir:
                targets.append(dovecot(args))
            for target in targets:
                asyncio.run(prepare(target, args))
            results = run_modes(targets, args)
    shape = "split" if args.shape == "split" else f"all-in-one, {args.transport}, {args.workers} worker(s)"
    print(
        f"mixed IMAP workload: {args.clients} clients over {args.accounts} accounts, {args.seconds:g} s or "
        f"{args.ops} operations per client, seed {args.seed}, {args.rounds} round(s); mailstack {shape}"
    )
    return report(results)


def dovecot(args: argparse.Namespace) -> Target:
    """The reference Dovecot with new Maildirs for the bench's users (a used one stays slow to scan)."""
    numbers = range(args.first_user, args.first_user + args.accounts)
    for n in numbers:
        shutil.rmtree(Path(args.peers_dir) / "mail" / f"u{n}", ignore_errors=True)
    master = dovecot_master(args.peers_dir)
    return Target("dovecot", DOVECOT_IMAP, [f"u{n}" for n in numbers], lambda: tree_cpu(master), Model(args.accounts))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peers-dir", help="PEER_DIR of a running PEERS_KIT/start.sh PEER_DIR (Dovecot)")
    parser.add_argument("--mode", choices=("both", *MODES), default="both", help="logout per cycle, persistent or both")
    parser.add_argument("--clients", type=int, default=10, help="concurrent clients")
    parser.add_argument("--accounts", type=int, default=20, help="accounts the clients pick from at each LOGIN")
    parser.add_argument("--seconds", type=float, default=30.0, help="each run's length")
    parser.add_argument("--ops", type=int, default=100_000, help="at most this many operations per client and run")
    parser.add_argument("--seed", type=int, default=1, help="the operations' RNG seed (the same on both systems)")
    parser.add_argument("--rounds", type=int, default=1, help="runs per mode and system, interleaved; medians")
    parser.add_argument("--prefill", type=int, default=12, help="messages per mailbox before the first run")
    parser.add_argument("--first-user", type=int, default=1, help="Dovecot users uK.. (given new Maildirs)")
    parser.add_argument("--shape", choices=("split", "all"), default="split", help="mailstack's processes")
    parser.add_argument("--transport", choices=("auto", "grpc"), default="auto", help="--shape all: in-process or gRPC")
    parser.add_argument("--workers", type=int, default=1, help="--shape all: worker processes (MAILSTACK_WORKERS)")
    return parser.parse_args()


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else 0.0


def report(results: dict[str, dict[str, list[Run]]]) -> int:
    """Each mode's table; 1 if any protocol error or mismatch, else 0."""
    failed = False
    for mode, systems in results.items():
        names = list(systems)
        rates = {s: statistics.median(r.ops / r.seconds for r in runs) for s, runs in systems.items()}
        cpu = {s: statistics.median(r.cpu * 1000 / max(1, r.ops) for r in runs) for s, runs in systems.items()}
        ratio = f"{rates['mailstack'] / rates['dovecot']:.2f}" if rates.get("dovecot") else "-"
        print(f"\n== {MODES[mode]} ==")
        print(f"{'':<22}" + "".join(f"{s:>14}" for s in names) + f"{'ratio':>8}")
        print(f"{'ops/s (median)':<22}" + "".join(f"{rates[s]:>14.1f}" for s in names) + f"{ratio:>8}")
        print(
            f"{'ops/s (each run)':<22}"
            + "".join(f"{'/'.join(f'{r.ops / r.seconds:.0f}' for r in systems[s]):>14}" for s in names)
        )
        print(f"{'server CPU ms/op':<22}" + "".join(f"{cpu[s]:>14.3f}" for s in names))
        own = {s: statistics.median(r.client_cpu * 1000 / max(1, r.ops) for r in runs) for s, runs in systems.items()}
        print(f"{'bench CPU ms/op':<22}" + "".join(f"{own[s]:>14.3f}" for s in names))
        errors = {s: [e for r in runs for e in r.errors] for s, runs in systems.items()}
        mismatches = {s: [e for r in runs for e in r.mismatches] for s, runs in systems.items()}
        print(f"{'protocol errors':<22}" + "".join(f"{len(errors[s]):>14}" for s in names))
        print(f"{'state mismatches':<22}" + "".join(f"{len(mismatches[s]):>14}" for s in names))
        latency_table(systems)
        for s in names:
            for text in (errors[s] + mismatches[s])[:20]:
                print(f"  ! {text}")
            failed = failed or bool(errors[s] or mismatches[s])
    print("\nstate check:", "FAILED" if failed else "every tagged response OK, every mailbox as the model says")
    return 1 if failed else 0


def latency_table(systems: dict[str, list[Run]]) -> None:
    """Per operation: how many ran and their latency p50 / p99 in ms, each system."""
    names = list(systems)
    merged = {
        s: {op: [v for r in runs for v in r.latencies.get(op, [])] for op in OPERATIONS} for s, runs in systems.items()
    }
    print(f"{'operation':<16}" + "".join(f"{s + ' n':>14}{'p50 ms':>9}{'p99 ms':>9}" for s in names))
    for op in OPERATIONS:
        cells = "".join(
            f"{len(merged[s][op]):>14}{quantile(merged[s][op], 0.5):>9.2f}{quantile(merged[s][op], 0.99):>9.2f}"
            for s in names
        )
        print(f"{op:<16}{cells}")


if __name__ == "__main__":
    sys.exit(main())
