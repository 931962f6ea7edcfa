#!/usr/bin/env python3
"""POP3 load: login + UIDL + RETR of every message, N concurrent clients, mailstack vs Dovecot.

Not a test. The same messages (--messages, 4-50 KB, fixed seed) are loaded into N accounts
(one per client: the maildrop lock is exclusive) on both systems: into mailstack through
the mailstore's gRPC Deliver, into Dovecot (PEERS_KIT/start.sh PEER_DIR, the reference-peers kit) over LMTP. Then each
system is measured in the same run with the same client code (plaintext USER/PASS, one command
at a time). mailstack runs as deployed: a mailstore process and a `mailstack serve pop3` process.

The client reads each response whole, up to its terminator, so that it costs little next to the
servers (~0.06 ms of CPU per message). `--per-line` reads line by line instead, as a naive Python
client would: that client then needs ~0.4 ms per message of the same two cores and bounds both
systems, which hides most of the difference between them.

    PEERS_KIT/start.sh PEER_DIR
    .venv/bin/python bench/pop3_load.py --peers-dir PEER_DIR [--messages 1000] [--clients 10] [--rounds 3]
        [--dovecot-first-user N]   (users uN..uN+clients-1; their Maildirs are replaced by new ones)

Each round includes the logins; both sides hash passwords at the same cost (bench/hashcost.py
picks the scrypt cost nearest to Dovecot's SHA512-CRYPT and prints both).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import smtplib
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mailstack.services.common.config import env_name
from mailstack.v1 import mailstore_pb2 as pb

from bench.cpu import dovecot_master, processes_cpu, tree_cpu
from bench.hashcost import matching_log_n
from tests.fixtures.mailstore import MailstoreProcess, deliver, identity_env, open_client
from tests.fixtures.pop3 import Pop3Process
from tests.fixtures.ports import free_port

PASSWORD = "Secret123"  # the peers' default USER_PASSWORD
DOVECOT_POP3 = 23110
DOVECOT_LMTP = 23024
MAX_RESPONSE = 8 * 1024 * 1024  # the client's read buffer: a whole RETR response fits


def messages(count: int, seed: int = 5) -> list[bytes]:
    rng = random.Random(seed)
    out = []
    for n in range(count):
        size = rng.randint(4 * 1024, 50 * 1024)
        head = f"From: load@bench.test\r\nTo: u@test\r\nSubject: pop3 bench {n}\r\nMessage-ID: <{n}@bench>\r\n\r\n"
        line = b"." + b"x" * 75 + b"\r\n"  # leading dots: the server must dot-stuff every line
        out.append(head.encode() + line * max(1, (size - len(head)) // len(line)))
    return out


def split(items: list[bytes], parts: int) -> list[list[bytes]]:
    return [items[i::parts] for i in range(parts)]


async def multi_line(reader: asyncio.StreamReader, per_line: bool) -> int:
    """The octets of a multi-line response before its terminator (see pop3_client)."""
    if not per_line:
        first = await reader.readline()
        if first == b".\r\n":
            return 0
        return len(first) + len(await reader.readuntil(b"\r\n.\r\n")) - 3
    size = 0
    while (line := await reader.readline()) != b".\r\n":
        if not line:
            raise RuntimeError("connection closed in a multi-line response")
        size += len(line)
    return size


async def pop3_client(port: int, user: str, expected: int, per_line: bool = False) -> int:
    """login, UIDL, RETR every message, QUIT; returns the octets received.

    A multi-line response is read in one piece up to its terminator (a dot-stuffed body cannot hold
    CRLF "." CRLF), so the client costs little next to the servers it measures; `per_line` reads it
    line by line instead, as a simple Python client would (the client then bounds both systems)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=MAX_RESPONSE)
    received = 0

    async def status(command: bytes | None) -> bytes:
        if command:
            writer.write(command + b"\r\n")
        line = await reader.readline()
        if not line.startswith(b"+OK"):
            raise RuntimeError(f"{user}: {command!r} -> {line!r}")
        return line

    try:
        await status(None)
        await status(f"USER {user}".encode())
        await status(f"PASS {PASSWORD}".encode())
        await status(b"UIDL")
        uidl = await multi_line(reader, per_line)
        if uidl == 0 and expected:
            raise RuntimeError(f"{user}: empty maildrop")
        for n in range(1, expected + 1):
            await status(f"RETR {n}".encode())
            received += await multi_line(reader, per_line)
        await status(b"QUIT")
    finally:
        writer.close()
        await writer.wait_closed()
    return received


async def measure(port: int, users: list[str], per_user: int, per_line: bool = False) -> tuple[float, int]:
    start = time.perf_counter()
    octets = await asyncio.gather(*(pop3_client(port, u, per_user, per_line) for u in users))
    return time.perf_counter() - start, sum(octets)


def load_dovecot(peer_dir: Path, groups: list[list[bytes]], first_user: int) -> list[str]:
    users = [f"u{i}" for i in range(first_user, first_user + len(groups))]
    for user in users:  # a new Maildir: a used one's folders never shrink and slow Dovecot down
        shutil.rmtree(peer_dir / "mail" / user, ignore_errors=True)
    with smtplib.LMTP("127.0.0.1", DOVECOT_LMTP) as lmtp:
        for user, group in zip(users, groups, strict=True):
            for data in group:
                lmtp.sendmail("load@bench.test", [f"{user}@test"], data)
    return users


