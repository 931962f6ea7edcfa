"""Message commands over a real socket: APPEND (APPENDUID, date, TRYCREATE, TOOBIG, LITERAL+),
FETCH (every item), STORE, SEARCH (+ESEARCH), COPY/MOVE (COPYUID), EXPUNGE/UID EXPUNGE/CLOSE/
UNSELECT, EXAMINE read-only, CONDSTORE basics."""

from __future__ import annotations

import imaplib
import re
from collections.abc import Iterator

import pytest
from imapclient import IMAPClient

from tests.fixtures.imap_server import PASSWORD, ImapEnv, RawImap, imap_env, message

MULTIPART = (
    b"From: Ann <ann@remote.test>\r\nTo: x@example.test\r\nSubject: parts\r\nMIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\n'
    b"first part\r\n--b1\r\nContent-Type: text/html\r\n\r\n<p>second</p>\r\n--b1--\r\n"
)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImapEnv]:
    with imap_env(tmp_path_factory.mktemp("imap-messages"), max_message_size=64 * 1024) as e:
        yield e


def _selected(env: ImapEnv, count: int = 3) -> tuple[RawImap, str]:
    user = env.new_account()
    for i in range(1, count + 1):
        env.deliver(user, message(f"msg {i}", f"body number {i}\r\n"))
    raw = RawImap(env.port())
    raw.login(user)
    assert raw.command("s", "SELECT INBOX")[-1] == b"s OK [READ-WRITE] SELECT completed"
    return raw, user


def test_select_responses(env: ImapEnv) -> None:
    user = env.new_account()
    env.deliver(user, message("one"))
    env.append(user, "INBOX", message("two"), ("\\Seen", "$Label1"))
    raw = RawImap(env.port())
    raw.login(user)
    lines = raw.command("s", "SELECT INBOX")
    assert b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Label1)" in lines
    assert any(line.startswith(b"* OK [PERMANENTFLAGS (") and b"\\*)]" in line for line in lines)
    assert b"* 2 EXISTS" in lines and b"* 2 RECENT" in lines
    assert any(line.startswith(b"* OK [UNSEEN 1]") for line in lines)
    assert any(line.startswith(b"* OK [UIDVALIDITY ") for line in lines)
    assert any(line.startswith(b"* OK [UIDNEXT 3]") for line in lines)
    assert any(line.startswith(b"* OK [HIGHESTMODSEQ ") for line in lines)
    lines = raw.command("e", "EXAMINE INBOX")
    assert lines[-1] == b"e OK [READ-ONLY] EXAMINE completed"
    assert b"* OK [PERMANENTFLAGS ()] flags and keywords can be stored" in lines
    assert raw.command("st", "STORE 1 +FLAGS (\\Seen)")[-1].startswith(b"st NO [READ-ONLY]")
    assert raw.command("x", "EXPUNGE")[-1].startswith(b"x NO")
    assert raw.command("n", "SELECT Nope")[-1].startswith(b"n NO [NONEXISTENT]")
    assert raw.command("f", "FETCH 1 FLAGS")[-1].startswith(b"f BAD")  # the failed SELECT unselected
    raw.close()


