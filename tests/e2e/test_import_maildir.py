"""`mailstack import maildir`: a Dovecot-style Maildir++ tree moved into an account, run as the
operator runs it (the CLI against a mailstore process), checked through the gRPC API."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from mailstack.services.common.maildir import flags_of, read_maildir
from mailstack.v1 import mailstore_pb2 as pb

from tests.fixtures.mailstore import MailstoreProcess, fetch_body, open_client

ACCOUNT = "moved@example.test"
DATE = 1_600_000_000


def write(folder: Path, sub: str, name: str, data: bytes, mtime: int = DATE) -> None:
    (folder / sub).mkdir(parents=True, exist_ok=True)
    path = folder / sub / name
    path.write_bytes(data)
    os.utime(path, (mtime, mtime))


def message(subject: str) -> bytes:
    return f"From: a@remote.test\r\nSubject: {subject}\r\n\r\nbody of {subject}\r\n".encode()


@pytest.fixture
def maildir(tmp_path: Path) -> Path:
    root = tmp_path / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True)
    (root / "dovecot-keywords").write_text("0 $Label1\n1 Work\n")
    write(root, "cur", "1600000000.M1P1.host,S=50:2,SF", message("seen flagged"), DATE)
    write(root, "cur", "1600000100.M2P1.host:2,RTab", message("answered deleted keywords"), DATE + 100)
    write(root, "new", "1600000200.M3P1.host", message("new one"), DATE + 200)
    write(root, "tmp", "1600000300.M4P1.host", message("in delivery: skipped"), DATE + 300)
    sent = root / ".Sent"
    write(sent, "cur", "1600000400.M5P1.host:2,S", message("sent"), DATE + 400)
    nested = root / ".Archive.&AMk-t&AOk-"  # modified UTF-7 on disk: Archive/Été
    write(nested, "cur", "1600000500.M6P1.host:2,", message("archived"), DATE + 500)
    return root


def test_reading_the_tree(maildir: Path) -> None:
    folders = {f.mailbox: f for f in read_maildir(maildir)}
    assert list(folders) == ["INBOX", "Archive/Été", "Sent"]
    assert [m.flags for m in folders["INBOX"].messages] == [
        ("\\Flagged", "\\Seen"),
        ("$Label1", "Work", "\\Answered", "\\Deleted"),
        (),
    ]
    assert [m.mtime for m in folders["INBOX"].messages] == [DATE, DATE + 100, DATE + 200]
    assert flags_of("x:2,P", {}) == () and flags_of("no-info", {}) == ()
    with pytest.raises(NotADirectoryError):
        read_maildir(maildir / "cur")


@pytest.fixture
def mailstore(tmp_path: Path) -> Iterator[MailstoreProcess]:
    process = MailstoreProcess(tmp_path / "store")
    process.start()
    try:
        yield process
    finally:
        process.stop()


def cli(mailstore: MailstoreProcess, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI as an operator runs it beside the mailstore: it finds the admin identity in its data folder."""
    return subprocess.run(
        [sys.executable, "-m", "mailstack", "--mailstore", mailstore.address, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "MAILSTACK_DATA_DIR": str(mailstore.data_dir)},
    )


def test_import_into_an_account(maildir: Path, mailstore: MailstoreProcess) -> None:
    added = cli(mailstore, "user", "add", ACCOUNT, "--password", "secret-pass-1")
    assert added.returncode == 0, added.stderr
    result = cli(mailstore, "--json", "import", "maildir", str(maildir), ACCOUNT)
    assert result.returncode == 0, result.stderr
    report = {r["mailbox"]: (r["imported"], r["failed"]) for r in json.loads(result.stdout)}
    assert report == {"INBOX": (3, []), "Archive/Été": (1, []), "Sent": (1, [])}
    notes = {r["mailbox"]: (r["uids"], r["notes"]) for r in json.loads(result.stdout)}
    assert notes["INBOX"] == ("new", ["no UID list: new UIDs"]), "said in the report"
    again = cli(mailstore, "--json", "import", "maildir", str(maildir), ACCOUNT)
    skipped = {r["mailbox"]: (r["imported"], r["unchanged"]) for r in json.loads(again.stdout)}
    assert skipped == {"INBOX": (0, 3), "Archive/Été": (0, 1), "Sent": (0, 1)}, "a second run doubles nothing"

    async def check() -> None:
        client = open_client(mailstore.address, mailstore.data_dir, mailstore.send_address)
        try:
            request = pb.FetchMetadataRequest(
                account=ACCOUNT, mailbox="INBOX", fields=pb.MetadataFields(flags=True, internal_date=True)
            )
            listed = [m async for r in client.store.FetchMetadata(request) for m in r.messages]
            assert [sorted(m.flags) for m in listed] == [
                ["\\Flagged", "\\Seen"],
                ["$Label1", "Work", "\\Answered", "\\Deleted"],
                [],
            ]
            assert [m.internal_date.unix_seconds for m in listed] == [DATE, DATE + 100, DATE + 200]
            assert await fetch_body(client, ACCOUNT, "INBOX", listed[2].uid) == message("new one"), "byte-exact"
            mailboxes = await client.store.ListMailboxes(pb.ListMailboxesRequest(account=ACCOUNT))
            names = [m.name for m in mailboxes.mailboxes]
            assert "Archive/Été" in names and names.count("Sent") == 1, "Sent existed: used, not doubled"
        finally:
            await client.channel.close(None)

    asyncio.run(check())

    forced = cli(mailstore, "--json", "import", "maildir", str(maildir / ".Sent"), ACCOUNT, "--append")
    assert [(r["mailbox"], r["imported"]) for r in json.loads(forced.stdout)] == [("INBOX", 1)], forced.stderr

    missing = cli(mailstore, "import", "maildir", str(maildir), "nobody@example.test")
    assert missing.returncode != 0 and "nobody@example.test" in missing.stderr + missing.stdout


