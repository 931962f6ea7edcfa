#!/usr/bin/env python3
"""CPU of one S3 blob PUT, GET and DELETE in the mailstore's process: the boto3 store against the
lean client's (ADR 0042), side by side in the same run, against a real SeaweedFS on loopback.

Each phase is time.process_time around --ops calls (--concurrency at a time) of the store's own
methods (what the mailstore calls; the cache in front of S3 is off, so every GET reaches S3), so
the CPU of boto3's worker threads counts. The two clients alternate, --rounds times; the best round of each
is reported (the least disturbed by the rest of the machine), with wall time per call beside it.
SeaweedFS runs in its own process: its CPU is not in these numbers.

    .venv/bin/python bench/s3_put_cpu.py [--ops 300] [--rounds 3] [--size 10240] [--concurrency 1]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mailstack.storage.blob.base import BlobStore
from mailstack.storage.registry import open_blob_store

from tests.fixtures.s3_server import S3Server, make_bucket

CLIENTS = ("boto3", "lean")
PHASES = ("put", "get", "delete")
MAX_OPS = 5000


async def _calls(store: BlobStore, phase: str, keys: list[str], body: bytes) -> None:
    for key in keys:
        if phase == "put":
            await store.put(key, body)
        elif phase == "get":
            if len(await store.get(key)) != len(body):
                raise SystemExit(f"GET {key}: wrong length")
        else:
            await store.delete(key)


async def _phase(store: BlobStore, phase: str, keys: list[str], body: bytes, lanes: int) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one call per key, in `lanes` concurrent sequences."""
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(_calls(store, phase, keys[lane::lanes], body) for lane in range(lanes)))
    return time.process_time() - cpu, time.perf_counter() - wall


async def _round(store: BlobStore, ops: int, body: bytes, tag: str, lanes: int) -> dict[str, tuple[float, float]]:
    keys = [f"bench-{tag}-{i:05d}" for i in range(ops)]
    return {phase: await _phase(store, phase, keys, body, lanes) for phase in PHASES}


async def run(
    endpoint: str, bucket: str, ops: int, rounds: int, size: int, lanes: int
) -> dict[str, dict[str, list[float]]]:
    body = random.Random(1).randbytes(size)
    stores = {name: open_blob_store(f"s3://{bucket}/bench", s3_endpoint=endpoint, s3_client=name) for name in CLIENTS}
    best: dict[str, dict[str, list[float]]] = {name: {p: [1e9, 1e9] for p in PHASES} for name in CLIENTS}
    try:
        for name, store in stores.items():
            await _round(store, 20, body, f"warm-{name}", lanes)  # connections open, code paths warm
        for r in range(rounds):
            for name in CLIENTS if r % 2 == 0 else reversed(CLIENTS):
                for phase, (cpu, wall) in (await _round(stores[name], ops, body, f"{name}-{r}", lanes)).items():
                    best[name][phase][0] = min(best[name][phase][0], cpu / ops)
                    best[name][phase][1] = min(best[name][phase][1], wall / ops)
    finally:
        for store in stores.values():
            await store.close()
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ops", type=int, default=300, help=f"calls per phase per round (at most {MAX_OPS})")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, default=10 * 1024, help="body size in bytes")
    parser.add_argument("--concurrency", type=int, default=1, help="calls in flight at once (1..16)")
    args = parser.parse_args()
    if not 1 <= args.ops <= MAX_OPS or not 1 <= args.rounds <= 20 or not 1 <= args.concurrency <= 16:
        parser.error(f"--ops 1..{MAX_OPS}, --rounds 1..20, --concurrency 1..16")
    server = S3Server()
    os.environ.update(
        AWS_ACCESS_KEY_ID=server.access_key, AWS_SECRET_ACCESS_KEY=server.secret_key, AWS_EC2_METADATA_DISABLED="true"
    )
    server.start()
    try:
        bucket = make_bucket(server.endpoint)
        best = asyncio.run(run(server.endpoint, bucket, args.ops, args.rounds, args.size, args.concurrency))
    finally:
        server.close()
    print(
        f"S3 blob store CPU per call, {args.size}-byte bodies, best of {args.rounds} x {args.ops},"
        f" {args.concurrency} in flight (SeaweedFS)"
    )
    print(
        f"{'call':<8}{'boto3 CPU ms':>14}{'lean CPU ms':>13}{'boto3/lean':>12}{'boto3 wall ms':>15}{'lean wall ms':>14}"
    )
    for phase in PHASES:
        boto_cpu, boto_wall = best["boto3"][phase]
        lean_cpu, lean_wall = best["lean"][phase]
        print(
            f"{phase:<8}{boto_cpu * 1e3:>14.3f}{lean_cpu * 1e3:>13.3f}{boto_cpu / lean_cpu:>11.1f}x"
            f"{boto_wall * 1e3:>15.3f}{lean_wall * 1e3:>14.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
