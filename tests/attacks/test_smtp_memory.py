"""Large messages without login: SMTP's memory stays within its in-flight budget.

The attack (issue 13, section 6): eight clients send a 48 MiB message each to port 25 at once,
no login needed; SMTP held every body several times over (1.5 GiB). SMTP runs here as its own
process (`mailstack serve smtp`) so its peak resident size (VmHWM) is its own; the mailstore is
another process. What is asserted is memory, outcomes and content, never timing. A second,
in-process test walks through each refusal (MAIL SIZE=, DATA, BDAT) one at a time.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from mailstack.v1 import mailstore_pb2 as pb

from tests.e2e.smtp_support import ALICE, PASSWORD, RawSmtp, smtp_stack, without_trace
from tests.fixtures.mailstore import MailstoreProcess, fetch_body, identity_env, open_client
from tests.fixtures.ports import free_port

MiB = 1024 * 1024
CLIENTS = 8
BIG = 48 * MiB
BUDGET = 128 * MiB  # MAILSTACK_SMTP_INFLIGHT_BYTES for this test
# What SMTP may hold beyond its idle size: the budget's bodies, the pieces being sent to the
# mailstore and buffer slack (a quarter of the budget), and a fixed allowance for the rest.
BOUND_OVER_IDLE = BUDGET + BUDGET // 4 + 48 * MiB
SMALL = b"From: small@remote.test\r\nSubject: small\r\n\r\nstill served\r\n"


def big_message(n: int) -> bytes:
    """BIG octets in 78-octet lines, as a base64 attachment is sent; each line names its client and number."""
    header = f"From: big{n}@remote.test\r\nSubject: big {n}\r\n\r\n".encode()
    filler = b"x" * 64
    lines = (b"%02d%010d%s\r\n" % (n, i, filler) for i in range((BIG - len(header) - 2) // 78))
    body = header + b"".join(lines)
    return body + b"y" * (BIG - len(body) - 2) + b"\r\n"


def memory_kib(pid: int, field: str) -> int:
    """VmHWM (peak) or VmRSS (now) of a process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/{pid}/status")


