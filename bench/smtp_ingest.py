"""SMTP ingest: smtp-source against mailstack and against Postfix -> Dovecot (LMTP), side by side.

Counts *delivered* messages (visible in the mailbox), not accepted ones, and prints
messages/s for each system and the ratio mailstack / Postfix->Dovecot, plus the
SMTP process's peak memory (VmHWM). Not a test: numbers, never assertions.

    .venv/bin/python bench/smtp_ingest.py                       # embedded default (SQLite + files)
    .venv/bin/python bench/smtp_ingest.py --backend s3-redis    # SeaweedFS + Valkey/Redis
    .venv/bin/python bench/smtp_ingest.py --messages 2000 --sessions 20 --size 4096 --runs 3
    .venv/bin/python bench/smtp_ingest.py --signed              # signed mail, checks off: the baseline
    .venv/bin/python bench/smtp_ingest.py --auth-checks         # signed mail, SPF/DKIM/DMARC/ARC on (ADR 0033)

With --auth-checks the messages are DKIM-signed (both systems get the same file), the smtp
process enforces sender authentication, and a DNS server in this process answers its SPF, DKIM
and DMARC lookups on 127.0.0.1 (not counted in mailstack's CPU). --signed sends the same file
with the checks off: the difference in smtp's "CPU per message" between the two runs is the
cost of the checks.

The reference is started with PEERS_KIT/start.sh PEER_DIR (and stopped again if this script
started it): PEERS_KIT is the folder of the reference-peers kit (start.sh and stop.sh run a
private Postfix and Dovecot in PEER_DIR), given as --peers-kit or MAILSTACK_BENCH_PEERS_KIT.
mailstack runs as two processes, `mailstack serve mailstore` and `mailstack serve smtp`, as
deployed; with --shape all as one `mailstack serve` (every service, the mailstore in-process),
with --workers N worker processes sharing the ports (ADR 0043):

    .venv/bin/python bench/smtp_ingest.py --shape all --workers 2
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mailstack.services.common.config import Settings
from mailstack.services.common.grpc_client import identity_for, open_sync_channel
from mailstack.v1 import mailstore_pb2 as pb
from mailstack.v1 import mailstore_pb2_grpc as pbg

from bench.cpu import dovecot_master, process_cpu, tree_cpu
from tests.fixtures.mailstore import health_check
from tests.fixtures.ports import free_port
from tests.fixtures.serve_process import running_serve

PEERS_KIT_ENV = "MAILSTACK_BENCH_PEERS_KIT"
PEER_SMTP = "127.0.0.1:23025"
USER = "u1"  # --user changes these
ADDRESS = f"{USER}@test"
WAIT_DELIVERED = 600.0
SOURCE_OPTIONS: list[str] = []  # --auth-checks: the signed message file (of --size octets) and the HELO name
AUTH_DOMAIN = "bench.test"  # two labels: a single-label domain has no SPF or DMARC (RFC 7208 §4.3)


def smtp_source(target: str, messages: int, sessions: int, size: int) -> float:
    """Run smtp-source; seconds it took (every message accepted when it returns)."""
    started = time.monotonic()
    subprocess.run(
        ["smtp-source", "-c", *(SOURCE_OPTIONS or ["-l", str(size)]), "-m", str(messages), "-s", str(sessions),
         "-f", f"load@{AUTH_DOMAIN}" if SOURCE_OPTIONS else "load@test", "-t", ADDRESS, target],
        check=True, stdout=subprocess.DEVNULL, timeout=WAIT_DELIVERED,
    )  # fmt: skip
    return time.monotonic() - started


def wait_until(count: object, target: int, started: float) -> float:
    """Seconds from `started` until count() >= target (polling, bounded)."""
    deadline = started + WAIT_DELIVERED
    while time.monotonic() < deadline:
        if count() >= target:  # type: ignore[operator]
            return time.monotonic() - started
        time.sleep(0.02)
    raise TimeoutError(f"only {count()} of {target} delivered")  # type: ignore[operator]


# ---------------------------------------------------------------- reference: Postfix -> Dovecot


def maildir_count(peer_dir: Path) -> int:
    base = peer_dir / "mail" / USER / "Maildir"
    return sum(len(os.listdir(base / sub)) for sub in ("new", "cur") if (base / sub).is_dir())


def run_reference(peer_dir: Path, messages: int, sessions: int, size: int) -> float:
    before = maildir_count(peer_dir)
    started = time.monotonic()
    smtp_source(PEER_SMTP, messages, sessions, size)
    elapsed = wait_until(lambda: maildir_count(peer_dir) - before, messages, started)
    return messages / elapsed


# ---------------------------------------------------------------- --auth-checks


def auth_setup(work: Path, size: int) -> tuple[object, dict[str, str]]:
    """A DNS server with the bench domain's SPF, DKIM key and DMARC p=reject, a DKIM-signed message
    file for smtp-source (-F; LF lines, it sends CRLF), and the smtp process's settings."""
    import base64

    import dkim
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from tests.fixtures.dns_server import DnsServer

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    dns = DnsServer().start()
    dns.txt(AUTH_DOMAIN, "v=spf1 ip4:127.0.0.1 -all")
    dns.txt(f"mail.{AUTH_DOMAIN}", "v=spf1 a -all")
    dns.add(f"mail.{AUTH_DOMAIN}", "A", "127.0.0.1")
    dns.txt(f"sel._domainkey.{AUTH_DOMAIN}", f"v=DKIM1; k=rsa; p={base64.b64encode(public).decode()}")
    dns.txt(f"_dmarc.{AUTH_DOMAIN}", "v=DMARC1; p=reject")
    line = b"x" * 70 + b"\r\n"
    body = line * max(1, size // len(line))
    message = (
        f"From: Load <load@{AUTH_DOMAIN}>\r\nTo: {ADDRESS}\r\nSubject: bench\r\n"
        f"Message-ID: <bench@{AUTH_DOMAIN}>\r\n\r\n"
    ).encode() + body
    signature = dkim.sign(message, b"sel", AUTH_DOMAIN.encode(), pem, canonicalize=(b"relaxed", b"relaxed"),
                          include_headers=[b"from", b"to", b"subject", b"message-id"])  # fmt: skip
    path = work / "signed.eml"
    path.write_bytes((bytes(signature) + message).replace(b"\r\n", b"\n"))
    SOURCE_OPTIONS[:] = ["-F", str(path), "-M", f"mail.{AUTH_DOMAIN}"]
    env = {"MAILSTACK_SMTP_SENDER_AUTH": "enforce", "MAILSTACK_DNS_SERVERS": dns.address,
           "MAILSTACK_AUTHSERV_ID": "bench.mailstack.test"}  # fmt: skip
    return dns, env


# ---------------------------------------------------------------- mailstack


class Mailstack:
    def __init__(self, backend: str, work: Path, shape: str = "split", workers: int = 1) -> None:
        self.work = work
        self.shape, self.workers = shape, workers
        self.serving = contextlib.ExitStack()  # --shape all: the `mailstack serve` until stop()
        self.pids: dict[str, int] = {}
        self.grpc_address = f"127.0.0.1:{free_port()}"
        self.send_address = f"127.0.0.1:{free_port()}"  # its plaintext health tells when the mailstore is up
        self.smtp_port = free_port()
        self.env = dict(os.environ)
        self.env.update(
            {
                "MAILSTACK_DATA_DIR": str(work / "data"),
                "MAILSTACK_MAILSTORE_LISTEN": self.grpc_address,
                "MAILSTACK_MAILSTORE_ADDR": self.grpc_address,
                "MAILSTACK_SEND_LISTEN": self.send_address,
                "MAILSTACK_SMTP_PORT": str(self.smtp_port),
                "MAILSTACK_SUBMISSION_PORT": str(free_port()),
                "MAILSTACK_SUBMISSIONS_PORT": str(free_port()),
                "MAILSTACK_LMTP_PORT": "0",
                "MAILSTACK_SMTP_MAX_CONNECTIONS_PER_IP": "0",
                "MAILSTACK_LOG_LEVEL": "WARNING",
            }
        )
        self.settings = Settings(data_dir=str(work / "data"))  # the identities both processes use (ADR 0009)
        self.extra: list[object] = []
        if backend == "s3-redis":
            from tests.fixtures.redis_server import RedisServer
            from tests.fixtures.s3_server import S3Server, make_bucket

            s3 = S3Server()
            s3.start()
            redis = RedisServer()
            redis.start()
            self.extra = [s3, redis]
            self.env.update({"AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key})
            os.environ.update({"AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key})
            bucket = make_bucket(s3.endpoint)
            self.env.update(
                {
                    "MAILSTACK_BLOB_URL": f"s3://{bucket}/bench",
                    "MAILSTACK_S3_ENDPOINT": s3.endpoint,
                    "MAILSTACK_EVENTS_URL": redis.url,
                    "MAILSTACK_QUOTA_URL": redis.url,
                }
            )
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def send_signed(self, size: int, checks: bool) -> None:
        """Send the DKIM-signed message; with `checks` the smtp process also verifies it."""
        dns, env = auth_setup(self.work, size)
        if checks:
            self.env.update(env)
        self.extra.append(dns)

    def start(self) -> None:
        (self.work / "data").mkdir(parents=True, exist_ok=True)
        if self.shape == "all":
            self._start_all()
            return
        for name in ("mailstore", "smtp"):
            log = (self.work / f"{name}.log").open("ab")
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", "mailstack", "serve", name], env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
            if name == "mailstore":
                self._wait_grpc()
        self._wait_port(self.smtp_port)
        self.pids = {name: proc.pid for name, proc in self.procs.items()}
        self._create_account()

    def _start_all(self) -> None:
        """One `mailstack serve` with this backend's settings (the ports are the fixture's own)."""
        kept = ("MAILSTACK_BLOB_URL", "MAILSTACK_S3_ENDPOINT", "MAILSTACK_EVENTS_URL", "MAILSTACK_QUOTA_URL",
                "MAILSTACK_SMTP_SENDER_AUTH", "MAILSTACK_DNS_SERVERS", "MAILSTACK_AUTHSERV_ID")  # fmt: skip
        extra = {name: value for name, value in self.env.items() if name in kept}
        extra.update(
            {
                "MAILSTACK_WORKERS": str(self.workers),
                "MAILSTACK_SMTP_MAX_CONNECTIONS_PER_IP": "0",
                "MAILSTACK_LOG_LEVEL": "WARNING",
                "MAILSTACK_PASSWORD_SCRYPT_LOG_N": "14",  # the default: nobody logs in here
            }
        )
        served = self.serving.enter_context(running_serve(self.work, extra))
        self.smtp_port = served.ports["smtp"]
        self.grpc_address = f"127.0.0.1:{served.ports['mailstore']}"
        workers = served.worker_pids() if self.workers > 1 else []
        self.pids = {"serve": served.proc.pid, **{f"worker{n}": pid for n, pid in enumerate(workers)}}
        self._create_account()

    def _create_account(self) -> None:
        channel = open_sync_channel(self.grpc_address, identity_for(self.settings, "admin"))
        pbg.AdminStub(channel).CreateAccount(pb.CreateAccountRequest(name=ADDRESS, password="Secret123"), timeout=30)
        channel.close()

    def _wait_grpc(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if health_check(self.send_address):
                return
            time.sleep(0.1)
        raise RuntimeError("mailstore did not start; see " + str(self.work / "mailstore.log"))

    def _wait_port(self, port: int) -> None:
        import socket

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("smtp did not start; see " + str(self.work / "smtp.log"))

    def count(self) -> int:
        with open_sync_channel(self.grpc_address, identity_for(self.settings, "imap")) as channel:
            status = pbg.MailstoreStub(channel).GetMailboxStatus(
                pb.MailboxStatusRequest(account=ADDRESS, name="INBOX"), timeout=30
            )
        return int(status.messages)

    def smtp_peak_rss_kib(self) -> int:
        """The smtp process's peak RSS (--shape all: the largest process's, smtp among the rest)."""
        peaks = [0]
        for name, pid in self.pids.items():
            if name in ("mailstore",):
                continue
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peaks.append(int(line.split()[1]))
        return max(peaks)

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time (user + system) each mailstack process has used so far: where the time goes."""
        return {name: process_cpu(pid) for name, pid in self.pids.items()}

    def stop(self) -> None:
        self.serving.close()
        for proc in reversed(list(self.procs.values())):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
        for extra in self.extra:
            extra.stop()  # type: ignore[attr-defined]


def reference_cpu(peer_dir: Path) -> float:
    """CPU the whole reference has used so far: Postfix's and Dovecot's process trees."""
    postfix = int((peer_dir / "postfix-spool" / "pid" / "master.pid").read_text().split()[0])
    return tree_cpu(postfix) + tree_cpu(dovecot_master(peer_dir))


def run_mailstack(stack: Mailstack, messages: int, sessions: int, size: int) -> float:
    before = stack.count()
    started = time.monotonic()
    smtp_source(f"127.0.0.1:{stack.smtp_port}", messages, sessions, size)
    elapsed = wait_until(lambda: stack.count() - before, messages, started)
    return messages / elapsed


# ---------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=["embedded", "s3-redis"], default="embedded")
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--runs", type=int, default=3, help="alternating runs of each; medians are compared")
    parser.add_argument(
        "--peer-dir",
        default=str(Path(tempfile.gettempdir()) / "mailstack-bench-peer"),
        help="PEER_DIR: a running PEERS_KIT/start.sh PEER_DIR is reused as it is",
    )
    parser.add_argument(
        "--peers-kit", default=os.environ.get(PEERS_KIT_ENV, ""), help=f"PEERS_KIT (default ${PEERS_KIT_ENV})"
    )
    parser.add_argument("--user", default="u1", help="the peer user (uN) and mailstack account (uN@test) to fill")
    parser.add_argument("--auth-checks", action="store_true", help="signed mail, SPF/DKIM/DMARC/ARC enforced")
    parser.add_argument("--signed", action="store_true", help="the same signed mail, checks off (the baseline)")
    parser.add_argument(
        "--shape", choices=["split", "all"], default="split", help="two processes (split) or one `mailstack serve`"
    )
    parser.add_argument("--workers", type=int, default=1, help="--shape all: worker processes (MAILSTACK_WORKERS)")
    args = parser.parse_args()
    global USER, ADDRESS
    USER, ADDRESS = args.user, f"{args.user}@test"
    if not shutil.which("smtp-source"):
        print("smtp-source not found (Debian package postfix)", file=sys.stderr)
        return 2

    if not args.peers_kit:
        print(f"--peers-kit or {PEERS_KIT_ENV}: the folder with the peers' start.sh and stop.sh", file=sys.stderr)
        return 2
    kit, peer_dir = Path(args.peers_kit), Path(args.peer_dir)
    peer_was_running = (peer_dir / "postfix-spool" / "pid" / "master.pid").exists()
    subprocess.run([str(kit / "start.sh"), str(peer_dir)], check=True, stdout=subprocess.DEVNULL)
    # Both start empty: mailstack gets a new data folder, the peer user a new Maildir. Left to
    # grow run after run, Dovecot's delivery slowed from 330 to 37 msg/s (a Maildir's new/ folder
    # never shrinks once it held 60,000 files; expunging does not help).
    shutil.rmtree(peer_dir / "mail" / USER, ignore_errors=True)
    work = Path(tempfile.mkdtemp(prefix="mailstack-bench-"))
    stack = Mailstack(args.backend, work, args.shape, args.workers)
    ours: list[float] = []
    theirs: list[float] = []
    try:
        if args.auth_checks or args.signed:
            stack.send_signed(args.size, checks=args.auth_checks)
        stack.start()
        # Warm-up (connections, caches, SQLite file growth), not counted.
        warmup = min(100, args.messages)
        run_mailstack(stack, warmup, args.sessions, args.size)
        run_reference(peer_dir, warmup, args.sessions, args.size)
        cpu_before, ref_cpu = stack.cpu_seconds(), 0.0
        for run in range(args.runs):
            ours.append(run_mailstack(stack, args.messages, args.sessions, args.size))
            ref_before = reference_cpu(peer_dir)
            theirs.append(run_reference(peer_dir, args.messages, args.sessions, args.size))
            ref_cpu += reference_cpu(peer_dir) - ref_before
            print(f"run {run + 1}: mailstack {ours[-1]:.0f} msg/s, Postfix->Dovecot {theirs[-1]:.0f} msg/s", flush=True)
        peak = stack.smtp_peak_rss_kib()
        cpu_after = stack.cpu_seconds()
        total = args.messages * args.runs
        cpu = {n: (cpu_after[n] - cpu_before[n]) * 1000 / total for n in cpu_after}
    finally:
        stack.stop()
        if not peer_was_running:
            subprocess.run([str(kit / "stop.sh"), str(peer_dir)], check=False, stdout=subprocess.DEVNULL)
        shutil.rmtree(work, ignore_errors=True)
    ours_median, theirs_median = statistics.median(ours), statistics.median(theirs)
    print(
        f"\nbackend={args.backend} shape={args.shape} workers={args.workers} "
        f"messages={args.messages} sessions={args.sessions} size={args.size} "
        f"runs={args.runs} cpus={os.cpu_count()} signed={args.signed or args.auth_checks} "
        f"auth_checks={'on' if args.auth_checks else 'off'} "
        "(load generator shares the CPUs)\n"
        f"mailstack        {ours_median:8.1f} delivered msg/s (median)\n"
        f"Postfix->Dovecot {theirs_median:8.1f} delivered msg/s (median)\n"
        f"ratio            {ours_median / theirs_median:8.2f}x\n"
        f"smtp peak RSS    {peak / 1024:8.1f} MiB\n"
        f"CPU per message  "
        + ", ".join(f"{n} {ms:.2f} ms" for n, ms in cpu.items())
        + f" (total {sum(cpu.values()):.2f} ms); Postfix+Dovecot {ref_cpu * 1000 / total:.2f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