def test_fetch_items(env: ImapEnv) -> None:
    user = env.new_account()
    env.append(user, "INBOX", MULTIPART)
    client = imaplib.IMAP4("127.0.0.1", env.port())
    client.login(user, PASSWORD)
    client.select("INBOX")
    _, data = client.fetch("1", "(UID FLAGS INTERNALDATE RFC822.SIZE ENVELOPE BODYSTRUCTURE BODY)")
    head = data[0].decode()  # type: ignore[union-attr]
    assert "UID 1 " in head and f"RFC822.SIZE {len(MULTIPART)}" in head
    assert 'ENVELOPE (NIL "parts" (("Ann" NIL "ann" "remote.test"))' in head
    assert 'BODYSTRUCTURE (("TEXT" "PLAIN"' in head and '"MIXED" ("BOUNDARY" "b1")' in head
    assert re.search(r'INTERNALDATE "[ \d]\d-\w{3}-\d{4} \d\d:\d\d:\d\d [+-]\d{4}"', head)
    _, data = client.fetch(
        "1", "(BODY.PEEK[1] BODY.PEEK[2.MIME] BODY.PEEK[HEADER.FIELDS (SUBJECT)] BODY.PEEK[TEXT]<0.4>)"
    )
    pairs = [p for p in data if isinstance(p, tuple)]
    assert pairs[0] == (b"1 (BODY[1] {10}", b"first part")
    assert pairs[1] == (b" BODY[2.MIME] {27}", b"Content-Type: text/html\r\n\r\n")
    assert pairs[2] == (b" BODY[HEADER.FIELDS (SUBJECT)] {18}", b"Subject: parts\r\n\r\n")
    assert pairs[3] == (b" BODY[TEXT]<0> {4}", b"--b1")
    _, data = client.fetch("1", "(FLAGS)")
    assert b"\\Seen" not in data[0]  # type: ignore[operator]  # PEEK never sets \Seen
    _, data = client.fetch("1", "(RFC822.HEADER)")
    assert data[0][1].startswith(b"From: Ann")  # type: ignore[index,union-attr]
    _, data = client.fetch("1", "(RFC822)")
    # the \\Seen it sets comes before the body literal (fixed-size items first, as Dovecot)
    assert data[0][1] == MULTIPART and b"\\Seen" in data[0][0]  # type: ignore[index,operator]
    _, data = client.uid("FETCH", "1", "FAST")
    assert b"UID 1" in data[0] and b"RFC822.SIZE" in data[0]  # type: ignore[operator]
    _, data = client.uid("FETCH", "99:*", "(FLAGS)")  # RFC 9051: "*" is the highest UID: 1
    assert data[0] is not None and b"UID 1" in data[0]
    client.logout()


def test_fetch_body_sections_of_a_message_set(env: ImapEnv) -> None:
    # every body item of every message comes from one batched read; \Seen and <o.l> per message
    user = env.new_account()
    env.append(user, "INBOX", MULTIPART)
    env.append(user, "INBOX", message("two", "body two\r\n"), ("\\Seen",))
    env.append(user, "INBOX", message("three", "body three\r\n"))
    client = imaplib.IMAP4("127.0.0.1", env.port())
    client.login(user, PASSWORD)
    client.select("INBOX")
    _, data = client.fetch("1:3", "(BODY[HEADER.FIELDS (SUBJECT)] BODY.PEEK[1]<2.3> RFC822.TEXT)")
    heads = [p[0] for p in data if isinstance(p, tuple)]
    texts = [p[1] for p in data if isinstance(p, tuple)]
    assert texts[0::3] == [b"Subject: parts\r\n\r\n", b"Subject: two\r\n\r\n", b"Subject: three\r\n\r\n"]
    assert texts[1] == b"rst" and heads[1] == b" BODY[1]<2> {3}" and texts[4] == b"dy "
    assert texts[2] == MULTIPART[MULTIPART.index(b"\r\n\r\n") + 4 :] and texts[8] == b"body three\r\n"
    # FLAGS of the newly seen come first, before their bodies (fixed-size items first, as Dovecot)
    assert [b"(FLAGS (" in h and b"\\Seen)" in h for h in heads[0::3]] == [True, False, True]
    _, data = client.uid("FETCH", "1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert [p[0] for p in data if isinstance(p, tuple)] == [
        b"1 (UID 1 BODY[HEADER.FIELDS (SUBJECT)] {18}",
        b"2 (UID 2 BODY[HEADER.FIELDS (SUBJECT)] {16}",
        b"3 (UID 3 BODY[HEADER.FIELDS (SUBJECT)] {18}",
    ]
    # expunged by another session, not yet announced here (no EXPUNGE during FETCH): left out
    other = imaplib.IMAP4("127.0.0.1", env.port())
    other.login(user, PASSWORD)
    other.select("INBOX")
    other.store("2", "+FLAGS.SILENT", "(\\Deleted)")
    other.expunge()
    other.logout()
    _, data = client.fetch("1:3", "(BODY.PEEK[TEXT]<0.4>)")
    assert [p[0] for p in data if isinstance(p, tuple)] == [b"1 (BODY[TEXT]<0> {4}", b"3 (BODY[TEXT]<0> {4}"]
    client.logout()


