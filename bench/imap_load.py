#!/usr/bin/env python3
"""IMAP load: N concurrent clients, phase by phase (login: 10 connections each; append; select:
20 each; fetch headers; fetch bodies; store flags; expunge), mailstack vs Dovecot in the same run
with the same client code, in interleaved rounds (medians reported).

Not a test. Every client APPENDs the same messages (fixed seed, 2-40 KB) to its own account on
both systems, so both hold the same data. mailstack runs as deployed (--shape split, the default):
a mailstore process and a `mailstack serve imap` process; or all-in-one (--shape all): one
`mailstack serve`, its frontends calling the mailstore in-process (--transport auto, ADR 0039) or
over its gRPC listener (--transport grpc). Dovecot is PEERS_KIT/start.sh PEER_DIR (the
reference-peers kit; users u1..uN, SHA512-CRYPT password hashes there; bench/hashcost.py sets
mailstack's scrypt cost to match and prints both).

    PEERS_KIT/start.sh PEER_DIR
    .venv/bin/python bench/imap_load.py --peers-dir PEER_DIR [--clients 5] [--messages 100] [--rounds 3]
        [--first-user 16]   (Dovecot users uK..; their Maildirs are replaced by new ones)
        [--shape split|all] [--transport auto|grpc]   (the all-in-one's transport)
        [--workers N]   (--shape all: MAILSTACK_WORKERS, worker processes sharing the ports)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mailstack.services.common.config import env_name
from mailstack.v1 import mailstore_pb2 as pb

from bench.cpu import dovecot_master, processes_cpu, tree_cpu
from bench.hashcost import matching_log_n
from tests.fixtures.mailstore import MailstoreProcess, identity_env, open_client
from tests.fixtures.ports import free_port
from tests.fixtures.serve_process import running_serve

PASSWORD = "Secret123"
DOVECOT_IMAP = 23143
PHASES = ("login", "append", "select", "fetch_headers", "fetch_bodies", "store", "expunge")
LOGINS = 10  # connections opened and logged in per client per round
SELECTS = 20  # SELECT INBOX (holding the appended messages) per client per round


def messages(count: int, seed: int = 7) -> list[bytes]:
    rng = random.Random(seed)
    out = []
    for n in range(count):
        head = f"From: load@bench.test\r\nTo: u@test\r\nSubject: imap bench {n}\r\nMessage-ID: <{n}@bench>\r\n\r\n"
        body = b"y" * 76 + b"\r\n"
        out.append(head.encode() + body * (rng.randint(2 * 1024, 40 * 1024) // len(body)))
    return out


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer, self.n = reader, writer, 0

    async def command(self, text: bytes, literal: bytes | None = None) -> bytes:
        self.n += 1
        tag = b"t%d" % self.n
        if literal is None:
            self.writer.write(tag + b" " + text + b"\r\n")
        else:  # synchronizing literal: both servers answer "+"
            self.writer.write(tag + b" " + text + b" {%d}\r\n" % len(literal))
            while not (await self.reader.readline()).startswith(b"+"):
                pass
            self.writer.write(literal + b"\r\n")
        received = bytearray()
        while True:
            line = await self.reader.readline()
            if not line:
                raise ConnectionError("server closed")
            received += line
            if line.endswith(b"}\r\n"):  # a literal follows
                size = int(line[line.rindex(b"{") + 1 : -3])
                received += await self.reader.readexactly(size)
                continue
            if line.startswith(tag + b" "):
                if not line.startswith(tag + b" OK"):
                    raise RuntimeError(line.decode(errors="replace"))
                return bytes(received)


async def connect(port: int) -> Client:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 22)
    await reader.readline()
    return Client(reader, writer)


@dataclass
class Round:
    port: int
    clients: list[Client]
    users: list[str]
    data: list[bytes]


async def _login(r: Round, i: int) -> int:
    """Connect, greeting, LOGIN; the last connection stays for the phases."""
    c = r.clients[i]
    for n in range(LOGINS):
        if n:
            await c.command(b"LOGOUT")
            c.writer.close()
            c = r.clients[i] = await connect(r.port)
        await c.command(f'LOGIN {r.users[i]} "{PASSWORD}"'.encode())
    return LOGINS


async def _append(r: Round, i: int) -> int:
    for m in r.data:
        await r.clients[i].command(b"APPEND INBOX ()", m)
    return len(r.data)


async def _select(r: Round, i: int) -> int:
    for _ in range(SELECTS):
        await r.clients[i].command(b"SELECT INBOX")
    return SELECTS


async def _fetch_headers(r: Round, i: int) -> int:
    await r.clients[i].command(b"FETCH 1:* (UID FLAGS RFC822.SIZE BODY.PEEK[HEADER.FIELDS (FROM SUBJECT DATE)])")
    return len(r.data)


async def _fetch_bodies(r: Round, i: int) -> int:
    for n in range(1, len(r.data) + 1):
        await r.clients[i].command(b"FETCH %d (BODY.PEEK[])" % n)
    return len(r.data)


async def _store(r: Round, i: int) -> int:
    for n in range(1, len(r.data) + 1):
        await r.clients[i].command(b"STORE %d +FLAGS.SILENT (\\Seen)" % n)
    return len(r.data)


async def _expunge(r: Round, i: int) -> int:
    await r.clients[i].command(b"STORE 1:* +FLAGS.SILENT (\\Deleted)")
    await r.clients[i].command(b"EXPUNGE")  # one operation: flag and expunge every message
    return 1


RUNNERS: dict[str, Callable[[Round, int], Awaitable[int]]] = {
    "login": _login,
    "append": _append,
    "select": _select,
    "fetch_headers": _fetch_headers,
    "fetch_bodies": _fetch_bodies,
    "store": _store,
    "expunge": _expunge,
}


async def run_phase(name: str, port: int, clients: list[Client], users: list[str], data: list[bytes]) -> int:
    r = Round(port, clients, users, data)
    counts = await asyncio.gather(*(RUNNERS[name](r, i) for i in range(len(clients))))
    return sum(counts)


@dataclass
class Result:
    rate: float  # operations per second
    cpu_ms: float  # server CPU milliseconds per operation (every process of that side)


async def measure(port: int, users: list[str], data: list[bytes], cpu: Callable[[], float]) -> dict[str, Result]:
    """One round: every phase once, with fresh connections; rate and server CPU per phase."""
    clients = [await connect(port) for _ in users]
    out = {}
    for phase in PHASES:
        start, cpu_start = time.perf_counter(), cpu()
        ops = await run_phase(phase, port, clients, users, data)
        out[phase] = Result(ops / (time.perf_counter() - start), (cpu() - cpu_start) * 1000 / ops)
    for c in clients:
        c.writer.close()
    return out


async def create_users(address: str, data_dir: Path | str, clients: int) -> list[str]:
    users = [f"u{i}@test" for i in range(1, clients + 1)]
    client = open_client(address, data_dir)
    for user in users:
        await client.admin.CreateAccount(pb.CreateAccountRequest(name=user, password=PASSWORD))
    await client.channel.close(None)
    return users


@contextlib.contextmanager
def all_in_one(tmp: Path, clients: int, transport: str, workers: int = 1) -> Iterator[tuple[list[int], int, list[str]]]:
    """One `mailstack serve` (every service; with workers > 1 a supervisor of that many worker
    processes, ADR 0043): (its pid and its workers' pids, the IMAP port, the users)."""
    log_n, cost_line = matching_log_n(PASSWORD)
    print(cost_line)
    extra = {
        "MAILSTACK_PASSWORD_SCRYPT_LOG_N": str(log_n),
        "MAILSTACK_ALLOW_PLAINTEXT_AUTH": "1",
        "MAILSTACK_IMAP_COMMANDS_PER_SECOND": "100000",
        "MAILSTACK_MAILSTORE_TRANSPORT": transport,
        "MAILSTACK_WORKERS": str(workers),
    }
    with running_serve(tmp, extra) as served:
        users = asyncio.run(create_users(f"127.0.0.1:{served.ports['mailstore']}", tmp / "data", clients))
        # The CPU of every worker counts (they live as long as the run; the supervisor's is ~0).
        pids = [served.proc.pid, *(served.worker_pids() if workers > 1 else [])]
        yield pids, served.ports["imap"], users


@contextlib.contextmanager
def split(tmp: Path, clients: int) -> Iterator[tuple[list[int], int, list[str]]]:
    """A mailstore process and a `mailstack serve imap` process: (their pids, the IMAP port, the users)."""
    store, proc, port, users = start_mailstack(tmp, clients)
    assert store.proc is not None
    try:
        yield [store.proc.pid, proc.pid], port, users
    finally:
        proc.terminate()
        proc.wait(15)
        store.stop()


def start_mailstack(tmp: Path, clients: int) -> tuple[MailstoreProcess, subprocess.Popen[bytes], int, list[str]]:
    log_n, cost_line = matching_log_n(PASSWORD)
    print(cost_line)
    store = MailstoreProcess(tmp / "store", {env_name("password_scrypt_log_n"): str(log_n)})
    store.start()
    port = free_port()
    env = dict(os.environ)
    env.update(
        {
            "MAILSTACK_DATA_DIR": str(tmp / "imap"),
            "MAILSTACK_MAILSTORE_ADDR": store.address,
            "MAILSTACK_IMAP_PORT": str(port),
            "MAILSTACK_IMAPS_PORT": str(free_port()),
            "MAILSTACK_ALLOW_PLAINTEXT_AUTH": "1",
            "MAILSTACK_IMAP_COMMANDS_PER_SECOND": "100000",
            **identity_env(store.data_dir, "imap"),  # the client certificate the mailstore asks for (ADR 0009)
        }
    )
    proc = subprocess.Popen([sys.executable, "-m", "mailstack", "serve", "imap"], env=env, stdout=subprocess.DEVNULL)
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    users = asyncio.run(create_users(store.address, store.data_dir, clients))
    return store, proc, port, users


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peers-dir", help="PEER_DIR of a running PEERS_KIT/start.sh PEER_DIR (Dovecot)")
    parser.add_argument("--clients", type=int, default=5)
    parser.add_argument("--messages", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3, help="rounds per system, interleaved; medians reported")
    parser.add_argument("--first-user", type=int, default=16, help="Dovecot users uK.. (given new Maildirs)")
    parser.add_argument("--shape", choices=("split", "all"), default="split", help="mailstack's processes")
    parser.add_argument("--transport", choices=("auto", "grpc"), default="auto", help="--shape all: in-process or gRPC")
    parser.add_argument("--workers", type=int, default=1, help="--shape all: worker processes (MAILSTACK_WORKERS)")
    args = parser.parse_args()
    data = messages(args.messages)
    dovecot_users = [f"u{i}" for i in range(args.first_user, args.first_user + args.clients)]
    if args.peers_dir:  # new Maildirs: a used one's folders never shrink and slow Dovecot down
        for user in dovecot_users:
            shutil.rmtree(Path(args.peers_dir) / "mail" / user, ignore_errors=True)
    results: dict[str, list[dict[str, Result]]] = {"mailstack": [], "dovecot": []}
    with tempfile.TemporaryDirectory() as d:
        started = (
            split(Path(d), args.clients)
            if args.shape == "split"
            else all_in_one(Path(d), args.clients, args.transport, args.workers)
        )
        with started as (pids, port, users):
            master = dovecot_master(args.peers_dir) if args.peers_dir else 0
            for _ in range(args.rounds):  # interleaved, so both see the same machine load
                results["mailstack"].append(asyncio.run(measure(port, users, data, lambda: processes_cpu(pids))))
                if args.peers_dir:
                    dovecot = asyncio.run(measure(DOVECOT_IMAP, dovecot_users, data, lambda: tree_cpu(master)))
                    results["dovecot"].append(dovecot)
    shape = "split" if args.shape == "split" else f"all-in-one, {args.transport}, {args.workers} worker(s)"
    report(results, f"{args.clients} clients x {args.messages} messages, {args.rounds} rounds, mailstack {shape}")


def report(results: dict[str, list[dict[str, Result]]], title: str) -> None:
    """Medians per phase: rates and their ratio, and each side's server CPU per operation."""
    print(f"{title}; medians; CPU = server CPU ms per operation (mailstack: mailstore + imap; Dovecot: its tree)")
    print(f"{'operation':<15}{'mailstack/s':>12}{'dovecot/s':>12}{'ratio':>8}{'CPU ms ours':>13}{'dovecot':>9}")
    for phase in PHASES:
        ours = statistics.median(r[phase].rate for r in results["mailstack"])
        our_cpu = statistics.median(r[phase].cpu_ms for r in results["mailstack"])
        theirs = results["dovecot"]
        other = statistics.median(r[phase].rate for r in theirs) if theirs else 0.0
        other_cpu = f"{statistics.median(r[phase].cpu_ms for r in theirs):9.3f}" if theirs else f"{'-':>9}"
        ratio = f"{ours / other:.2f}" if other else "-"
        print(f"{phase:<15}{ours:>12.1f}{other:>12.1f}{ratio:>8}{our_cpu:>13.3f}{other_cpu}")


if __name__ == "__main__":
    main()
