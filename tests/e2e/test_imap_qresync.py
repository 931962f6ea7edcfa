"""QRESYNC (RFC 7162 §3.2) over a real socket: ENABLE, SELECT with the QRESYNC parameter
(VANISHED (EARLIER) and the changed flags), UID FETCH (CHANGEDSINCE VANISHED), VANISHED instead of
EXPUNGE once enabled, and [CLOSED] when another mailbox is selected."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import pytest

from tests.fixtures.imap_server import ImapEnv, RawImap, imap_env, message


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImapEnv]:
    with imap_env(tmp_path_factory.mktemp("imap-qresync")) as e:
        yield e


def state(raw: RawImap) -> tuple[int, int]:
    """(UIDVALIDITY, HIGHESTMODSEQ) of a SELECT."""
    text = b"\n".join(raw.command("s0", "SELECT INBOX"))
    uidvalidity = re.search(rb"UIDVALIDITY (\d+)", text)
    modseq = re.search(rb"HIGHESTMODSEQ (\d+)", text)
    assert uidvalidity and modseq
    return int(uidvalidity.group(1)), int(modseq.group(1))


def mailbox_with_history(env: ImapEnv) -> tuple[str, int, int]:
    """Five messages; a client's state is taken; then UID 2 is flagged and UID 4 expunged."""
    user = env.new_account()
    for n in range(1, 6):
        env.deliver(user, message(f"q{n}"))
    first = RawImap(env.port())
    first.login(user)
    uidvalidity, modseq = state(first)
    assert first.command("a", "UID STORE 2 +FLAGS.SILENT (\\Flagged)")[-1].startswith(b"a OK")
    assert first.command("b", "UID STORE 4 +FLAGS.SILENT (\\Deleted)")[-1].startswith(b"b OK")
    assert first.command("c", "EXPUNGE")[-1].startswith(b"c OK")
    first.close()
    return user, uidvalidity, modseq


def qresync_client(env: ImapEnv, user: str) -> RawImap:
    raw = RawImap(env.port())
    raw.login(user)
    assert b"QRESYNC" in b"".join(raw.command("c", "CAPABILITY"))
    assert raw.command("e", "ENABLE QRESYNC")[0] == b"* ENABLED QRESYNC"
    return raw


def test_select_qresync_reports_what_changed_since(env: ImapEnv) -> None:
    user, uidvalidity, modseq = mailbox_with_history(env)
    raw = qresync_client(env, user)
    lines = raw.command("s", f"SELECT INBOX (QRESYNC ({uidvalidity} {modseq}))")
    assert lines[-1].startswith(b"s OK")
    vanished = [line for line in lines if line.startswith(b"* VANISHED")]
    fetches = [line for line in lines if b" FETCH " in line]
    assert vanished == [b"* VANISHED (EARLIER) 4"]
    assert len(fetches) == 1 and re.fullmatch(rb"\* 2 FETCH \(UID 2 FLAGS \(\\Flagged\) MODSEQ \(\d+\)\)", fetches[0])
    assert lines.index(vanished[0]) < lines.index(fetches[0]), "VANISHED comes first (RFC 7162 §3.2.5.2)"
    # known-uids limits VANISHED to the UIDs the client still has
    lines = raw.command("t", f"SELECT INBOX (QRESYNC ({uidvalidity} {modseq} 1:3,5))")
    assert b"* OK [CLOSED] previous mailbox closed" in lines
    assert not any(line.startswith(b"* VANISHED") for line in lines)
    # another UIDVALIDITY: the parameter is ignored (the client must resync fully)
    lines = raw.command("u", f"SELECT INBOX (QRESYNC ({uidvalidity + 1} {modseq}))")
    assert lines[-1].startswith(b"u OK") and not any(b"VANISHED" in line or b" FETCH " in line for line in lines)
    raw.close()