@contextmanager
def smtp_process(folder: Path, mailstore_addr: str, store_dir: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """`mailstack serve smtp` configured only by environment; (process, port 25's stand-in)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILSTACK_")}
    env.update(
        {
            "MAILSTACK_DATA_DIR": str(folder),
            "MAILSTACK_BIND": "127.0.0.1",
            "MAILSTACK_MAILSTORE_ADDR": mailstore_addr,
            "MAILSTACK_SMTP_PORT": str(port),
            "MAILSTACK_SUBMISSION_PORT": str(free_port()),
            "MAILSTACK_SUBMISSIONS_PORT": str(free_port()),
            "MAILSTACK_LMTP_PORT": "0",
            "MAILSTACK_SMTP_INFLIGHT_BYTES": str(BUDGET),
            **identity_env(store_dir, "smtp"),  # its own identity, as a deployment mounts it
        }
    )
    folder.mkdir(parents=True, exist_ok=True)
    log_path = folder / "smtp.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mailstack", "serve", "smtp"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            if "listening on" in log_path.read_text(errors="replace"):
                break
            time.sleep(0.1)
        assert proc.poll() is None, log_path.read_text(errors="replace")
        yield proc, port
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


async def send(port: int, message: bytes, piece: int = MiB) -> str:
    """One transaction on a raw socket; the first reply that is not a success, or the last one."""
    smtp = await RawSmtp.connect(port)
    try:
        await smtp.greet()
        for line in (f"MAIL FROM:<x@remote.test> SIZE={len(message)}", f"RCPT TO:<{ALICE}>", "DATA"):
            reply = await smtp.cmd(line)
            if not reply.startswith(("250", "354")):
                return reply
        for start in range(0, len(message), piece):
            await smtp.send(message[start : start + piece])
        await smtp.send(b".\r\n")
        return await smtp.reply(wait=300)
    finally:
        await smtp.close()


@pytest.mark.slow
async def test_concurrent_large_messages_stay_within_the_inflight_budget(tmp_path: Path) -> None:
    store = MailstoreProcess(tmp_path / "store")
    await asyncio.to_thread(store.start)
    try:
        client = open_client(store.address, store.data_dir, store.send_address)
        await client.admin.CreateAccount(pb.CreateAccountRequest(name=ALICE, password=PASSWORD))
        messages = [big_message(n) for n in range(CLIENTS)]
        with smtp_process(tmp_path / "smtp", store.address, store.data_dir) as (proc, port):
            assert (await send(port, SMALL)).startswith("250 ")  # warmed up: channel open, code loaded
            idle_kib = memory_kib(proc.pid, "VmRSS")

            burst = asyncio.gather(*(send(port, m) for m in messages))
            small_replies = []
            for _ in range(500):  # another client, served meanwhile (bounded: at most 500 tries)
                small_replies.append(await send(port, SMALL))
                if burst.done():
                    break
                await asyncio.sleep(0.1)
            big_replies = await asyncio.wait_for(burst, 600)
            peak_kib = memory_kib(proc.pid, "VmHWM")
        assert store.proc is not None
        store_kib = memory_kib(store.proc.pid, "VmHWM")

        print(f"smtp VmRSS idle {idle_kib // 1024} MiB, VmHWM after the burst {peak_kib // 1024} MiB")
        print(f"mailstore VmHWM {store_kib // 1024} MiB")
        print("big replies:", [r.split(" ")[0] + " " + r.split(" ")[1] for r in big_replies])
        assert (peak_kib - idle_kib) * 1024 < BOUND_OVER_IDLE, (idle_kib, peak_kib)
        assert all(r.startswith("250 ") for r in small_replies), small_replies
        accepted = [m for m, r in zip(messages, big_replies, strict=True) if r.startswith("250 ")]
        refused = [r for r in big_replies if not r.startswith("250 ")]
        assert accepted, big_replies  # the budget holds at least one whole message
        assert all(r.startswith("452 4.3.1 ") for r in refused), refused  # RFC 3463: mail system full

        # Every accepted message is stored byte for byte; nothing refused was stored.
        request = pb.FetchMetadataRequest(account=ALICE, mailbox="INBOX")
        metas = [m async for batch in client.store.FetchMetadata(request) for m in batch.messages]
        stored = [without_trace(await fetch_body(client, ALICE, "INBOX", m.uid)) for m in metas]
        assert sorted(s for s in stored if s != SMALL) == sorted(accepted)
        assert stored.count(SMALL) == 1 + len(small_replies)
        await client.channel.close()
    finally:
        await asyncio.to_thread(store.stop)


async def test_no_room_is_452_at_mail_data_and_bdat_and_the_budget_comes_back(tmp_path: Path) -> None:
    """The refusals one by one, in this process: a 4 MiB budget, messages of 5 MiB."""
    big = b"Subject: big\r\n\r\n" + (b"z" * 98 + b"\r\n") * (50 * 1024)
    async with smtp_stack(tmp_path, smtp_inflight_bytes=4 * MiB) as stack:
        smtp = await RawSmtp.connect(stack.ports["smtp"])
        await smtp.greet()
        # Declared too big for what is free (RFC 1870 §6.1): refused before any data is sent.
        assert (await smtp.cmd(f"MAIL FROM:<x@remote.test> SIZE={len(big)}")).startswith("452 4.3.1 ")
        # Undeclared: read to the end, kept nowhere, 452 4.3.1; the session goes on.
        for line in ("MAIL FROM:<x@remote.test>", f"RCPT TO:<{ALICE}>", "DATA"):
            assert (await smtp.cmd(line))[:3] in ("250", "354")
        assert (await smtp.cmd(big + b".")).startswith("452 4.3.1 ")
        # BDAT: the chunk that does not fit fails the transaction, its bytes are still consumed.
        for line in ("MAIL FROM:<x@remote.test>", f"RCPT TO:<{ALICE}>"):
            assert (await smtp.cmd(line)).startswith("250")
        await smtp.send(b"BDAT %d LAST\r\n" % len(big) + big)
        assert (await smtp.reply()).startswith("452 4.3.1 ")
        # The budget came back: a message that fits is stored.
        for line in ("MAIL FROM:<x@remote.test> SIZE=100", f"RCPT TO:<{ALICE}>", "DATA"):
            assert (await smtp.cmd(line))[:3] in ("250", "354")
        assert (await smtp.cmd(SMALL + b".")).startswith("250 ")
        assert stack.server.inflight.used == 0
        await smtp.close()
        assert [without_trace(m) for m in await stack.inbox()] == [SMALL]
