"""`mailstack backup` then `mailstack restore` into a fresh installation gives the same account, byte
for byte, UIDs included (issue 16): compared over IMAP as a client sees it, with real CLI runs."""

from __future__ import annotations

import imaplib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mailstack.services.common.config import env_name
from mailstack.v1 import mailstore_pb2 as pb

from tests.fixtures.imap_server import PASSWORD, ImapEnv, imap_env

ACCOUNT = "carol@example.test"
FOLDERS = ("Projekte/Entwürfe", "Archive/2025")
RECENT = re.compile(rb" ?\\Recent")


def cli(env: ImapEnv, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "mailstack", *args, "--mailstore", env.mailstore.address]
    cli_env = {**os.environ, env_name("data_dir"): str(env.settings.data_dir)}
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=cli_env)


def imap(env: ImapEnv) -> imaplib.IMAP4:
    client = imaplib.IMAP4("127.0.0.1", env.port())
    client.login(ACCOUNT, PASSWORD)
    client.enable("UTF8=ACCEPT")
    return client


def create_account(env: ImapEnv) -> None:
    env.run(lambda: env.client.admin.CreateAccount(pb.CreateAccountRequest(name=ACCOUNT, password=PASSWORD)))


def populate(env: ImapEnv) -> None:
    create_account(env)
    client = imap(env)
    for folder in FOLDERS:
        client.create(f'"{folder}"')
    client.subscribe(f'"{FOLDERS[0]}"')
    client.unsubscribe("Archive")
    for n in range(12):
        mailbox = ("INBOX", f'"{FOLDERS[0]}"', f'"{FOLDERS[1]}"')[n % 3]
        flags = ("(\\Seen)", "(\\Flagged $Important)", "(\\Answered \\Draft receipt-sent)", "")[n % 4]
        date = imaplib.Time2Internaldate(1_700_000_000 + n * 86_400 + 3_600)
        body = f"From: a{n}@example.org\r\nSubject: m{n} \u00e9t\u00e9\r\n\r\nline {n}\r\n".encode()
        client.append(mailbox, flags or None, date, body + b"x" * (n * 97))
    # one message as a migration from Dovecot left it: with the POP3 UIDL the old server announced
    header = pb.AppendHeader(account=ACCOUNT, mailbox="INBOX", flags=["\\Seen"], pop3_uidl="000000106553c3a1")
    data = b"Subject: moved\r\n\r\nfrom dovecot\r\n"
    header.size = len(data)
    requests = [pb.AppendRequest(header=header), pb.AppendRequest(chunk=data)]
    env.run(lambda: env.client.admin.ImportMessage(iter(requests)))
    client.select("INBOX")
    client.uid("STORE", "1", "+FLAGS", "(\\Deleted)")
    client.expunge()  # a gap in the UIDs, and UIDNEXT past the last one
    client.logout()


def snapshot(env: ImapEnv) -> dict[str, Any]:
    """Everything a client keys on, per mailbox."""
    client = imap(env)
    seen: dict[str, Any] = {}
    for name in mailbox_names(env):
        typ, _ = client.select(f'"{name}"', readonly=True)
        assert typ == "OK"
        _, validity = client.response("UIDVALIDITY")
        _, uidnext = client.response("UIDNEXT")
        _, data = client.uid("FETCH", "1:*", "(UID FLAGS INTERNALDATE BODY.PEEK[])")
        # (b'n (UID u FLAGS (...) INTERNALDATE "..." BODY[] {size}', bytes); \\Recent is a session flag
        # (RFC 3501 §2.3.2): whether some session saw a message first is not the account's state
        messages = sorted(
            (RECENT.sub(b"", item[0]).replace(b"( ", b"("), item[1]) for item in data if isinstance(item, tuple)
        )
        seen[name] = (validity, uidnext, messages)
    _, subscribed = client.lsub()
    seen["subscribed"] = sorted(subscribed)
    client.logout()
    return seen


def mailbox_names(env: ImapEnv) -> list[str]:
    request = pb.ListMailboxesRequest(account=ACCOUNT)
    reply = env.run(lambda: env.client.store.ListMailboxes(request))
    return sorted(m.name for m in reply.mailboxes if not m.nonexistent)


