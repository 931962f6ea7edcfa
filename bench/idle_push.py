#!/usr/bin/env python3
"""IDLE push: how long after SMTP's 250 every IDLE client of the account sees `* n EXISTS`, and what
an idle connection costs in memory. mailstack as deployed (a mailstore, an imap and an smtp process,
events over Valkey/Redis) and, with --peers-dir, Postfix -> Dovecot (LMTP) after it, same client code.

Not a test: numbers, never assertions. N clients (default 50) log in to one account, SELECT INBOX and
IDLE; then D deliveries (default 200) over SMTP, one at a time: the next is sent only when every
client has seen the last one's EXISTS (or --wait seconds passed) and --gap seconds more, so each is
measured on its own. Per system: latency from the 250 after DATA to each client's EXISTS
(p50/p95/p99/max over D x N samples; a client that never saw one is counted as missing), the imap
process's RSS growth per IDLE connection (/proc/PID/status VmRSS with N sessions vs without; Dovecot:
the sum over its process tree, one imap process per connection, also as PSS, which splits shared
pages), and the CPU per delivery of each process.

    PEERS_KIT/start.sh PEER_DIR      # optional: the reference-peers kit (Postfix, Dovecot)
    .venv/bin/python bench/idle_push.py [--peers-dir PEER_DIR] [--clients 50] [--deliveries 200]
        [--gap 0.05] [--notifier redis|watch] [--peer-user u20] [--profile DIR]

--notifier watch: the imap process follows the mailstore's Watch stream over gRPC instead of
subscribing to Redis itself. --profile DIR: py-spy records the imap and mailstore processes during
the deliveries (flame graphs DIR/imap.svg, DIR/mailstore.svg). Do not pipe the output through
head or tail: Postfix and Dovecot inherit the descriptors when this script starts them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.cpu import dovecot_master, process_cpu, py_spy, tree_cpu

PASSWORD = "Secret123"
ACCOUNT = "idle@test"
DOVECOT_IMAP, POSTFIX_SMTP = 23143, 23025
LOGIN_BATCH = 10  # logins at once: below the mailstore's in-flight login limit per IP (ADR 0011)
_EXISTS = re.compile(rb"^\* (\d+) EXISTS\r?\n?$", re.IGNORECASE)


# ---------------------------------------------------------------- pure helpers


def parse_exists(line: bytes) -> int | None:
    """The count of an untagged `* n EXISTS` (RFC 9051 §7.4.1), None for any other line."""
    match = _EXISTS.match(line)
    return int(match.group(1)) if match else None


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of the values; 0.0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def latencies(sent: dict[int, float], seen: Sequence[Sequence[tuple[int, float]]]) -> tuple[list[float], int]:
    """Seconds from each delivery's 250 to each client's first EXISTS that counts it, and how many
    (delivery, client) pairs never saw one. sent: the EXISTS count a delivery makes -> its 250's
    time; seen: per client, (count, time) of each EXISTS in arrival order. An EXISTS that skips a
    count (two deliveries told at once) counts for both."""
    out: list[float] = []
    missing = 0
    for events in seen:
        for count, t250 in sorted(sent.items()):
            at = next((t for n, t in events if n >= count), None)
            if at is None:
                missing += 1
            else:
                out.append(at - t250)
    return out, missing


def status_kib(text: str, key: str) -> int:
    """A `Key:   123 kB` field of /proc/PID/status or smaps_rollup, in KiB (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def dot_stuff(data: bytes) -> bytes:
    """DATA's transparency (RFC 5321 §4.5.2): a line starting with '.' gets another; CRLF at the end."""
    lines = data.split(b"\r\n")
    body = b"\r\n".join(b"." + line if line.startswith(b".") else line for line in lines)
    return body if body.endswith(b"\r\n") else body + b"\r\n"


@dataclass
class Summary:
    p50: float
    p95: float
    p99: float
    max: float
    samples: int
    missing: int

    @classmethod
    def of(cls, values: Sequence[float], missing: int) -> Summary:
        top = max(values) if values else 0.0
        return cls(percentile(values, 50), percentile(values, 95), percentile(values, 99), top, len(values), missing)

    def line(self) -> str:
        ms = [f"{v * 1000:8.1f}" for v in (self.p50, self.p95, self.p99, self.max)]
        return " ".join(ms) + f"{self.samples:>9}{self.missing:>8}"


# ---------------------------------------------------------------- processes


def kib(pid: int, key: str = "VmRSS", file: str = "status") -> int:
    try:
        return status_kib(Path(f"/proc/{pid}/{file}").read_text(), key)
    except OSError:
        return 0  # gone meanwhile


def tree_pids(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int(Path(f"/proc/{entry.name}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


@dataclass
class System:
    """One side of the comparison: where to connect, whose memory and CPU to read."""

    name: str
    imap_port: int
    smtp_port: int
    user: str  # the IMAP login
    rcpt: str  # the SMTP recipient
    memory_pids: list[int]  # summed: the imap process, or Dovecot's whole tree
    cpu: dict[str, tuple[int, bool]]  # label -> (pid, whole tree)
    memory_tree: bool = False  # memory_pids[0] is a tree's root, read at each measurement

    def memory(self, key: str = "VmRSS", file: str = "status") -> int:
        pids = tree_pids(self.memory_pids[0]) if self.memory_tree else self.memory_pids
        return sum(kib(pid, key, file) for pid in pids)

    def cpu_seconds(self) -> dict[str, float]:
        return {label: tree_cpu(pid) if tree else process_cpu(pid) for label, (pid, tree) in self.cpu.items()}


def wait_port(port: int, proc: subprocess.Popen[bytes] | None, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"exited while starting; see {log}")
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        time.sleep(0.1)
    raise RuntimeError(f"port {port} not open after {timeout}s; see {log}")


@contextlib.contextmanager
def mailstack(work: Path, notifier: str) -> Iterator[System]:
    """Valkey, then `mailstack serve mailstore`, `serve imap` and `serve smtp`, each its own process."""
    from mailstack.services.common.config import env_name

    from tests.fixtures.mailstore import MailstoreProcess, identity_env
    from tests.fixtures.ports import free_port
    from tests.fixtures.redis_server import RedisServer

    redis = RedisServer()
    redis.start()
    procs: list[subprocess.Popen[bytes]] = []
    store = MailstoreProcess(
        work / "mailstore",
        {env_name("events_url"): redis.url, env_name("quota_url"): redis.url, env_name("log_level"): "WARNING"},
    )
    try:
        store.start()
        assert store.proc is not None
        ports = {"imap": free_port(), "smtp": free_port()}
        common = {
            "MAILSTACK_MAILSTORE_ADDR": store.address,
            "MAILSTACK_LOG_LEVEL": "WARNING",
            "MAILSTACK_METRICS_PORT": "0",
        }
        envs = {
            "imap": {
                "MAILSTACK_IMAP_PORT": str(ports["imap"]),
                "MAILSTACK_IMAPS_PORT": str(free_port()),
                "MAILSTACK_ALLOW_PLAINTEXT_AUTH": "1",
                "MAILSTACK_IMAP_MAX_CONNECTIONS_PER_USER": "1000",
                "MAILSTACK_IMAP_MAX_CONNECTIONS_PER_IP": "1000",
                **({"MAILSTACK_EVENTS_URL": redis.url} if notifier == "redis" else {}),
            },
            "smtp": {
                "MAILSTACK_SMTP_PORT": str(ports["smtp"]),
                "MAILSTACK_SUBMISSION_PORT": str(free_port()),
                "MAILSTACK_SUBMISSIONS_PORT": str(free_port()),
                "MAILSTACK_LMTP_PORT": "0",
                "MAILSTACK_SMTP_MAX_CONNECTIONS_PER_IP": "0",
            },
        }
        for name, own in envs.items():
            env = {k: v for k, v in os.environ.items() if not k.startswith("MAILSTACK_")}
            env.update({"MAILSTACK_DATA_DIR": str(work / name), **common, **own, **identity_env(store.data_dir, name)})
            with (work / f"{name}.log").open("ab") as log:
                cmd = [sys.executable, "-m", "mailstack", "serve", name]
                procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT))
        for proc, (name, port) in zip(procs, ports.items(), strict=True):
            wait_port(port, proc, work / f"{name}.log")
        asyncio.run(create_account(store.address, store.data_dir))
        assert redis._process is not None
        yield System(
            "mailstack",
            ports["imap"],
            ports["smtp"],
            ACCOUNT,
            ACCOUNT,
            [procs[0].pid],
            {
                "mailstore": (store.proc.pid, False),
                "imap": (procs[0].pid, False),
                "smtp": (procs[1].pid, False),
                "redis": (redis._process.pid, False),
            },
        )
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        store.stop()
        redis.cleanup()


async def create_account(address: str, data_dir: Path) -> None:
    from mailstack.v1 import mailstore_pb2 as pb

    from tests.fixtures.mailstore import open_client

    client = open_client(address, data_dir)
    await client.admin.CreateAccount(pb.CreateAccountRequest(name=ACCOUNT, password=PASSWORD))
    await client.channel.close(None)


def reference(peers_dir: Path, user: str) -> System:
    """The running PEERS_KIT/start.sh PEER_DIR; the user's Maildir is replaced by a new one."""
    shutil.rmtree(peers_dir / "mail" / user, ignore_errors=True)  # a used Maildir slows Dovecot down
    master = dovecot_master(peers_dir)
    postfix = int((peers_dir / "postfix-spool" / "pid" / "master.pid").read_text().split()[0])
    cpu = {"dovecot": (master, True), "postfix": (postfix, True)}
    return System("dovecot", DOVECOT_IMAP, POSTFIX_SMTP, user, f"{user}@test", [master], cpu, memory_tree=True)


# ---------------------------------------------------------------- clients


@dataclass
class IdleClient:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    seen: list[tuple[int, float]] = field(default_factory=list)  # (EXISTS count, arrival time)
    latest: int = 0
    task: asyncio.Task[None] | None = None


async def imap_command(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, tag: bytes, text: bytes) -> int:
    """Send a command, wait for its OK; the last EXISTS count it brought (SELECT's)."""
    writer.write(tag + b" " + text + b"\r\n")
    exists = 0
    while True:
        line = await asyncio.wait_for(reader.readline(), 60)
        if not line:
            raise ConnectionError(f"server closed during {text!r}")
        exists = parse_exists(line) or exists
        if line.startswith(tag + b" "):
            if not line.startswith(tag + b" OK"):
                raise RuntimeError(line.decode(errors="replace"))
            return exists


async def start_idle(system: System, changed: asyncio.Event) -> tuple[IdleClient, int]:
    reader, writer = await asyncio.open_connection("127.0.0.1", system.imap_port)
    await reader.readline()
    await imap_command(reader, writer, b"a", f'LOGIN {system.user} "{PASSWORD}"'.encode())
    exists = await imap_command(reader, writer, b"b", b"SELECT INBOX")
    writer.write(b"c IDLE\r\n")
    while not (line := await asyncio.wait_for(reader.readline(), 60)).startswith(b"+"):
        if not line or line.startswith(b"c "):
            raise RuntimeError(f"IDLE refused: {line!r}")
    client = IdleClient(reader, writer, latest=exists)
    client.task = asyncio.create_task(listen(client, changed))
    return client, exists


async def listen(client: IdleClient, changed: asyncio.Event) -> None:
    """Note every EXISTS with its arrival time until the connection ends."""
    while line := await client.reader.readline():
        count = parse_exists(line)
        if count is not None:
            client.seen.append((count, time.perf_counter()))
            client.latest = max(client.latest, count)
            changed.set()


async def stop_idle(client: IdleClient) -> None:
    with contextlib.suppress(OSError):
        client.writer.write(b"DONE\r\nd LOGOUT\r\n")
        await asyncio.wait_for(client.writer.drain(), 5)
    with contextlib.suppress(asyncio.TimeoutError, OSError):
        await asyncio.wait_for(asyncio.shield(client.task), 5) if client.task else None
    if client.task is not None:
        client.task.cancel()
    client.writer.close()


class Smtp:
    """One SMTP connection that sends message after message (RFC 5321 §3.3), no extensions used."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, port: int) -> Smtp:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        smtp = cls(reader, writer)
        await smtp.reply(b"220")
        await smtp.command(b"EHLO bench.test", b"250")
        return smtp

    async def reply(self, code: bytes) -> None:
        while True:
            line = await asyncio.wait_for(self.reader.readline(), 60)
            if not line.startswith(code):
                raise RuntimeError(f"SMTP: expected {code!r}, got {line!r}")
            if line[3:4] != b"-":
                return

    async def command(self, text: bytes, code: bytes) -> None:
        self.writer.write(text + b"\r\n")
        await self.reply(code)

    async def send(self, rcpt: str, data: bytes) -> float:
        """One message; the time its 250 after DATA arrived."""
        await self.command(b"MAIL FROM:<load@bench.test>", b"250")
        await self.command(b"RCPT TO:<%s>" % rcpt.encode(), b"250")
        await self.command(b"DATA", b"354")
        self.writer.write(dot_stuff(data) + b".\r\n")
        await self.reply(b"250")
        return time.perf_counter()

    async def quit(self) -> None:
        with contextlib.suppress(Exception):
            await self.command(b"QUIT", b"221")
        self.writer.close()


def message(n: int) -> bytes:
    head = f"From: load@bench.test\r\nTo: idle@test\r\nSubject: idle push {n}\r\nMessage-ID: <idle{n}@bench.test>\r\n"
    return (head + "\r\n").encode() + b"A push benchmark message body line of moderate length.\r\n" * 30


# ---------------------------------------------------------------- one system


@dataclass
class Result:
    push: Summary
    rss_before_kib: int
    rss_after_kib: int
    pss_before_kib: int
    pss_after_kib: int
    clients: int
    cpu_ms: dict[str, float]  # CPU ms per delivery, per process (tree)

    def per_connection(self, pss: bool = False) -> float:
        before, after = (self.pss_before_kib, self.pss_after_kib) if pss else (self.rss_before_kib, self.rss_after_kib)
        return (after - before) / self.clients


async def warm_up(system: System) -> None:
    """One login and one delivery before measuring: modules, caches and connections are loaded."""
    changed = asyncio.Event()
    client, exists = await start_idle(system, changed)
    smtp = await Smtp.connect(system.smtp_port)
    await smtp.send(system.rcpt, message(0))
    await smtp.quit()
    deadline = time.monotonic() + 30
    while client.latest <= exists and time.monotonic() < deadline:
        changed.clear()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(changed.wait(), 1)
    await stop_idle(client)


@dataclass(frozen=True)
class Plan:
    clients: int
    deliveries: int
    gap: float  # seconds after a delivery's last EXISTS before the next
    wait: float  # longest wait for one delivery's EXISTS


async def run(system: System, plan: Plan, profile: Path | None) -> Result:
    clients, deliveries = plan.clients, plan.deliveries
    await warm_up(system)
    await asyncio.sleep(1)  # closed sessions gone
    rss_before, pss_before = system.memory(), system.memory("Pss", "smaps_rollup")
    changed = asyncio.Event()
    idlers: list[IdleClient] = []
    base = 0
    for start in range(0, clients, LOGIN_BATCH):
        count = min(clients, start + LOGIN_BATCH) - start
        batch = await asyncio.gather(*(start_idle(system, changed) for _ in range(count)))
        idlers += [c for c, _ in batch]
        base = max([base, *(n for _, n in batch)])
    base = max([base, *(await settled(idlers, changed))])
    rss_after, pss_after = system.memory(), system.memory("Pss", "smaps_rollup")
    smtp = await Smtp.connect(system.smtp_port)
    spies = start_profiles(system, profile)
    cpu_before = system.cpu_seconds()
    sent: dict[int, float] = {}
    try:
        for n in range(1, deliveries + 1):
            target = base + n
            sent[target] = await smtp.send(system.rcpt, message(n))
            deadline = time.monotonic() + plan.wait
            while min(c.latest for c in idlers) < target and time.monotonic() < deadline:
                changed.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(changed.wait(), max(0.001, deadline - time.monotonic()))
            await asyncio.sleep(plan.gap)
        cpu_after = system.cpu_seconds()
    finally:
        stop_profiles(spies)
        await smtp.quit()
        await asyncio.gather(*(stop_idle(c) for c in idlers))
    values, missing = latencies(sent, [c.seen for c in idlers])
    if (counts := {c.latest for c in idlers}) != {base + deliveries}:  # a delivery from before, or one lost
        print(f"{system.name}: the clients ended at EXISTS {sorted(counts)}, not {base + deliveries}", file=sys.stderr)
    cpu = {k: (cpu_after[k] - cpu_before[k]) * 1000 / deliveries for k in cpu_after}
    return Result(Summary.of(values, missing), rss_before, rss_after, pss_before, pss_after, clients, cpu)


async def settled(idlers: list[IdleClient], changed: asyncio.Event, quiet: float = 1.0) -> list[int]:
    """Each client's EXISTS count once none has come for `quiet` seconds (at most 30 s): a delivery
    still on its way from before must not be taken for the first measured one."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        changed.clear()
        try:
            await asyncio.wait_for(changed.wait(), quiet)
        except TimeoutError:
            break
    return [c.latest for c in idlers]


def start_profiles(system: System, folder: Path | None) -> list[subprocess.Popen[bytes]]:
    if folder is None or system.name != "mailstack":
        return []
    folder.mkdir(parents=True, exist_ok=True)
    spy = py_spy()
    out = []
    for label in ("imap", "mailstore"):
        pid = system.cpu[label][0]
        cmd = [spy, "record", "-p", str(pid), "-o", str(folder / f"{label}.svg"), "-r", "200", "--nonblocking"]
        out.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    time.sleep(1)  # attached
    return out


def stop_profiles(spies: list[subprocess.Popen[bytes]]) -> None:
    for spy in spies:
        spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
    for spy in spies:
        try:
            spy.wait(60)
        except subprocess.TimeoutExpired:
            spy.kill()


def report(results: dict[str, Result], title: str) -> None:
    print(title)
    print(f"{'system':<11}{'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'max ms':>8}{'samples':>9}{'missing':>8}")
    for name, r in results.items():
        print(f"{name:<11}{r.push.line()}")
    print("memory per IDLE connection (growth with the sessions open / sessions):")
    for name, r in results.items():
        print(
            f"  {name:<10} VmRSS {r.rss_before_kib / 1024:7.1f} -> {r.rss_after_kib / 1024:7.1f} MiB:"
            f" {r.per_connection():7.1f} KiB; PSS {r.per_connection(pss=True):7.1f} KiB"
        )
    print("CPU ms per delivery:")
    for name, r in results.items():
        parts = ", ".join(f"{k} {v:.2f}" for k, v in r.cpu_ms.items())
        print(f"  {name:<10} {parts} (total {sum(r.cpu_ms.values()):.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peers-dir", help="PEER_DIR of a running PEERS_KIT/start.sh PEER_DIR (Postfix, Dovecot)")
    parser.add_argument("--peer-user", default="u20", help="the Dovecot user (its Maildir is replaced)")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--deliveries", type=int, default=200)
    parser.add_argument("--gap", type=float, default=0.05, help="seconds after a delivery's last EXISTS")
    parser.add_argument("--wait", type=float, default=10.0, help="longest wait for one delivery's EXISTS")
    parser.add_argument("--notifier", choices=("redis", "watch"), default="redis", help="how imap hears of changes")
    parser.add_argument("--profile", type=Path, help="py-spy flame graphs of imap and mailstore into this folder")
    parser.add_argument("--peer-only", action="store_true", help="only Postfix -> Dovecot (with --peers-dir)")
    args = parser.parse_args()
    if not 1 <= args.clients <= 1000 or not 1 <= args.deliveries <= 10000:
        parser.error("--clients 1..1000, --deliveries 1..10000")
    if args.profile and not py_spy():
        parser.error("--profile needs py-spy (pip install py-spy)")
    plan = Plan(args.clients, args.deliveries, args.gap, args.wait)
    results: dict[str, Result] = {}
    if not args.peer_only:
        with tempfile.TemporaryDirectory(prefix="mailstack-idle-") as d, mailstack(Path(d), args.notifier) as system:
            results["mailstack"] = asyncio.run(run(system, plan, args.profile))
    if args.peers_dir:
        peer = reference(Path(args.peers_dir), args.peer_user)
        results["dovecot"] = asyncio.run(run(peer, plan, None))
    title = (
        f"IDLE push: {args.clients} IDLE clients on one account, {args.deliveries} deliveries over SMTP, "
        f"SMTP 250 -> * n EXISTS at each client; mailstack split (mailstore, imap, smtp; notifier {args.notifier})"
    )
    report(results, title)


if __name__ == "__main__":
    main()