def test_store_flags_keywords_and_silent(env: ImapEnv) -> None:
    raw, _ = _selected(env)
    lines = raw.command("a", "STORE 1:2 +FLAGS (\\Flagged $Work)")
    assert lines[:-1] == [
        # RFC 3501 §7.2.6: the new keyword is announced before a FETCH shows it (issue 15 defect 1)
        b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Work)",
        b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Work \\*)]"
        b" flags and keywords can be stored",
        b"* 1 FETCH (FLAGS ($Work \\Flagged \\Recent))",
        b"* 2 FETCH (FLAGS ($Work \\Flagged \\Recent))",
    ]
    # unchanged messages are still reported (the store only lists real changes)
    lines = raw.command("b", "STORE 1:3 +FLAGS (\\Flagged)")
    assert len(lines) == 4 and lines[2] == b"* 3 FETCH (FLAGS (\\Flagged \\Recent))"
    assert raw.command("c", "STORE 1 -FLAGS.SILENT ($Work)") == [b"c OK completed"]
    lines = raw.command("d", "UID STORE 3 FLAGS (\\Seen)")
    assert lines[0] == b"* 3 FETCH (UID 3 FLAGS (\\Recent \\Seen))"
    lines = raw.command("e", "FETCH 1:3 FLAGS")
    assert lines[:-1] == [
        b"* 1 FETCH (FLAGS (\\Flagged \\Recent))",
        b"* 2 FETCH (FLAGS ($Work \\Flagged \\Recent))",
        b"* 3 FETCH (FLAGS (\\Recent \\Seen))",
    ]
    raw.close()


def test_search_keys_and_esearch(env: ImapEnv) -> None:
    raw, _ = _selected(env, 4)
    raw.command("f", "STORE 2,4 +FLAGS (\\Flagged)")
    assert raw.command("a", "SEARCH ALL")[0] == b"* SEARCH 1 2 3 4"
    assert raw.command("b", "SEARCH FLAGGED")[0] == b"* SEARCH 2 4"
    assert raw.command("c", 'SEARCH OR 1 SUBJECT "msg 3"')[0] == b"* SEARCH 1 3"
    assert raw.command("d", 'SEARCH NOT (FLAGGED) BODY "number 3"')[0] == b"* SEARCH 3"
    assert raw.command("e", "UID SEARCH 2:3 UNFLAGGED")[0] == b"* SEARCH 3"
    assert raw.command("g", "SEARCH CHARSET UTF-8 FROM bob RECENT")[0] == b"* SEARCH 1 2 3 4"
    assert raw.command("h", "SEARCH CHARSET KOI8-R ALL")[-1].startswith(b"h NO [BADCHARSET")
    assert raw.command("i", "SEARCH LARGER 1 SENTSINCE 1-Jan-2020 HEADER Message-ID msg.2")[0] == b"* SEARCH 2"
    assert raw.command("j", "SEARCH NEW")[0] == b"* SEARCH 1 2 3 4"
    lines = raw.command("k", "SEARCH RETURN (MIN MAX COUNT ALL) FLAGGED")
    assert lines[0] == b'* ESEARCH (TAG "k") MIN 2 MAX 4 ALL 2,4 COUNT 2'
    lines = raw.command("l", "UID SEARCH RETURN () UNFLAGGED")
    assert lines[0] == b'* ESEARCH (TAG "l") UID ALL 1,3'
    assert raw.command("m", "SEARCH BOGUS")[-1].startswith(b"m BAD")
    raw.close()


def test_copy_move_and_copyuid(env: ImapEnv) -> None:
    raw, _ = _selected(env, 3)
    lines = raw.command("c", "COPY 1:2 Archive")
    assert re.fullmatch(rb"c OK \[COPYUID \d+ 1:2 1:2\] COPY completed", lines[-1])
    assert raw.command("t", "COPY 1 Nope")[-1].startswith(b"t NO [TRYCREATE]")
    lines = raw.command("m", "UID MOVE 2 Trash")
    assert re.fullmatch(rb"\* OK \[COPYUID \d+ 2 1\] moved", lines[0])
    assert lines[1] == b"* 2 EXPUNGE" and lines[-1] == b"m OK MOVE completed"
    lines = raw.command("m2", "MOVE 1 Trash")
    assert lines[1] == b"* 1 EXPUNGE"
    assert raw.command("s", "SEARCH ALL")[0] == b"* SEARCH 1"
    assert b"MESSAGES 2" in raw.command("st", "STATUS Trash (MESSAGES)")[0]
    raw.close()