def uidls(env: ImapEnv) -> list[tuple[int, str]]:
    async def read() -> list[tuple[int, str]]:
        request = pb.FetchMetadataRequest(account=ACCOUNT, mailbox="INBOX", fields=pb.MetadataFields(pop3_uidl=True))
        return [(m.uid, m.pop3_uidl) async for reply in env.client.store.FetchMetadata(request) for m in reply.messages]

    return env.run(read)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImapEnv]:
    with imap_env(tmp_path_factory.mktemp("backup-source")) as env:
        populate(env)
        yield env


@pytest.mark.parametrize("name", ["carol.tar", "carol.tar.gz"])
def test_backup_then_restore_into_a_fresh_installation(source: ImapEnv, tmp_path: Path, name: str) -> None:
    file = tmp_path / name
    done = cli(source, "backup", ACCOUNT, str(file), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["messages"] == 12
    with tarfile.open(file) as tar:  # a Maildir++ tree other tools can read, and the manifest
        members = tar.getnames()
    assert "mailstack-backup.json" in members
    assert any(m.startswith("Maildir/.Projekte.Entw&APw-rfe/cur/") and m.endswith(":2,S") for m in members)
    before = snapshot(source)
    with imap_env(tmp_path / "fresh") as fresh:
        create_account(fresh)
        restored = cli(fresh, "restore", str(file), "--json")
        assert restored.returncode == 0, restored.stdout + restored.stderr
        report = json.loads(restored.stdout)
        assert sorted(r["mailbox"] for r in report) == mailbox_names(source)
        assert {r["uids"] for r in report} == {"kept"} and sum(r["imported"] for r in report) == 12
        assert snapshot(fresh) == before
        assert "000000106553c3a1" in dict(uidls(source)).values()
        assert uidls(fresh) == uidls(source)
        again = cli(fresh, "restore", str(file), "--json")  # a second run adds nothing
        assert again.returncode == 0, again.stderr
        assert sum(r["imported"] for r in json.loads(again.stdout)) == 0
        assert snapshot(fresh) == before


def test_a_damaged_backup_is_refused_message_by_message(source: ImapEnv, tmp_path: Path) -> None:
    file = tmp_path / "carol.tar"
    assert cli(source, "backup", ACCOUNT, str(file)).returncode == 0
    damaged = tmp_path / "damaged.tar"
    with tarfile.open(file) as tar, tarfile.open(damaged, "w") as out:
        flipped = False
        for member in tar.getmembers():
            data = tar.extractfile(member).read()  # type: ignore[union-attr]
            if member.name.endswith(":2,S") and not flipped:
                data, flipped = data[:-3] + b"XYZ", True  # same size, other bytes
            out.addfile(member, io.BytesIO(data))
    with imap_env(tmp_path / "fresh") as fresh:
        create_account(fresh)
        done = cli(fresh, "restore", str(damaged))
        assert done.returncode == 1
        assert "damaged (size or SHA-256 differs" in done.stdout and "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("content", "said"),
    [
        (None, "no mailstack-backup.json"),
        (b"{not json", "not JSON"),
        (json.dumps({"format": "other"}).encode(), "not a mailstack backup"),
        (json.dumps({"format": "mailstack-backup", "version": 99}).encode(), "format version 99"),
        (json.dumps({"format": "mailstack-backup", "version": 1, "account": 5}).encode(), "damaged"),
    ],
)
def test_not_a_backup_is_one_line(source: ImapEnv, tmp_path: Path, content: bytes | None, said: str) -> None:
    file = tmp_path / "bad.tar"
    with tarfile.open(file, "w") as tar:
        data = content if content is not None else b"hello"
        info = tarfile.TarInfo("mailstack-backup.json" if content is not None else "other.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    done = cli(source, "restore", str(file), ACCOUNT)
    assert done.returncode == 1 and said in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_backup_of_an_unknown_account_writes_no_file(source: ImapEnv, tmp_path: Path) -> None:
    file = tmp_path / "nobody.tar"
    done = cli(source, "backup", "nobody@example.test", str(file))
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert not file.exists() and not (tmp_path / "nobody.tar.partial").exists()