def test_uid_fetch_vanished_and_expunge_as_vanished(env: ImapEnv) -> None:
    user, _, modseq = mailbox_with_history(env)
    raw = qresync_client(env, user)
    raw.command("s", "SELECT INBOX")
    lines = raw.command("f", f"UID FETCH 1:* (FLAGS) (CHANGEDSINCE {modseq} VANISHED)")
    assert lines[0] == b"* VANISHED (EARLIER) 4" and lines[-1].startswith(b"f OK")
    assert next(line for line in lines if b" FETCH " in line).startswith(b"* 2 FETCH (UID 2 FLAGS (\\Flagged) MODSEQ")
    narrow = raw.command("g", f"UID FETCH 1:3 (FLAGS) (CHANGEDSINCE {modseq} VANISHED)")
    assert not any(line.startswith(b"* VANISHED") for line in narrow), "4 is outside the set"
    # once QRESYNC is on, expunges are announced as VANISHED, never EXPUNGE (RFC 7162 §3.2.10)
    raw.command("d", "UID STORE 1,3 +FLAGS.SILENT (\\Deleted)")
    lines = raw.command("x", "EXPUNGE")
    assert b"* VANISHED 1,3" in lines and not any(line.endswith(b" EXPUNGE") for line in lines)
    raw.close()


def test_qresync_needs_enable(env: ImapEnv) -> None:
    user, uidvalidity, modseq = mailbox_with_history(env)
    raw = RawImap(env.port())
    raw.login(user)
    assert raw.command("s", f"SELECT INBOX (QRESYNC ({uidvalidity} {modseq}))")[-1].startswith(b"s BAD")
    raw.command("t", "SELECT INBOX")
    assert raw.command("f", f"UID FETCH 1:* (FLAGS) (CHANGEDSINCE {modseq} VANISHED)")[-1].startswith(b"f BAD")
    # without QRESYNC, expunges stay EXPUNGE responses
    raw.command("d", "UID STORE 1 +FLAGS.SILENT (\\Deleted)")
    assert b"* 1 EXPUNGE" in raw.command("x", "EXPUNGE")
    raw.close()


def prune_everything(env: ImapEnv) -> int:
    """The change log as it is after change_log_days: every logged expunge forgotten."""
    core = env.mailstore.core
    assert core is not None
    return env.run(lambda: core.maintenance.prune_change_log(time.time() + 91 * 86400))


def test_after_the_log_was_pruned_every_missing_uid_is_vanished(env: ImapEnv) -> None:
    user, uidvalidity, modseq = mailbox_with_history(env)  # UIDs 1-5, 4 expunged
    assert prune_everything(env) >= 1
    raw = qresync_client(env, user)
    lines = raw.command("s", f"SELECT INBOX (QRESYNC ({uidvalidity} {modseq}))")
    assert b"* VANISHED (EARLIER) 4" in lines, "from the UIDs that are left, not from the log"
    assert any(re.fullmatch(rb"\* 2 FETCH \(UID 2 FLAGS \(\\Flagged\) MODSEQ \(\d+\)\)", line) for line in lines)
    lines = raw.command("t", f"SELECT INBOX (QRESYNC ({uidvalidity} {modseq} 2:9))")
    assert b"* VANISHED (EARLIER) 4,6:9" in lines, "UIDs that never existed may be named (RFC 7162)"
    lines = raw.command("f", f"UID FETCH 3:5 (FLAGS) (CHANGEDSINCE {modseq} VANISHED)")
    assert lines[0] == b"* VANISHED (EARLIER) 4"
    raw.close()


def test_a_session_older_than_the_log_still_learns_every_expunge(env: ImapEnv) -> None:
    user = env.new_account()
    for n in range(1, 5):
        env.deliver(user, message(f"old session {n}"))
    stale = RawImap(env.port())
    stale.login(user)
    stale.command("s", "SELECT INBOX")
    other = RawImap(env.port())
    other.login(user)
    other.command("s", "SELECT INBOX")
    other.command("d", "UID STORE 2,3 +FLAGS.SILENT (\\Deleted)")
    other.command("x", "EXPUNGE")
    other.close()
    prune_everything(env)  # before the stale session refreshes: its catch-up cannot use the log
    lines = stale.command("n", "NOOP")
    assert lines.count(b"* 2 EXPUNGE") == 2 and lines[-1].startswith(b"n OK"), lines
    assert b"* 2 EXISTS" not in lines  # EXPUNGE responses carry the count
    stale.close()
