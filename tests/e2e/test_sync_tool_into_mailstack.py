"""A real sync tool copying a Dovecot account into mailstack twice (issue 16): mbsync (isync),
which, like imapsync, APPENDs one message at a time. The first pass copies every message with
its flags and keywords; the second finds them all there and copies nothing (no mailbox's UIDNEXT
moves). bench/imapsync.py times imapsync itself (not in Debian 12's main archive)."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.migration_support import (
    PASSWORD,
    SYSTEM_FLAGS,
    FolderView,
    MailstackServer,
    folder_view,
    imap_login,
    populate,
)
from tests.fixtures.dovecot_server import DovecotServer

SOURCE_USER = "synced"
ACCOUNT = "synced@example.test"
FOLDERS = ["INBOX", "Sent", "Work"]  # mbsync maps names itself; the non-ASCII ones are the import's tests

SYSTEM = frozenset(SYSTEM_FLAGS)
TUID = re.compile(rb"^X-TUID: [A-Za-z0-9+/]+\r\n", re.MULTILINE)


def _tuid_length(body: bytes) -> int:
    found = TUID.search(body)
    return len(found[0]) if found else 0


pytestmark = pytest.mark.slow


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[tuple[DovecotServer, MailstackServer]]:
    dovecot = DovecotServer()
    dovecot.add_user(SOURCE_USER, PASSWORD)
    mailstack = MailstackServer(tmp_path / "mailstack")
    try:
        dovecot.start()
        populate(dovecot, SOURCE_USER, 120)
        mailstack.start()
        added = mailstack.cli("user", "add", ACCOUNT, "--password-stdin", stdin=PASSWORD + "\n")
        assert added.returncode == 0, added.stderr
        yield dovecot, mailstack
    finally:
        mailstack.stop()
        dovecot.stop()


def mbsync_config(tmp_path: Path, dovecot: DovecotServer, mailstack: MailstackServer) -> Path:
    state = tmp_path / "mbsync-state"
    state.mkdir()
    config = tmp_path / "mbsyncrc"
    stores = "".join(
        f"IMAPStore {name}\nHost 127.0.0.1\nPort {port}\nUser {user}\nPass {PASSWORD}\nSSLType None\n"
        "AuthMechs LOGIN\n\n"
        for name, port, user in (("far", dovecot.port_imap, SOURCE_USER), ("near", mailstack.imap_port, ACCOUNT))
    )
    patterns = " ".join(f'"{f}"' for f in FOLDERS)
    config.write_text(
        stores + f"Channel move\nFar :far:\nNear :near:\nPatterns {patterns}\nCreate Near\nSync Pull\n"
        f"SyncState {state}/\nExpunge None\nCopyArrivalDate yes\n"
    )
    return config


def uidnexts(mailstack: MailstackServer) -> dict[str, int]:
    conn = imap_login(mailstack.imap_port, ACCOUNT)
    try:
        return {f: folder_view(conn, f).uidnext for f in FOLDERS}
    finally:
        conn.logout()


def test_mbsync_twice_copies_everything_then_nothing(
    tmp_path: Path, servers: tuple[DovecotServer, MailstackServer]
) -> None:
    dovecot, mailstack = servers
    config = mbsync_config(tmp_path, dovecot, mailstack)
    first = subprocess.run(["mbsync", "-c", str(config), "move"], capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stdout + first.stderr
    source, target = imap_login(dovecot.port_imap, SOURCE_USER), imap_login(mailstack.imap_port, ACCOUNT)
    try:
        for folder in FOLDERS:
            want, got = folder_view(source, folder), folder_view(target, folder)

            # UIDs are the target's own (a client copy): messages compared as a multiset of bodies,
            # dates and system flags (mbsync 1.4 copies no keywords)
            def content(view: FolderView) -> list[tuple[bytes, tuple[int, int], int, frozenset[str]]]:
                # mbsync adds its own X-TUID header line to every message it copies (its design)
                return sorted(
                    (TUID.sub(b"", m[3], count=1), m[1], m[2] - _tuid_length(m[3]), m[0] & SYSTEM)
                    for m in view.messages.values()
                )

            assert len(got.messages) == len(want.messages) > 0, folder
            mine, theirs = content(got), content(want)
            assert [m[0] for m in mine] == [m[0] for m in theirs], f"{folder}: bodies"
            assert [m[1:3] for m in mine] == [m[1:3] for m in theirs], f"{folder}: dates and sizes"
            assert mine == theirs, f"{folder}: flags"
    finally:
        source.logout()
        target.logout()
    before = uidnexts(mailstack)
    second = subprocess.run(["mbsync", "-c", str(config), "move"], capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout + second.stderr
    assert uidnexts(mailstack) == before, "the second pass copied nothing"
