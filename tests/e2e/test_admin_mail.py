"""`mailstack mail search|fetch|expunge|move` (doveadm's everyday commands) against a running
mailstore, with a real IMAP client seeing the result as it would any other change."""

from __future__ import annotations

import imaplib
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from mailstack.services.common.config import env_name

from tests.fixtures.imap_server import PASSWORD, ImapEnv, imap_env


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImapEnv]:
    with imap_env(tmp_path_factory.mktemp("admin-mail")) as e:
        yield e


def cli(env: ImapEnv, *args: str) -> subprocess.CompletedProcess[bytes]:
    command = [sys.executable, "-m", "mailstack", *args, "--mailstore", env.mailstore.address]
    cli_env = {**os.environ, env_name("data_dir"): str(env.settings.data_dir)}
    return subprocess.run(command, capture_output=True, timeout=120, env=cli_env)


def cli_json(env: ImapEnv, *args: str) -> Any:
    done = cli(env, *args, "--json")
    assert done.returncode == 0, done.stderr.decode()
    return json.loads(done.stdout)


def message(sender: str, subject: str, body: str = "text") -> bytes:
    return f"From: {sender}\r\nTo: x@example.test\r\nSubject: {subject}\r\n\r\n{body}\r\n".encode()


def populated(env: ImapEnv) -> tuple[str, imaplib.IMAP4]:
    user = env.new_account()
    client = imaplib.IMAP4("127.0.0.1", env.port())
    client.login(user, PASSWORD)
    client.append("INBOX", r"(\Seen)", None, message("bob@example.test", "lunch"))
    client.append("INBOX", None, None, message("carol@example.test", "cheap pills", "spam spam"))
    client.append("INBOX", None, None, message("bob@example.test", "report", "numbers"))
    client.create("Projects")
    client.append("Projects", None, None, message("bob@example.test", "plan"))
    return user, client


def test_search_by_imap_query_over_all_mailboxes(env: ImapEnv) -> None:
    user, client = populated(env)
    found = cli_json(env, "mail", "search", user, "FROM", "bob")
    assert sorted((f["mailbox"], f["uid"], f["subject"]) for f in found) == [
        ("INBOX", 1, "lunch"), ("INBOX", 3, "report"), ("Projects", 1, "plan"),
    ]  # fmt: skip
    assert all(f["uidvalidity"] > 0 and f["from"] == "bob@example.test" for f in found)
    unseen = cli_json(env, "mail", "search", user, "--mailbox", "INBOX", "NOT", "SEEN", "FROM", "bob")
    assert [f["uid"] for f in unseen] == [3]
    numbered = cli_json(env, "mail", "search", user, "--mailbox", "INBOX", "2:*")
    assert [f["uid"] for f in numbered] == [2, 3]
    text = cli(env, "mail", "search", user, "OR", "SUBJECT", '"cheap pills"', "BODY", "numbers")
    assert text.returncode == 0 and re.findall(rb"INBOX +(\d)", text.stdout) == [b"2", b"3"]
    client.logout()


def test_fetch_is_byte_identical_to_imap(env: ImapEnv) -> None:
    user, client = populated(env)
    client.select("INBOX")
    _, data = client.uid("FETCH", "2", "(BODY.PEEK[])")
    imap_bytes = data[0][1]
    done = cli(env, "mail", "fetch", user, "INBOX", "2")
    assert done.returncode == 0 and done.stdout == imap_bytes
    header = cli(env, "mail", "fetch", user, "INBOX", "2", "--header")
    assert header.stdout.endswith(b"\r\n\r\n") and b"spam spam" not in header.stdout
    client.logout()


def test_move_and_expunge_by_query_reach_an_open_session(env: ImapEnv) -> None:
    user, client = populated(env)
    client.select("INBOX")
    moved = cli_json(env, "mail", "move", user, "Projects", "FROM", "bob")
    assert moved == {"ok": True, "moved": {"INBOX": 2}, "total": 2}  # Projects itself is not a source
    client.noop()
    assert client.response("EXISTS") is not None
    _, uids = client.uid("SEARCH", "ALL")
    assert uids == [b"2"]
    expunged = cli_json(env, "mail", "expunge", user, "SUBJECT", "pills")
    assert expunged == {"ok": True, "expunged": {"INBOX": 1}, "total": 1}
    _, uids = client.uid("SEARCH", "ALL")
    assert uids == [b""]
    client.select("Projects")
    _, subjects = client.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert sorted(s[1].strip() for s in subjects if isinstance(s, tuple)) == [
        b"Subject: lunch", b"Subject: plan", b"Subject: report",
    ]  # fmt: skip
    client.logout()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("FROM",), b"bad query"),  # a key without its argument
        (("NOSUCHKEY",), b"bad query"),
        (("SINCE", "32-Foo-2026"), b"bad query"),
        (("(" * 200 + "ALL" + ")" * 200,), b"bad query"),  # nesting bounded as for IMAP clients
    ],
)
def test_bad_queries_are_one_line_errors(env: ImapEnv, args: tuple[str, ...], message: bytes) -> None:
    user = env.new_account()
    done = cli(env, "mail", "search", user, "--mailbox", "INBOX", *args)
    assert done.returncode == 1
    assert message in done.stderr and b"Traceback" not in done.stderr


def test_unknown_mailbox_and_message_are_refused(env: ImapEnv) -> None:
    user = env.new_account()
    missing = cli(env, "mail", "search", user, "--mailbox", "Nope", "ALL")
    assert missing.returncode == 1 and b"Traceback" not in missing.stderr
    gone = cli(env, "mail", "fetch", user, "INBOX", "99")
    assert gone.returncode == 1 and b"Traceback" not in gone.stderr
