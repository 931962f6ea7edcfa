"""Deliveries/s and IMAP ops/s with 1, 2, 3 mailstore replicas on PostgreSQL, next to one on SQLite,
with the CPU each process spent per operation (issue 20, ADR 0035). Not a test: numbers, never
assertions.

Each configuration is the deployed topology of tests/fixtures/replicas.py (every service its own
process; SeaweedFS for bodies, Valkey for events and quota; PostgreSQL, or SQLite for the baseline):
the frontends call the replicas round robin through one comma-list address. Phase 1: SMTP senders
deliver --messages messages to --accounts accounts (a 250 means stored). Phase 2: IMAP sessions each
run --imap-ops operations on their INBOX (SELECT, FETCH FLAGS ENVELOPE of 10, STORE, NOOP, UID SEARCH).

    .venv/bin/python bench/replicas.py                                  # full size, every configuration
    .venv/bin/python bench/replicas.py --configs sqlite,pg1 --messages 40 --imap-ops 20   # a quick look

CPU per operation is (process CPU during the phase) / (operations): per mailstore replica (summed),
for smtp, imap, PostgreSQL (the whole server tree), Valkey and SeaweedFS.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import itertools
import smtplib
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from imapclient import IMAPClient
from mailstack.v1 import mailstore_pb2 as pb
from mailstack.v1 import mailstore_pb2_grpc as pbg

from bench.cpu import process_cpu, tree_cpu
from tests.fixtures.postgres_server import PostgresServer, fresh_database
from tests.fixtures.replicas import Replicated, replicated_topology
from tests.fixtures.topology import admin_channel

PASSWORD = "bench-Pass1"
CONFIGS = {"sqlite": 0, "pg1": 1, "pg2": 2, "pg3": 3}  # name -> PostgreSQL replicas (0: SQLite, one replica)


@dataclass
class Phase:
    operations: int
    seconds: float
    cpu: dict[str, float]  # process group -> CPU seconds during the phase

    @property
    def rate(self) -> float:
        return self.operations / self.seconds if self.seconds else 0.0

    def ms_per_op(self, group: str) -> float:
        return 1000 * self.cpu.get(group, 0.0) / self.operations if self.operations else 0.0


def _pid(server: Any) -> int:
    """The pid of a test fixture's server (they keep their Popen privately)."""
    proc = getattr(server, "_process", None) or getattr(server, "_proc", None)
    return int(proc.pid) if proc is not None else 0


def cpu_groups(topo: Replicated, postgres: PostgresServer | None) -> Callable[[], dict[str, float]]:
    def read() -> dict[str, float]:
        groups = {
            "mailstore": sum(process_cpu(s.proc.pid) for s in topo.mailstores if s.proc is not None),
            "smtp": process_cpu(topo.topology.smtp.proc.pid) if topo.topology.smtp.proc else 0.0,
            "imap": sum(process_cpu(s.proc.pid) for s in topo.topology.imaps if s.proc is not None),
            "valkey": tree_cpu(_pid(topo.topology.redis)),
            "seaweedfs": tree_cpu(_pid(topo.topology.s3)),
        }
        if postgres is not None:
            groups["postgresql"] = tree_cpu(_pid(postgres))
        return groups

    return read


@contextmanager
def measured(cpu: Callable[[], dict[str, float]], result: list[Phase]) -> Iterator[list[int]]:
    """Times the block and the CPU each group spent in it; the block appends its operation count."""
    count: list[int] = []
    before, started = cpu(), time.monotonic()
    yield count
    seconds, after = time.monotonic() - started, cpu()
    result.append(Phase(sum(count), seconds, {k: after[k] - before[k] for k in after}))


def create_accounts(topo: Replicated, count: int) -> list[str]:
    names = [f"bench{i}@example.com" for i in range(count)]
    with admin_channel(topo.topology) as channel:
        admin = pbg.AdminStub(channel)
        for name in names:
            admin.CreateAccount(pb.CreateAccountRequest(name=name, password=PASSWORD), timeout=30)
    return names


def send_share(port: int, recipients: list[str], body: str) -> int:
    """One sender's share of the messages over one SMTP session; how many got 250."""
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as smtp:
        for recipient in recipients:
            smtp.sendmail("load@remote.test", [recipient], body)
    return len(recipients)


