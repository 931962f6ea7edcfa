"""Outbound: Send calls/s into the queue, then outbound deliveries/s to a local smtp-sink.

Runs `mailstack serve mailstore` and `mailstack serve outbound` as separate processes (as
deployed); the remote MX is Postfix's smtp-sink on 127.0.0.1 (the static resolver points
every domain at it). Not a test: numbers, never assertions.

    .venv/bin/python bench/outbound.py
    .venv/bin/python bench/outbound.py --messages 2000 --clients 16 --recipients 2 --size 4096 --concurrency 32
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mailstack.services.common.config import env_name
from mailstack.v1 import send_pb2 as spb
from mailstack.v1 import send_pb2_grpc as spbg

from tests.fixtures.mailstore import MailstoreProcess
from tests.fixtures.ports import free_port

WAIT = 600.0


def send_all(address: str, token: str, messages: int, clients: int, recipients: int, size: int) -> float:
    """Seconds for `messages` Send calls from `clients` threads (each its own channel)."""
    body = ("x" * 76 + "\n") * max(1, size // 77)
    per_client = [messages // clients + (1 if i < messages % clients else 0) for i in range(clients)]
    errors: list[BaseException] = []

    def client(count: int, index: int) -> None:
        with grpc.insecure_channel(address) as channel:
            sender = spbg.SenderStub(channel)
            auth = (("authorization", f"Bearer {token}"),)
            for n in range(count):
                message = spb.StructuredMessage(
                    to=[f"r{n}-{k}@d{k}.bench" for k in range(recipients)], subject=f"bench {index}/{n}", text=body
                )
                setattr(message, "from", "load@shop.bench")
                try:
                    sender.Send(iter([spb.SendRequest(header=spb.SendHeader(structured=message))]), metadata=auth)
                except grpc.RpcError as err:
                    errors.append(err)
                    return

    threads = [threading.Thread(target=client, args=(c, i)) for i, c in enumerate(per_client)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise SystemExit(f"Send failed: {errors[0]}")
    return time.monotonic() - started


def queue_depth(data_dir: Path) -> int:
    import sqlite3

    with sqlite3.connect(f"file:{data_dir / 'metadata.sqlite3'}?mode=ro", uri=True) as db:
        return int(db.execute("SELECT COUNT(*) FROM outbound_messages WHERE done = 0").fetchone()[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=8, help="concurrent Send callers")
    parser.add_argument("--recipients", type=int, default=1, help="remote recipients per message (one domain each)")
    parser.add_argument("--size", type=int, default=2048, help="approximate body bytes")
    parser.add_argument("--concurrency", type=int, default=16, help="outbound_concurrency of the worker")
    args = parser.parse_args()
    sink = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
    work = Path(tempfile.mkdtemp(prefix="bench-outbound-"))
    sink_port = free_port()
    as_root = ["-u", "nobody"] if os.geteuid() == 0 else []  # smtp-sink refuses to run as root
    sink_proc = subprocess.Popen([sink, *as_root, f"127.0.0.1:{sink_port}", "256"], stdout=subprocess.DEVNULL)
    mailstore = MailstoreProcess(work / "data", {env_name("orphan_sweep_seconds"): "0"})
    worker: subprocess.Popen[bytes] | None = None
    try:
        mailstore.start()
        out = subprocess.run(
            [sys.executable, "-m", "mailstack", "--mailstore", mailstore.address, "--json", "token", "create",
             "--name", "bench", "--from-domain", "shop.bench"],
            check=True, capture_output=True, text=True,
        ).stdout  # fmt: skip
        import json

        token = json.loads(out)["token"]
        total = args.messages * args.recipients
        seconds = send_all(mailstore.send_address, token, args.messages, args.clients, args.recipients, args.size)
        print(f"Send into the queue:   {args.messages} calls ({total} remote recipients) in {seconds:.2f} s"
              f" = {args.messages / seconds:.0f} calls/s ({args.clients} clients, ~{args.size} B)")  # fmt: skip
        env = dict(mailstore.env)
        env.update({
            env_name("data_dir"): str(work / "worker"),
            env_name("outbound_resolver"): f"static:*=127.0.0.1:{sink_port}",
            env_name("outbound_concurrency"): str(args.concurrency),
            env_name("outbound_poll_ms"): "50",
        })  # fmt: skip
        started = time.monotonic()
        worker = subprocess.Popen([sys.executable, "-m", "mailstack", "serve", "outbound"], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        deadline = started + WAIT
        while queue_depth(work / "data") > 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        seconds = time.monotonic() - started
        left = queue_depth(work / "data")
        print(f"Outbound to smtp-sink: {args.messages - left} messages ({total} recipients) in {seconds:.2f} s"
              f" = {(args.messages - left) / seconds:.0f} messages/s (worker concurrency {args.concurrency},"
              f" includes worker start-up)")  # fmt: skip
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(15)
        mailstore.stop()
        sink_proc.terminate()
        sink_proc.wait(10)
        if not os.environ.get("BENCH_KEEP"):
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
