#!/usr/bin/env python3
"""CPU per call of the mailstore's gRPC API, in the mailstore and in the caller (not a test).

Why the frontends make as few calls as they can: on the 2-core development machine a grpc.aio
call costs about 0.3 ms (unary) to 0.6 ms (server streaming) of CPU in the caller and about
0.5-1 ms in the mailstore, whatever it carries. The mailstore runs as its own process (as
deployed, embedded default); the caller is this process. Prints one table.

    .venv/bin/python bench/grpc_calls.py [--calls 300]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mailstack.services.common.config import env_name
from mailstack.v1 import mailstore_pb2 as pb

from bench.cpu import process_cpu
from tests.fixtures.mailstore import MailstoreProcess, deliver, open_client

ACCOUNT = "calls@bench.test"
PASSWORD = "Secret123"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=300, help="calls of each kind")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="grpc-calls-") as tmp:
        # the cheapest allowed hash: the login row is about the call, not scrypt
        store = MailstoreProcess(Path(tmp) / "store", {env_name("password_scrypt_log_n"): "10"})
        store.start()
        client = open_client(store.address, store.data_dir, store.send_address)
        try:
            await client.admin.CreateAccount(pb.CreateAccountRequest(name=ACCOUNT, password=PASSWORD))
            for n in range(100):
                await deliver(client, [ACCOUNT], f"Subject: {n}\r\n\r\nbody {n}\r\n".encode())
            s = client.store
            lease = pb.LeaseRequest(name=f"bench:{ACCOUNT}", holder="bench", ttl_seconds=60)

            async def drain(call: object) -> None:
                async for _ in call:  # type: ignore[attr-defined]
                    pass

            calls: dict[str, Callable[[], Awaitable[object]]] = {
                "GetMailboxStatus (unary)": lambda: s.GetMailboxStatus(
                    pb.MailboxStatusRequest(account=ACCOUNT, name="INBOX")
                ),
                "AcquireLease (unary, a write)": lambda: s.AcquireLease(lease),
                "Authenticate (unary, scrypt 2^10)": lambda: s.Authenticate(
                    pb.AuthenticateRequest(username=ACCOUNT, password=PASSWORD)
                ),
                "Authenticate + lease + listing of 100": lambda: s.Authenticate(
                    pb.AuthenticateRequest(
                        username=ACCOUNT,
                        password=PASSWORD,
                        lease=pb.LeaseRequest(name="bench:", holder="bench", ttl_seconds=60),
                        listing=pb.FetchMetadataRequest(mailbox="INBOX", fields=pb.MetadataFields(size=True)),
                    )
                ),
                "FetchMetadata of 100 (stream)": lambda: drain(
                    s.FetchMetadata(
                        pb.FetchMetadataRequest(account=ACCOUNT, mailbox="INBOX", fields=pb.MetadataFields(size=True))
                    )
                ),
                "FetchBodies of 1 (stream)": lambda: drain(
                    s.FetchBodies(
                        pb.FetchBodiesRequest(
                            account=ACCOUNT,
                            mailbox="INBOX",
                            uids=pb.UidSet(ranges=[pb.UidRange(first=1, last=1)]),
                            sections=[pb.BodySection(section=pb.Section())],
                        )
                    )
                ),
            }
            assert store.proc is not None
            print(f"{args.calls} calls of each kind, mailstore pid {store.proc.pid}")
            print(f"{'call':<38} {'mailstore ms':>13} {'caller ms':>10} {'wall ms':>8}")
            for name, call in calls.items():
                await call()
                pid = store.proc.pid
                store_start, own_start, wall_start = process_cpu(pid), time.process_time(), time.perf_counter()
                for _ in range(args.calls):
                    await call()
                per = 1000 / args.calls
                store_ms = (process_cpu(pid) - store_start) * per
                own_ms = (time.process_time() - own_start) * per
                wall_ms = (time.perf_counter() - wall_start) * per
                print(f"{name:<38} {store_ms:>13.3f} {own_ms:>10.3f} {wall_ms:>8.3f}")
        finally:
            await client.channel.close(None)
            store.stop()


if __name__ == "__main__":
    asyncio.run(main())