def deliveries(topo: Replicated, accounts: list[str], messages: int, senders: int) -> int:
    body = "From: load@remote.test\r\nTo: x@example.com\r\nSubject: bench\r\n\r\n" + "line of text\r\n" * 200
    targets = list(itertools.islice(itertools.cycle(accounts), messages))
    shares = [targets[i::senders] for i in range(senders)]
    port = topo.topology.smtp.ports["smtp"]
    with concurrent.futures.ThreadPoolExecutor(senders) as pool:
        return sum(pool.map(lambda share: send_share(port, share, body), shares))


def imap_session(port: int, account: str, ops: int) -> int:
    with IMAPClient("127.0.0.1", port=port, ssl=False, timeout=60) as client:
        client.login(account, PASSWORD)
        done = 0
        for i in range(ops):
            step = i % 5
            if step == 0:
                client.select_folder("INBOX")
            elif step == 1:
                client.fetch(client.search("ALL")[:10], ["FLAGS", "ENVELOPE"])
            elif step == 2:
                client.add_flags(client.search("ALL")[-3:], [b"$Bench"])
            elif step == 3:
                client.noop()
            else:
                client.search(["UNSEEN"])
            done += 1
        return done


def imap_ops(topo: Replicated, accounts: list[str], ops: int) -> int:
    port = topo.topology.imaps[0].ports["imap"]
    with concurrent.futures.ThreadPoolExecutor(len(accounts)) as pool:
        return sum(pool.map(lambda account: imap_session(port, account, ops), accounts))


def run_config(name: str, args: argparse.Namespace, folder: Path, postgres: PostgresServer) -> list[Phase]:
    replicas = CONFIGS[name]
    phases: list[Phase] = []
    with (
        database(postgres if replicas else None) as url,
        replicated_topology(folder / name, url, replicas=max(1, replicas)) as topo,
    ):
        cpu = cpu_groups(topo, postgres if replicas else None)
        accounts = create_accounts(topo, args.accounts)
        with measured(cpu, phases) as count:
            count.append(deliveries(topo, accounts, args.messages, args.senders))
        with measured(cpu, phases) as count:
            count.append(imap_ops(topo, accounts, args.imap_ops))
    return phases


@contextmanager
def database(postgres: PostgresServer | None) -> Iterator[str]:
    """A fresh database for a PostgreSQL configuration, "" (SQLite) otherwise."""
    if postgres is None:
        yield ""
        return
    with fresh_database(postgres) as url:
        yield url


def report(results: dict[str, list[Phase]]) -> None:
    groups = ["mailstore", "smtp", "imap", "postgresql", "valkey", "seaweedfs"]
    print(
        f"\n{'config':<8} {'phase':<11} {'ops':>6} {'ops/s':>8}  CPU ms per op: " + " ".join(f"{g:>10}" for g in groups)
    )
    for name, phases in results.items():
        for label, phase in zip(("deliveries", "imap ops"), phases, strict=True):
            cells = " ".join(f"{phase.ms_per_op(g):>10.2f}" for g in groups)
            print(f"{name:<8} {label:<11} {phase.operations:>6} {phase.rate:>8.1f} {cells}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"comma list of {', '.join(CONFIGS)}")
    parser.add_argument("--messages", type=int, default=2000, help="messages delivered per configuration")
    parser.add_argument("--senders", type=int, default=20, help="concurrent SMTP sessions")
    parser.add_argument("--accounts", type=int, default=10, help="accounts (= IMAP sessions)")
    parser.add_argument("--imap-ops", type=int, default=200, help="operations per IMAP session")
    args = parser.parse_args()
    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        parser.error(f"unknown configurations {unknown} (known: {', '.join(CONFIGS)})")
    postgres = PostgresServer()
    results: dict[str, list[Phase]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-replicas-") as tmp:
        try:
            postgres.start()
            for name in names:
                results[name] = run_config(name, args, Path(tmp), postgres)
                report({name: results[name]})
        finally:
            postgres.cleanup()
    print("\nall configurations:")
    report(results)


if __name__ == "__main__":
    main()
