#!/usr/bin/env python3
"""Deliveries/s and fetches/s through the mailstore's gRPC API (not a test).

Runs the mailstore as its own process (as deployed), twice: on the embedded default
(SQLite + files + in-process events) and on SeaweedFS S3 + Redis (events and quota),
both started here on loopback. Prints one table.

    .venv/bin/python bench/mailstore_grpc.py [--messages 2000] [--size 4096] [--concurrency 20]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mailstack.services.common.config import env_name
from mailstack.v1 import mailstore_pb2 as pb

from tests.fixtures.mailstore import MailstoreProcess, deliver, fetch_body, open_client
from tests.fixtures.redis_server import RedisServer
from tests.fixtures.s3_server import S3Server, make_bucket

ACCOUNTS = [f"u{i}@bench.test" for i in range(1, 11)]


def message(n: int, size: int) -> bytes:
    head = f"From: load@bench.test\r\nTo: u@bench.test\r\nSubject: bench {n}\r\nMessage-ID: <{n}@bench>\r\n\r\n"
    line = b"x" * 76 + b"\r\n"
    body = line * max(1, (size - len(head)) // len(line))
    return head.encode() + body


async def run(address: str, data_dir: Path, messages: int, size: int, concurrency: int) -> tuple[float, float]:
    client = open_client(address, data_dir)
    for account in ACCOUNTS:
        await client.admin.CreateAccount(pb.CreateAccountRequest(name=account, password="Secret123"))
    queue: asyncio.Queue[int] = asyncio.Queue()
    for n in range(messages):
        queue.put_nowait(n)
    uids: list[tuple[str, int]] = []

    async def deliverer() -> None:
        while not queue.empty():
            n = queue.get_nowait()
            account = ACCOUNTS[n % len(ACCOUNTS)]
            reply = await deliver(client, [account], message(n, size))
            assert reply.results[0].status == pb.RECIPIENT_LOCAL, reply
            uids.append((account, reply.results[0].uid))

    start = time.perf_counter()
    await asyncio.gather(*(deliverer() for _ in range(concurrency)))
    deliveries = messages / (time.perf_counter() - start)

    fetch_queue: asyncio.Queue[tuple[str, int]] = asyncio.Queue()
    for item in uids:
        fetch_queue.put_nowait(item)

    async def fetcher() -> None:
        while not fetch_queue.empty():
            account, uid = fetch_queue.get_nowait()
            body = await fetch_body(client, account, "INBOX", uid)
            assert len(body) > 0

    start = time.perf_counter()
    await asyncio.gather(*(fetcher() for _ in range(concurrency)))
    fetches = len(uids) / (time.perf_counter() - start)
    await client.channel.close()
    return deliveries, fetches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--concurrency", type=int, default=20)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="mailstack-bench-") as tmp:
        proc = MailstoreProcess(Path(tmp) / "embedded", {env_name("log_level"): "WARNING"})
        proc.start()
        try:
            rows.append(
                (
                    "embedded (sqlite+file+memory)",
                    *asyncio.run(run(proc.address, proc.data_dir, args.messages, args.size, args.concurrency)),
                )
            )
        finally:
            proc.stop()

        s3 = S3Server(str(Path(tmp) / "s3"))
        redis = RedisServer()
        s3.start()
        redis.start()
        try:
            bucket = make_bucket_with_env(s3)
            env = {
                env_name("blob_url"): f"s3://{bucket}/mail",
                env_name("s3_endpoint"): s3.endpoint,
                env_name("events_url"): redis.url,
                env_name("quota_url"): redis.url,
                env_name("log_level"): "WARNING",
                "AWS_ACCESS_KEY_ID": s3.access_key,
                "AWS_SECRET_ACCESS_KEY": s3.secret_key,
            }
            # The body cache (storage/blob/cache.py) serves the fetches of just-delivered mail;
            # without it every fetch is an S3 GET.
            for label, cache in (("", "67108864"), (", no body cache", "0")):
                proc = MailstoreProcess(Path(tmp) / f"s3redis{cache}", {**env, env_name("blob_cache_bytes"): cache})
                proc.start()
                try:
                    result = asyncio.run(run(proc.address, proc.data_dir, args.messages, args.size, args.concurrency))
                    rows.append((f"seaweedfs s3 + redis{label}", *result))
                finally:
                    proc.stop()
        finally:
            s3.close()
            redis.stop()
    print(f"\n{args.messages} messages of {args.size} bytes, {args.concurrency} concurrent gRPC clients, 10 accounts")
    print(f"{'backend':40} {'deliveries/s':>13} {'fetches/s':>10}")
    for name, d, f in rows:
        print(f"{name:40} {d:13.0f} {f:10.0f}")


def make_bucket_with_env(s3: S3Server) -> str:
    os.environ["AWS_ACCESS_KEY_ID"] = s3.access_key
    os.environ["AWS_SECRET_ACCESS_KEY"] = s3.secret_key
    return make_bucket(s3.endpoint)


if __name__ == "__main__":
    main()
