"""SEARCHRES (RFC 5182) over a real socket: SEARCH RETURN (SAVE) keeps its result, `$` names it in
FETCH, STORE, COPY, SEARCH and UID commands, and the result is emptied by a failed SEARCH and by
SELECT; expunged messages drop out of it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fixtures.imap_server import ImapEnv, RawImap, imap_env, message


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImapEnv]:
    with imap_env(tmp_path_factory.mktemp("imap-searchres")) as e:
        yield e


def selected(env: ImapEnv, subjects: list[str]) -> RawImap:
    user = env.new_account()
    for subject in subjects:
        env.deliver(user, message(subject))
    raw = RawImap(env.port())
    raw.login(user)
    assert b"SEARCHRES" in b"".join(raw.command("c", "CAPABILITY"))
    raw.command("s", "SELECT INBOX")
    return raw


def uids_fetched(lines: list[bytes]) -> list[int]:
    return [int(line.split(b"(UID ")[1].split(b")")[0].split()[0]) for line in lines if b" FETCH (UID " in line]


def test_saved_result_is_used_by_later_commands(env: ImapEnv) -> None:
    raw = selected(env, ["apple", "banana", "apple pie", "cherry", "apple tart"])
    lines = raw.command("a", 'SEARCH RETURN (SAVE) SUBJECT "apple"')
    assert lines == [b"a OK completed"], "SAVE alone answers no ESEARCH (RFC 5182 §2.4)"
    assert uids_fetched(raw.command("b", "FETCH $ (UID)")) == [1, 3, 5]
    assert uids_fetched(raw.command("c", "UID FETCH $ (UID)")) == [1, 3, 5]
    raw.command("d", "STORE $ +FLAGS.SILENT (\\Flagged)")
    assert raw.command("e", "SEARCH FLAGGED")[0] == b"* SEARCH 1 3 5"
    assert raw.command("f", "SEARCH NOT $")[0] == b"* SEARCH 2 4", "$ as a search key"
    assert raw.command("g", "UID SEARCH UID $ SUBJECT tart")[0] == b"* SEARCH 5"
    assert raw.command("h", "COPY $ Trash")[-1].startswith(b"h OK [COPYUID")
    raw.close()


def test_min_max_and_other_options(env: ImapEnv) -> None:
    raw = selected(env, ["x1", "y", "x2", "x3"])
    lines = raw.command("a", "SEARCH RETURN (SAVE MIN MAX COUNT) SUBJECT x")
    assert lines[0] == b'* ESEARCH (TAG "a") MIN 1 MAX 4 COUNT 3', "the other options still answered"
    # RFC 5182 §2.4: with COUNT (or ALL) the whole result is saved (this test said [1, 4] before issue 15)
    assert uids_fetched(raw.command("b", "FETCH $ (UID)")) == [1, 3, 4], "with COUNT the whole result is kept"
    raw.command("b2", "SEARCH RETURN (SAVE MIN MAX) SUBJECT x")
    assert uids_fetched(raw.command("b3", "FETCH $ (UID)")) == [1, 4], "with MIN/MAX alone only those are kept"
    raw.command("c", "UID SEARCH RETURN (SAVE MAX) SUBJECT x")
    assert uids_fetched(raw.command("d", "UID FETCH $ (UID)")) == [4]
    raw.close()


def test_emptied_by_a_failed_search_by_select_and_shrunk_by_expunge(env: ImapEnv) -> None:
    raw = selected(env, ["keep", "gone", "keep too"])
    raw.command("a", "SEARCH RETURN (SAVE) ALL")
    raw.command("b", "UID STORE 2 +FLAGS.SILENT (\\Deleted)")
    raw.command("c", "EXPUNGE")
    assert uids_fetched(raw.command("d", "FETCH $ (UID)")) == [1, 3], "the expunged message is gone from $"
    assert raw.command("e", "SEARCH RETURN (SAVE) CHARSET KOI8-R ALL")[-1].startswith(b"e NO")
    assert uids_fetched(raw.command("f", "FETCH $ (UID)")) == [], "a failed SEARCH ... SAVE empties it"
    raw.command("g", "SEARCH RETURN (SAVE) ALL")
    raw.command("h", "SELECT INBOX")
    assert uids_fetched(raw.command("i", "UID FETCH $ (UID)")) == [], "a new SELECT starts empty"
    raw.close()


def test_saved_result_in_uid_fetch_vanished(env: ImapEnv) -> None:
    raw = selected(env, ["a", "b", "c"])
    # STATUS HIGHESTMODSEQ enables CONDSTORE: an untagged OK [HIGHESTMODSEQ] may come first (RFC 7162 §3.1)
    status = next(line for line in raw.command("m", "STATUS INBOX (HIGHESTMODSEQ)") if line.startswith(b"* STATUS"))
    modseq = int(status.split(b"HIGHESTMODSEQ ")[1].split(b")")[0])
    raw.command("e", "ENABLE QRESYNC")
    raw.command("s", "SELECT INBOX")
    raw.command("a", "UID SEARCH RETURN (SAVE) UID 2:3")
    raw.command("d", "UID STORE 2 +FLAGS.SILENT (\\Deleted)")
    raw.command("x", "EXPUNGE")
    lines = raw.command("f", f"UID FETCH $ (FLAGS) (CHANGEDSINCE {modseq} VANISHED)")
    assert lines[-1].startswith(b"f OK"), lines
    assert lines[0] == b"* VANISHED (EARLIER) 2", "$ names UIDs 2 and 3; 2 is gone since"
    raw.close()
