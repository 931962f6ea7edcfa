"""Moving a user in from a real Dovecot without the user noticing (issue 16): a private Dovecot
(tests/fixtures/dovecot_server.py) filled over IMAP APPEND and LMTP, then `mailstack import
maildir` (its files) or `mailstack import imap` (over TLS), then every folder compared over IMAP
and the maildrop over POP3, as the user's clients see them. Then the source changes (new mail,
flag changes, expunges, a new folder), a second pass with --delete runs, and all is compared
again."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.migration_support import (
    PASSWORD,
    MailstackServer,
    assert_same,
    deliver_lmtp,
    imap_login,
    make_message,
    populate,
    quoted,
)
from tests.fixtures.dovecot_server import DovecotServer

SOURCE_USER = "moving"
MESSAGES = 240

pytestmark = pytest.mark.slow


@pytest.fixture
def dovecot() -> Iterator[DovecotServer]:
    server = DovecotServer()
    server.add_user(SOURCE_USER, PASSWORD)
    try:
        server.start()
        populate(server, SOURCE_USER, MESSAGES)
        yield server
    finally:
        server.stop()


@pytest.fixture
def mailstack(tmp_path: Path) -> Iterator[MailstackServer]:
    server = MailstackServer(tmp_path / "mailstack")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def add_account(mailstack: MailstackServer, account: str) -> None:
    added = mailstack.cli("user", "add", account, "--password-stdin", stdin=PASSWORD + "\n")
    assert added.returncode == 0, added.stderr


def report(result: Any) -> dict[str, dict[str, Any]]:
    assert result.returncode == 0, result.stderr + result.stdout
    return {r["mailbox"]: r for r in json.loads(result.stdout)}


def change_source(dovecot: DovecotServer) -> dict[str, int]:
    """What users do between the bulk copy and the cutover; the changes per kind."""
    rng = random.Random(99)
    deliver_lmtp(dovecot, SOURCE_USER, [make_message(rng, 20_000 + i, "INBOX") for i in range(7)])
    conn = imap_login(dovecot.port_imap, SOURCE_USER)
    try:
        conn.select("INBOX")
        assert conn.uid("STORE", "1:20", "+FLAGS.SILENT", "(\\Seen $Label1)")[0] == "OK"
        assert conn.uid("STORE", "21:30", "-FLAGS.SILENT", "(\\Seen \\Flagged $Forwarded Work)")[0] == "OK"
        assert conn.uid("STORE", "31:35", "+FLAGS.SILENT", "(\\Deleted)")[0] == "OK"
        assert conn.uid("EXPUNGE", "31:35")[0] == "OK"
        conn.select(quoted("Work"))
        assert conn.uid("STORE", "1:4", "+FLAGS.SILENT", "(\\Deleted)")[0] == "OK"
        assert conn.uid("EXPUNGE", "1:4")[0] == "OK"
        conn.create(quoted("Neu/\u00dcbersicht"))
        conn.subscribe(quoted("Neu/\u00dcbersicht"))
        for n in range(5):
            data = make_message(rng, 30_000 + n, "Neu")
            assert conn.append(quoted("Neu/\u00dcbersicht"), "(\\Seen)", None, data)[0] == "OK"
        assert conn.append(quoted("Sent"), "(\\Seen)", None, make_message(rng, 40_000, "Sent"))[0] == "OK"
    finally:
        conn.logout()
    return {"inbox_new": 7, "inbox_expunged": 5, "work_expunged": 4}


def test_import_maildir_from_dovecot_twice(dovecot: DovecotServer, mailstack: MailstackServer) -> None:
    account = "moved@example.test"
    add_account(mailstack, account)
    maildir = str(dovecot.maildir(SOURCE_USER))
    first = report(mailstack.cli("--json", "import", "maildir", maildir, account))
    assert all(r["uids"] == "kept" and not r["failed"] for r in first.values()), first
    assert sum(r["imported"] for r in first.values()) == MESSAGES - 3  # three expunged at the source
    assert assert_same(dovecot, SOURCE_USER, mailstack, account) == MESSAGES - 3

    again = report(mailstack.cli("--json", "import", "maildir", maildir, account))
    assert sum(r["imported"] + r["flags"] + r["deleted"] for r in again.values()) == 0, "nothing changed"

    changed = change_source(dovecot)
    second = report(mailstack.cli("--json", "import", "maildir", maildir, account, "--delete"))
    assert second["INBOX"]["imported"] == changed["inbox_new"]
    assert second["INBOX"]["deleted"] == changed["inbox_expunged"]
    assert second["INBOX"]["flags"] > 0
    assert second["Work"]["deleted"] == changed["work_expunged"]
    assert second["Neu/\u00dcbersicht"]["imported"] == 5 and second["Neu/\u00dcbersicht"]["uids"] == "kept"
    assert second["Sent"]["imported"] == 1
    assert_same(dovecot, SOURCE_USER, mailstack, account)


def test_import_imap_from_dovecot_twice(dovecot: DovecotServer, mailstack: MailstackServer) -> None:
    account = "copied@example.test"
    add_account(mailstack, account)
    source = ["--host", "127.0.0.1", "--port", str(dovecot.port_imaps), "--user", SOURCE_USER]
    source += ["--password-stdin", "--cafile", str(dovecot.dir / "cert.pem")]

    def run(*extra: str) -> dict[str, dict[str, Any]]:
        return report(mailstack.cli("--json", "import", "imap", *source, account, *extra, stdin=PASSWORD + "\n"))

    first = run()
    assert all(r["uids"] == "kept" and not r["failed"] for r in first.values()), first
    assert assert_same(dovecot, SOURCE_USER, mailstack, account) == MESSAGES - 3
    changed = change_source(dovecot)
    second = run("--delete")
    assert second["INBOX"]["imported"] == changed["inbox_new"]
    assert second["INBOX"]["deleted"] == changed["inbox_expunged"]
    assert second["Neu/\u00dcbersicht"]["imported"] == 5
    assert_same(dovecot, SOURCE_USER, mailstack, account)

    wrong = mailstack.cli("import", "imap", *source, account, stdin="not-the-password\n")
    assert wrong.returncode == 1 and "127.0.0.1" in wrong.stderr and "Traceback" not in wrong.stderr


def test_import_into_a_mailbox_that_holds_other_mail_gets_new_uids(
    dovecot: DovecotServer, mailstack: MailstackServer
) -> None:
    # A mailbox that already held mail under its own UIDVALIDITY cannot take Dovecot's: the import
    # says so, stores the messages under new UIDs, and still keeps their POP3 UIDLs.
    account = "busy@example.test"
    add_account(mailstack, account)
    conn = imap_login(mailstack.imap_port, account)
    try:
        assert conn.append("INBOX", None, None, b"Subject: already here\r\n\r\nhello\r\n")[0] == "OK"
    finally:
        conn.logout()
    result = report(mailstack.cli("--json", "import", "maildir", str(dovecot.maildir(SOURCE_USER)), account))
    assert result["INBOX"]["uids"] == "new" and "UIDs not kept" in " ".join(result["INBOX"]["notes"])
    assert result["Sent"]["uids"] == "kept", "Sent was created with the account but never used"
    again = report(mailstack.cli("--json", "import", "maildir", str(dovecot.maildir(SOURCE_USER)), account))
    assert again["INBOX"]["imported"] == 0, "matched by Message-ID, Date, Subject and size"
    assert again["INBOX"]["unchanged"] == result["INBOX"]["imported"]