def test_expunge_uid_expunge_close_unselect(env: ImapEnv) -> None:
    raw, _ = _selected(env, 5)
    raw.command("d", "STORE 1,2,4,5 +FLAGS.SILENT (\\Deleted)")
    # UID EXPUNGE only removes \Deleted messages of the set (RFC 4315 §2.1)
    assert raw.command("u", "UID EXPUNGE 2:3")[:-1] == [b"* 2 EXPUNGE"]
    assert raw.command("x", "EXPUNGE")[:-1] == [b"* 1 EXPUNGE", b"* 2 EXPUNGE", b"* 2 EXPUNGE"]
    assert raw.command("s", "UID SEARCH ALL")[0] == b"* SEARCH 3"
    raw.command("d2", "STORE 1 +FLAGS.SILENT (\\Deleted)")
    assert raw.command("un", "UNSELECT")[-1] == b"un OK completed"
    assert b"* 1 EXISTS" in raw.command("s2", "SELECT INBOX")  # UNSELECT expunged nothing
    assert raw.command("cl", "CLOSE") == [b"cl OK completed"]  # silent expunge
    assert b"* 0 EXISTS" in raw.command("s3", "SELECT INBOX")
    assert raw.command("f", "FETCH 1:* FLAGS")[-1].startswith(b"f BAD")
    raw.close()


def test_append_forms(env: ImapEnv) -> None:
    user = env.new_account()
    raw = RawImap(env.port())
    raw.login(user)
    data = message("appended")
    # synchronizing literal: the server answers "+" first (RFC 3501 §7.5)
    raw.send(b'a1 APPEND Sent (\\Seen $Sent) "26-Nov-2026 14:44:22 +0100" {%d}\r\n' % len(data))
    assert raw.line().startswith(b"+ ")
    raw.send(data + b"\r\n")
    reply = raw.until("a1")[-1]
    assert re.fullmatch(rb"a1 OK \[APPENDUID \d+ 1\] APPEND completed", reply)
    # LITERAL+ (RFC 7888): no continuation
    raw.send(b"a2 APPEND Sent {%d+}\r\n" % len(data) + data + b"\r\n")
    assert re.fullmatch(rb"a2 OK \[APPENDUID \d+ 2\] APPEND completed", raw.until("a2")[-1])
    raw.send(b"a3 APPEND Nope {%d+}\r\n" % len(data) + data + b"\r\n")
    assert raw.until("a3")[-1].startswith(b"a3 NO [TRYCREATE]")
    # over APPENDLIMIT: refused before the literal is sent (RFC 7889)
    raw.send(b"a4 APPEND Sent {%d}\r\n" % (100 * 1024))
    assert raw.line().startswith(b"a4 NO [TOOBIG]")
    raw.command("s", "SELECT Sent")
    lines = raw.command("f", "FETCH 1 (FLAGS INTERNALDATE)")
    assert lines[0] == b'* 1 FETCH (FLAGS ($Sent \\Recent \\Seen) INTERNALDATE "26-Nov-2026 14:44:22 +0100")'
    # APPEND to the selected mailbox is announced with EXISTS
    raw.send(b"a5 APPEND Sent {%d+}\r\n" % len(data) + data + b"\r\n")
    assert b"* 3 EXISTS" in raw.until("a5")
    raw.close()