def test_a_failed_message_is_reported_and_the_exit_code_says_so(tmp_path: Path, mailstore: MailstoreProcess) -> None:
    root = tmp_path / "Failing"
    write(root, "cur", "1600000000.M1P1.host:2,S", message("fine"))
    write(root, "cur", "1600000001.M2P1.host:2,S", b"")  # an empty file: the mailstore refuses it
    assert cli(mailstore, "user", "add", ACCOUNT, "--password", "secret-pass-1").returncode == 0
    result = cli(mailstore, "--json", "import", "maildir", str(root), ACCOUNT)
    assert result.returncode == 1, "exit non-zero when anything failed"
    [inbox] = json.loads(result.stdout)
    assert inbox["imported"] == 1 and len(inbox["failed"]) == 1 and "1600000001.M2P1.host" in inbox["failed"][0]
    assert "1 failures" in result.stderr and "Traceback" not in result.stderr
    retried = cli(mailstore, "--json", "import", "maildir", str(root), ACCOUNT)
    assert json.loads(retried.stdout)[0]["unchanged"] == 1, "the stored one is not stored again"


def test_kept_uids_across_passes_when_the_source_numbers_a_file_later(
    tmp_path: Path, mailstore: MailstoreProcess
) -> None:
    # Pass 1 finds a file in new/ that Dovecot has not numbered yet: it gets the next UID here.
    # Before pass 2 Dovecot numbers another, newer file first and this one after it: pass 2 must
    # see that the UID it gave is now another message's, store that one, and store nothing twice.
    root = tmp_path / "Numbered"
    write(root, "cur", "1600000000.M1P1.host,S=50:2,S", message("listed"))
    write(root, "new", "1600000001.M2P1.host", message("unlisted at first"))
    (root / "dovecot-uidlist").write_text("3 V4242 N5\n4 :1600000000.M1P1.host,S=50\n")
    assert cli(mailstore, "user", "add", ACCOUNT, "--password", "secret-pass-1").returncode == 0
    [first] = json.loads(cli(mailstore, "--json", "import", "maildir", str(root), ACCOUNT).stdout)
    assert (first["uids"], first["imported"]) == ("kept", 2)
    write(root, "new", "1600000002.M3P1.host", message("the other one, numbered first"))
    (root / "dovecot-uidlist").write_text(
        "3 V4242 N7\n4 :1600000000.M1P1.host,S=50\n5 :1600000002.M3P1.host\n6 :1600000001.M2P1.host\n"
    )
    result = cli(mailstore, "--json", "import", "maildir", str(root), ACCOUNT)
    [second] = json.loads(result.stdout)
    assert (second["imported"], second["unchanged"], second["failed"]) == (1, 2, []), result.stdout

    async def subjects() -> dict[int, str]:
        client = open_client(mailstore.address, mailstore.data_dir, mailstore.send_address)
        try:
            request = pb.FetchMetadataRequest(account=ACCOUNT, mailbox="INBOX", fields=pb.MetadataFields(envelope=True))
            listed = [m async for r in client.store.FetchMetadata(request) for m in r.messages]
            return {m.uid: m.envelope.subject.decode() for m in listed}
        finally:
            await client.channel.close(None)

    assert sorted(asyncio.run(subjects()).values()) == sorted(
        ["listed", "unlisted at first", "the other one, numbered first"]
    ), "each once"
