"""An embedded installation moves to PostgreSQL (issue 20, ADR 0035), end to end: `mailstack serve`
on SQLite is filled through real SMTP, IMAP and POP3 clients, stopped, `mailstack migrate metadata`
copies its metadata into PostgreSQL, and `mailstack serve` on PostgreSQL over the same blob folder
shows a real IMAP client the same UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ, UIDs, MODSEQs, flags,
internal dates and bodies, POP3 the same UIDLs, and goes on from there (the next UID is UIDNEXT)."""

from __future__ import annotations

import os
import poplib
import smtplib
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from imapclient import IMAPClient

from tests.fixtures.ports import free_port
from tests.fixtures.topology import port_open

PASSWORD = "pw-migrate-1"
ALICE, BOB = "alice@example.test", "bob@example.test"


@contextmanager
def embedded(data: Path, ports: dict[str, int], **extra: str) -> Iterator[None]:
    """`mailstack serve` (every service in one process) on `data`, configured by environment only."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAILSTACK_", "AWS_", "OTEL_"))}
    env.update({f"MAILSTACK_{name.upper()}_PORT": str(port) for name, port in ports.items()})
    env.update(
        {
            "MAILSTACK_DATA_DIR": str(data),
            "MAILSTACK_BIND": "127.0.0.1",
            "MAILSTACK_MAILSTORE_LISTEN": f"127.0.0.1:{ports['grpc']}",
            "MAILSTACK_MAILSTORE_ADDR": f"127.0.0.1:{ports['grpc']}",
            "MAILSTACK_SEND_LISTEN": f"127.0.0.1:{free_port()}",
            "MAILSTACK_ALLOW_PLAINTEXT_AUTH": "true",
            **{f"MAILSTACK_{k.upper()}": v for k, v in extra.items()},
        }
    )
    data.mkdir(parents=True, exist_ok=True)
    log_path = data.parent / "serve.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "mailstack", "serve"], env=env, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 60
        while not all(port_open(ports[n]) for n in ("smtp", "imap", "pop3")):
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def cli(data: Path, grpc_port: int, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILSTACK_")}
    env.update({"MAILSTACK_DATA_DIR": str(data), "MAILSTACK_MAILSTORE_ADDR": f"127.0.0.1:{grpc_port}"})
    return subprocess.run([sys.executable, "-m", "mailstack", *args], env=env, capture_output=True, text=True)


def mail(subject: str, to: str) -> str:
    header = f"From: sender@remote.test\r\nTo: {to}\r\nSubject: {subject}\r\nMessage-ID: <{subject}@remote.test>\r\n"
    return f"{header}\r\nbody of {subject}\r\n"


def populate(ports: dict[str, int]) -> None:
    with smtplib.SMTP("127.0.0.1", ports["smtp"], timeout=30) as smtp:
        for i in range(8):
            smtp.sendmail("sender@remote.test", [ALICE], mail(f"alice-{i}", ALICE))
        for i in range(4):
            smtp.sendmail("sender@remote.test", [BOB], mail(f"bob-{i}", BOB))
    with IMAPClient("127.0.0.1", port=ports["imap"], ssl=False) as imap:
        imap.login(ALICE, PASSWORD)
        imap.create_folder("Archive/2024")
        imap.subscribe_folder("Archive/2024")
        imap.select_folder("INBOX")
        imap.add_flags([1, 2, 3], [b"\\Seen"])
        imap.add_flags([2], [b"\\Flagged", b"$Work"])
        imap.move([4, 5], "Archive/2024")
        imap.add_flags([6], [b"\\Deleted"])
        imap.expunge()
        imap.append("INBOX", mail("appended", ALICE), [b"\\Draft"], datetime(2021, 3, 4, 5, 6, 7, tzinfo=UTC))
        imap.append("Archive/2024", mail("archived", ALICE), [b"$Old"])
    pop = poplib.POP3("127.0.0.1", ports["pop3"], timeout=30)
    try:
        pop.user(BOB)
        pop.pass_(PASSWORD)
        pop.dele(1)  # POP3 expunges at QUIT: UIDs go on with a gap
    finally:
        pop.quit()


def imap_view(ports: dict[str, int]) -> dict[str, Any]:
    """Everything a synchronizing client keeps per mailbox: the SELECT answer and every message."""
    view: dict[str, Any] = {}
    with IMAPClient("127.0.0.1", port=ports["imap"], ssl=False) as imap:
        imap.login(ALICE, PASSWORD)
        imap.enable("CONDSTORE")
        view["subscribed"] = sorted(imap.list_sub_folders())
        for name in ("INBOX", "Archive/2024"):
            selected = imap.select_folder(name, readonly=True)
            state = {k: selected[k] for k in (b"UIDVALIDITY", b"UIDNEXT", b"HIGHESTMODSEQ", b"EXISTS")}
            messages = imap.fetch(imap.search("ALL"), ["FLAGS", "INTERNALDATE", "MODSEQ", "BODY.PEEK[]", "RFC822.SIZE"])
            view[name] = (state, sorted((uid, sorted(data.items())) for uid, data in messages.items()))
    return view


def pop3_uidls(ports: dict[str, int]) -> list[bytes]:
    pop = poplib.POP3("127.0.0.1", ports["pop3"], timeout=30)
    try:
        pop.user(BOB)
        pop.pass_(PASSWORD)
        return list(pop.uidl()[1])
    finally:
        pop.quit()


@pytest.mark.slow
def test_embedded_installation_moves_to_postgresql_and_clients_see_the_same(tmp_path: Path, postgres_url: str) -> None:
    data = tmp_path / "data"
    names = ("grpc", "smtp", "submission", "submissions", "lmtp", "imap", "imaps", "pop3", "pop3s")
    ports = {n: free_port() for n in names}
    with embedded(data, ports):
        for account in (ALICE, BOB):
            result = cli(data, ports["grpc"], "user", "add", account, "--password", PASSWORD)
            assert result.returncode == 0, result.stderr
        populate(ports)
        before, uidls = imap_view(ports), pop3_uidls(ports)
    assert before["INBOX"][0][b"EXISTS"] == 6 and before["Archive/2024"][0][b"EXISTS"] == 3
    assert len(uidls) == 3

    sqlite_file = data / "metadata.sqlite3"
    result = cli(data, ports["grpc"], "migrate", "metadata", "--from", f"sqlite://{sqlite_file}", "--to", postgres_url)
    assert result.returncode == 0, result.stderr
    assert "migrated and verified" in result.stdout

    with embedded(data, ports, metadata_url=postgres_url):
        after = imap_view(ports)
        assert after == before
        assert pop3_uidls(ports) == uidls
        with smtplib.SMTP("127.0.0.1", ports["smtp"], timeout=30) as smtp:
            smtp.sendmail("sender@remote.test", [ALICE], mail("after-move", ALICE))
        with IMAPClient("127.0.0.1", port=ports["imap"], ssl=False) as imap:
            imap.login(ALICE, PASSWORD)
            selected = imap.select_folder("INBOX")
            assert selected[b"UIDVALIDITY"] == before["INBOX"][0][b"UIDVALIDITY"]
            assert imap.search(["SUBJECT", "after-move"]) == [before["INBOX"][0][b"UIDNEXT"]]
    # The SQLite file was only read: the installation can go back to it if the move is abandoned.
    with embedded(data, ports):
        assert imap_view(ports) == before