def test_append_to_the_selected_mailbox_and_own_changes(env: ImapEnv) -> None:
    # the session's own APPEND/STORE/EXPUNGE go into its view directly; others' changes still come
    user = env.new_account()
    raw = RawImap(env.port())
    raw.login(user)
    raw.command("s", "SELECT INBOX")
    data = message("mine")
    raw.send(b"a1 APPEND INBOX (\\seen $Mine) {%d+}\r\n" % len(data) + data + b"\r\n")
    assert raw.until("a1")[:-1] == [  # the new keyword first (RFC 3501 §7.2.6)
        b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Mine)",
        b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Mine \\*)]"
        b" flags and keywords can be stored",
        b"* 1 EXISTS",
        b"* 1 RECENT",
    ]
    assert raw.command("f1", "FETCH 1 FLAGS")[0] == b"* 1 FETCH (FLAGS ($Mine \\Recent \\Seen))"
    env.deliver(user, message("theirs"))  # UID 2 arrives before this session's next APPEND (UID 3)
    raw.send(b"a2 APPEND INBOX {%d+}\r\n" % len(data) + data + b"\r\n")
    lines = raw.until("a2")
    assert b"* 3 EXISTS" in lines and lines[-1].startswith(b"a2 OK [APPENDUID ")
    assert raw.command("f2", "FETCH 1:* UID")[:-1] == [b"* 1 FETCH (UID 1)", b"* 2 FETCH (UID 2)", b"* 3 FETCH (UID 3)"]
    assert raw.command("st", "STORE 2 +FLAGS.SILENT (\\Deleted)") == [b"st OK completed"]
    assert raw.command("x", "EXPUNGE")[:-1] == [b"* 2 EXPUNGE"]
    assert raw.command("n", "NOOP") == [b"n OK completed"]  # nothing announced twice
    other = RawImap(env.port())
    other.login(user)
    other.command("s", "SELECT INBOX")
    other.command("st", "STORE 1 -FLAGS.SILENT (\\Seen)")
    assert raw.command("n2", "NOOP")[0] == b"* 1 FETCH (UID 1 FLAGS ($Mine \\Recent))"
    other.close()
    raw.close()


def test_condstore_basics(env: ImapEnv) -> None:
    raw, _ = _selected(env, 3)
    lines = raw.command("a", "FETCH 1:3 (MODSEQ)")
    modseqs = [int(m) for m in re.findall(rb"MODSEQ \((\d+)\)", b"".join(lines))]
    assert len(modseqs) == 3
    top = max(modseqs)
    raw.command("b", "STORE 2 +FLAGS.SILENT (\\Answered)")
    lines = raw.command("c", f"FETCH 1:3 (FLAGS) (CHANGEDSINCE {top})")
    assert len(lines) == 2 and lines[0].startswith(b"* 2 FETCH (FLAGS (\\Answered \\Recent) MODSEQ (")
    lines = raw.command("d", f"STORE 1:3 (UNCHANGEDSINCE {top}) +FLAGS (\\Seen)")
    assert lines[-1].startswith(b"d OK [MODIFIED 2]")
    assert b"HIGHESTMODSEQ" in raw.command("st", "STATUS INBOX (HIGHESTMODSEQ)")[0]
    lines = raw.command("e", f"SEARCH MODSEQ {top + 1}")
    assert re.fullmatch(rb"\* SEARCH [\d ]+ \(MODSEQ \d+\)", lines[0])
    raw.close()


def test_imapclient_round_trip(env: ImapEnv) -> None:
    user = env.new_account()
    with IMAPClient("127.0.0.1", port=env.port(), ssl=False) as client:
        client.login(user, PASSWORD)
        client.append("INBOX", message("via imapclient"), flags=[b"\\Draft"])
        client.select_folder("INBOX")
        uids = client.search(["SUBJECT", "imapclient"])
        assert uids == [1]
        data = client.fetch(uids, ["ENVELOPE", "FLAGS", "BODY.PEEK[]"])
        assert data[1][b"ENVELOPE"].subject == b"via imapclient"
        assert b"\\Draft" in data[1][b"FLAGS"]
        client.add_flags(uids, [b"\\Seen"])
        client.copy(uids, "Archive")
        client.move(uids, "Trash")
        assert client.search(["ALL"]) == []
        client.select_folder("Trash")
        client.delete_messages([1])
        client.expunge()
        assert client.folder_status("Trash", [b"MESSAGES"])[b"MESSAGES"] == 0
        assert client.folder_status("Archive", [b"MESSAGES"])[b"MESSAGES"] == 1