async def load_mailstack(address: str, data_dir: Path, groups: list[list[bytes]]) -> list[str]:
    client = open_client(address, data_dir)
    users = [f"bench{i}@example.test" for i in range(1, len(groups) + 1)]
    try:
        for user, group in zip(users, groups, strict=True):
            await client.admin.CreateAccount(pb.CreateAccountRequest(name=user, password=PASSWORD))
            for data in group:
                await deliver(client, [user], data)
    finally:
        await client.channel.close(None)
    return users


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peers-dir", required=True, help="PEER_DIR of a running PEERS_KIT/start.sh PEER_DIR")
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=10, help="concurrent clients (<= the peers' USER_COUNT)")
    parser.add_argument("--rounds", type=int, default=3, help="measured rounds per system (best and median reported)")
    parser.add_argument(
        "--pop3-processes",
        type=int,
        default=1,
        help="mailstack pop3 processes sharing the ports (SO_REUSEPORT), e.g. one per core",
    )
    parser.add_argument(
        "--per-line",
        action="store_true",
        help="read responses line by line (a slow client that bounds both systems) instead of whole",
    )
    parser.add_argument(
        "--dovecot-first-user",
        type=int,
        default=1,
        help="Dovecot users u<N>..: pick ones nobody else uses on a shared peers instance",
    )
    args = parser.parse_args()
    data = messages(args.messages)
    groups = split(data, args.clients)
    per_user = len(groups[0])
    if any(len(g) != per_user for g in groups):
        parser.error("--messages must be a multiple of --clients")

    print(
        f"{args.messages} messages ({sum(map(len, data)) / 1e6:.1f} MB), {args.clients} concurrent clients, "
        f"{args.pop3_processes} mailstack pop3 process(es)"
    )
    print("loading Dovecot over LMTP into new Maildirs ...")
    dovecot_users = await asyncio.to_thread(load_dovecot, Path(args.peers_dir), groups, args.dovecot_first_user)

    with tempfile.TemporaryDirectory(prefix="pop3-bench-") as tmp:
        log_n, cost_line = matching_log_n(PASSWORD)
        print(cost_line)
        mailstore = MailstoreProcess(Path(tmp) / "mailstore", {env_name("password_scrypt_log_n"): str(log_n)})
        mailstore.start()
        # One pop3 process, or several sharing the ports (MAILSTACK_REUSE_PORT), as replicas would
        shared = "true" if args.pop3_processes > 1 else "false"
        pop3_env = {env_name("allow_plaintext_auth"): "true", env_name("reuse_port"): shared,
                    **identity_env(mailstore.data_dir, "pop3")}  # fmt: skip
        ports = (free_port(), free_port())
        pop3s = [
            Pop3Process(Path(tmp) / f"pop3-{n}", mailstore.address, pop3_env, ports) for n in range(args.pop3_processes)
        ]
        pop3 = pop3s[0]
        try:
            for process in pop3s:
                await asyncio.to_thread(process.start)
            await asyncio.sleep(1)  # start() returns once the port answers: let the later ones listen too
            print("loading mailstack over gRPC ...")
            mailstack_users = await load_mailstack(mailstore.address, mailstore.data_dir, groups)
            results: dict[str, list[tuple[float, int]]] = {"mailstack": [], "dovecot": []}
            cpu = {"mailstack": 0.0, "dovecot": 0.0}
            ours = [mailstore.proc.pid if mailstore.proc else 0, *(p.proc.pid for p in pop3s if p.proc)]
            master = dovecot_master(args.peers_dir)
            for _ in range(args.rounds):  # interleaved, so both see the same machine load
                before = processes_cpu(ours)
                results["mailstack"].append(await measure(pop3.port, mailstack_users, per_user, args.per_line))
                cpu["mailstack"] += processes_cpu(ours) - before
                before = tree_cpu(master)
                results["dovecot"].append(await measure(DOVECOT_POP3, dovecot_users, per_user, args.per_line))
                cpu["dovecot"] += tree_cpu(master) - before
        finally:
            for process in pop3s:
                process.stop()
            mailstore.stop()

    rates = {}
    medians = {}
    print(f"{'system':<10} {'best s':>8} {'msgs/s':>9} {'MB/s':>7} {'median msgs/s':>14}   all rounds (s)")
    for name, runs in results.items():
        seconds, octets = min(runs)
        rates[name] = args.messages / seconds
        medians[name] = args.messages / statistics.median(s for s, _ in runs)
        rounds = " ".join(f"{s:.2f}" for s, _ in runs)
        print(
            f"{name:<10} {seconds:>8.2f} {rates[name]:>9.0f} {octets / seconds / 1e6:>7.1f} {medians[name]:>14.0f}"
            f"   {rounds}"
        )
    per = {name: used * 1000 / (args.messages * args.rounds) for name, used in cpu.items()}
    print(f"server CPU per message: mailstack {per['mailstack']:.3f} ms, dovecot {per['dovecot']:.3f} ms")
    print(
        f"ratio mailstack/dovecot (messages/s): best {rates['mailstack'] / rates['dovecot']:.2f}, "
        f"median {medians['mailstack'] / medians['dovecot']:.2f}"
    )


if __name__ == "__main__":
    asyncio.run(main())
