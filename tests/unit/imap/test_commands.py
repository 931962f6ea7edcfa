"""Arguments of every command family parsed into their dataclasses."""

from __future__ import annotations

import datetime

import pytest
from mailstack.services.imap.protocol import (
    Append,
    AppendMessage,
    Authenticate,
    Command,
    CopyMove,
    Create,
    Enable,
    Id,
    ListMailboxes,
    Login,
    Lsub,
    MailboxArgument,
    NoArguments,
    ParseError,
    QresyncParameters,
    QuotaRoot,
    Rename,
    Select,
    SequenceArgument,
    SequenceSet,
    SetQuota,
    Status,
    Store,
)
from mailstack.services.imap.protocol import (
    parse_command as parse_with,
)
from mailstack.services.imap.registry import GRAMMAR

from .feeding import assert_events, parse_one


def parse_command(data: bytes, utf8: bool = False) -> Command | ParseError:
    """A command parsed with the registry's grammar."""
    return parse_with(GRAMMAR, data, utf8)


@pytest.mark.parametrize(
    "name", ["CAPABILITY", "NOOP", "LOGOUT", "STARTTLS", "CHECK", "CLOSE", "UNSELECT", "EXPUNGE", "IDLE", "NAMESPACE"]
)
def test_commands_without_arguments(name: str) -> None:
    assert parse_command(f"t1 {name.lower()}".encode()) == Command("t1", name, NoArguments())
    assert parse_command(f"t1 {name} x".encode()) == ParseError("t1", "unexpected characters at end of command")


def test_authenticate_with_and_without_initial_response() -> None:
    assert parse_one(b"a AUTHENTICATE plain\r\n").args == Authenticate("PLAIN")
    assert parse_one(b"a AUTHENTICATE PLAIN AGZyZWQAcHc=\r\n").args == Authenticate("PLAIN", b"AGZyZWQAcHc=")
    assert parse_one(b"a AUTHENTICATE PLAIN =\r\n").args == Authenticate("PLAIN", b"=")
    assert isinstance(parse_command(b"a AUTHENTICATE PLAIN !!"), ParseError)


def test_login_atoms_quoted_and_literals() -> None:
    assert parse_one(b"a LOGIN fred secret\r\n").args == Login("fred", "secret")
    assert parse_one(b'a LOGIN "fr ed" "p\\\\w\\""\r\n').args == Login("fr ed", 'p\\w"')
    assert parse_one(b'a LOGIN {4+}\r\nfr\xc3\xa9 {3}\r\n"( \r\n').args == Login("fré", '"( ')
    assert parse_command(b'a LOGIN fred "bad\\x"') == ParseError("a", "invalid escape in quoted string")
    assert parse_command(b"a LOGIN fred \xff") == ParseError("a", "expected astring")


def test_select_examine_with_condstore_and_qresync() -> None:
    assert parse_one(b"a SELECT inbox\r\n") == Command("a", "SELECT", Select("INBOX"))
    assert parse_one(b'a EXAMINE "Entw&APw-rfe"\r\n') == Command("a", "EXAMINE", Select("Entwürfe"))
    assert parse_one(b"a SELECT INBOX (CONDSTORE)\r\n").args == Select("INBOX", condstore=True)
    assert parse_one(b"a SELECT INBOX (QRESYNC (67890007 20050715194045000))\r\n").args == Select(
        "INBOX", qresync=QresyncParameters(67890007, 20050715194045000)
    )
    full = b"a SELECT INBOX (QRESYNC (67890007 90060115194045000 41:211,214:541 (1:3 1:3)))\r\n"
    assert parse_one(full).args == Select(
        "INBOX",
        qresync=QresyncParameters(
            67890007,
            90060115194045000,
            SequenceSet.parse("41:211,214:541"),
            SequenceSet.parse("1:3"),
            SequenceSet.parse("1:3"),
        ),
    )
    only_match = parse_one(b"a SELECT INBOX (QRESYNC (1 2 (1 5)))\r\n").args
    assert isinstance(only_match, Select) and only_match.qresync == QresyncParameters(
        1, 2, None, SequenceSet.parse("1"), SequenceSet.parse("5")
    )
    assert isinstance(parse_command(b"a SELECT INBOX (FOO)"), ParseError)
    assert isinstance(parse_command(b"a SELECT INBOX ()"), ParseError)
    assert isinstance(parse_command(b"a SELECT INBOX (QRESYNC (0 2))"), ParseError)


def test_mailbox_commands() -> None:
    assert parse_one(b"a CREATE foo/bar\r\n").args == Create("foo/bar")
    assert parse_one(b"a CREATE Sent (USE (\\sent \\Archive))\r\n").args == Create("Sent", ("\\Sent", "\\Archive"))
    # RFC 9051 §9: a string literal is CHAR8, no NUL
    assert isinstance(parse_command(b"a CREATE {3}\r\na\x00b"), ParseError)
    # RFC 6154 §6 use-attr-ext = "\\" atom: an unknown one parses (the handler says NO [USEATTR])
    assert parse_one(b"a CREATE x (USE (\\Bogus))\r\n").args == Create("x", ("\\Bogus",))
    assert isinstance(parse_command(b"a CREATE x (USE (Bogus))"), ParseError)
    assert parse_one(b"a DELETE x\r\n") == Command("a", "DELETE", MailboxArgument("x"))
    assert parse_one(b'a RENAME "a b" c\r\n').args == Rename("a b", "c")
    assert parse_one(b"a SUBSCRIBE x\r\n") == Command("a", "SUBSCRIBE", MailboxArgument("x"))
    assert parse_one(b"a UNSUBSCRIBE x\r\n") == Command("a", "UNSUBSCRIBE", MailboxArgument("x"))
    assert parse_one(b"a GETQUOTAROOT INBOX\r\n") == Command("a", "GETQUOTAROOT", MailboxArgument("INBOX"))
    # fits the grammar, not modified UTF-7: parsed, marked for NO (RFC 9051 §7.1.5); was a BAD before issue 15
    invalid = parse_command(b"a DELETE &Jjo")
    assert isinstance(invalid, Command)
    assert invalid.invalid_mailbox == "invalid mailbox name: unterminated mUTF-7 shift sequence"
    assert parse_one(b"a DELETE x\r\n").invalid_mailbox == ""
    listed = parse_command(b'a LIST "" ("&Jjo" "x*")')
    assert isinstance(listed, Command) and listed.args == ListMailboxes("", ("x*",), extended=True)
    assert not listed.invalid_mailbox, "an invalid pattern among others matches nothing"
    only_invalid = parse_command(b'a LIST "" "&Jjo"')
    assert isinstance(only_invalid, Command) and only_invalid.invalid_mailbox


def test_list_and_lsub() -> None:
    assert parse_one(b'a LIST "" *\r\n').args == ListMailboxes("", ("*",))
    assert parse_one(b"a LIST ~/Mail/ %\r\n").args == ListMailboxes("~/Mail/", ("%",))
    assert parse_one(b'a LIST "" foo]*\r\n').args == ListMailboxes("", ("foo]*",))
    extended = parse_one(
        b'a LIST (SUBSCRIBED RECURSIVEMATCH) "" ("INBOX" "Dr&AOk-*" %)'
        b" RETURN (CHILDREN SPECIAL-USE STATUS (MESSAGES UIDNEXT))\r\n"
    ).args
    assert extended == ListMailboxes(
        "",
        ("INBOX", "Dré*", "%"),
        frozenset({"SUBSCRIBED", "RECURSIVEMATCH"}),
        frozenset({"CHILDREN", "SPECIAL-USE"}),
        ("MESSAGES", "UIDNEXT"),
        extended=True,
    )
    assert parse_one(b'a LIST "" % RETURN ()\r\n').args == ListMailboxes("", ("%",), extended=True)
    assert parse_one(b'a LIST (SPECIAL-USE) "" *\r\n').args == ListMailboxes(
        "", ("*",), frozenset({"SPECIAL-USE"}), extended=True
    )
    assert parse_command(b'a LIST (RECURSIVEMATCH) "" *') == ParseError(
        "a", "RECURSIVEMATCH needs another selection option"
    )
    assert isinstance(parse_command(b'a LIST "" * RETURN (BOGUS)'), ParseError)
    assert parse_one(b'a LSUB "#news." "comp.mail.*"\r\n').args == Lsub("#news.", "comp.mail.*")


def test_status() -> None:
    cmd = parse_one(b"a STATUS blurdybloop (UIDNEXT messages HIGHESTMODSEQ SIZE APPENDLIMIT DELETED)\r\n")
    assert cmd.args == Status("blurdybloop", ("UIDNEXT", "MESSAGES", "HIGHESTMODSEQ", "SIZE", "APPENDLIMIT", "DELETED"))
    assert parse_command(b"a STATUS x (FOO)") == ParseError("a", "unknown status item FOO")
    assert isinstance(parse_command(b"a STATUS x ()"), ParseError)


def test_append_forms() -> None:
    plain = parse_one(b"a APPEND saved-messages {5}\r\nhello\r\n").args
    assert plain == Append("saved-messages", (AppendMessage((), None, b"hello"),))
    dated = parse_one(b'a APPEND INBOX (\\Seen $Junk) " 7-Feb-1994 21:52:25 -0800" {2+}\r\nhi\r\n').args
    tz = datetime.timezone(datetime.timedelta(hours=-8))
    assert dated == Append(
        "INBOX", (AppendMessage(("\\Seen", "$Junk"), datetime.datetime(1994, 2, 7, 21, 52, 25, tzinfo=tz), b"hi"),)
    )
    binary = parse_one(b"a APPEND INBOX ~{3+}\r\n\x00\x01\x02\r\n").args
    assert binary == Append("INBOX", (AppendMessage((), None, b"\x00\x01\x02", binary=True),))
    multi = parse_one(b"a APPEND INBOX {1+}\r\na (\\Draft) {1+}\r\nb\r\n").args
    assert multi == Append("INBOX", (AppendMessage((), None, b"a"), AppendMessage(("\\Draft",), None, b"b")))
    assert parse_command(b'a APPEND INBOX "hello"') == ParseError("a", "invalid date")
    assert parse_command(b"a APPEND INBOX (\\Seen)") == ParseError("a", "expected SP")
    assert parse_command(b'a APPEND INBOX "31-Feb-2020 00:00:00 +0000" {0}\r\n') == ParseError("a", "invalid date")
    assert parse_command(b'a APPEND INBOX "01-Feb-2020 00:00:00 +2400" {0}\r\n') == ParseError("a", "invalid zone")


def test_uid_expunge_and_uid_forms() -> None:
    assert parse_one(b"a UID EXPUNGE 3000:3002\r\n") == Command(
        "a", "EXPUNGE", SequenceArgument(SequenceSet.parse("3000:3002")), uid=True
    )
    assert parse_one(b"a uid copy 1:* Trash\r\n") == Command(
        "a", "COPY", CopyMove(SequenceSet.parse("1:*"), "Trash"), True
    )
    assert parse_one(b'a MOVE 2,4 "Old mail"\r\n') == Command(
        "a", "MOVE", CopyMove(SequenceSet.parse("2,4"), "Old mail")
    )
    assert parse_command(b"a UID LOGIN x y") == ParseError("a", "UID LOGIN is not a command")
    assert parse_command(b"a UID EXPUNGE") == ParseError("a", "expected SP")


def test_store() -> None:
    assert parse_one(b"a STORE 2:4 +FLAGS (\\Deleted)\r\n").args == Store(
        SequenceSet.parse("2:4"), "+", False, ("\\Deleted",)
    )
    assert parse_one(b"a STORE 1 -flags.silent \\Seen $Label1\r\n").args == Store(
        SequenceSet.parse("1"), "-", True, ("\\Seen", "$Label1")
    )
    assert parse_one(b"a STORE 1 FLAGS ()\r\n").args == Store(SequenceSet.parse("1"), "", False, ())
    assert parse_one(b"a UID STORE $ (UNCHANGEDSINCE 0) FLAGS.SILENT (\\Answered)\r\n") == Command(
        "a", "STORE", Store(SequenceSet(saved=True), "", True, ("\\Answered",), 0), uid=True
    )
    assert parse_command(b"a STORE 1 XFLAGS (\\Seen)") == ParseError("a", "expected FLAGS or FLAGS.SILENT")
    assert isinstance(parse_command(b"a STORE 1 (FOO 1) FLAGS (\\Seen)"), ParseError)


def test_id_enable_quota() -> None:
    assert parse_one(b"a ID NIL\r\n").args == Id(None)
    assert parse_one(b'a ID ("name" "sodr" "version" NIL)\r\n').args == Id((("name", "sodr"), ("version", None)))
    assert parse_one(b"a ID ()\r\n").args == Id(())
    assert parse_one(b"a ENABLE condstore utf8=accept\r\n").args == Enable(("CONDSTORE", "UTF8=ACCEPT"))
    assert parse_command(b"a ENABLE") == ParseError("a", "expected SP")
    assert parse_one(b'a GETQUOTA ""\r\n') == Command("a", "GETQUOTA", QuotaRoot(""))
    assert parse_one(b'a SETQUOTA "" (STORAGE 512 MESSAGE 1000)\r\n').args == SetQuota(
        "", (("STORAGE", 512), ("MESSAGE", 1000))
    )


def test_utf8_accept_mailbox_names() -> None:
    assert parse_command('a SELECT "Entwürfe"'.encode(), utf8=True) == Command("a", "SELECT", Select("Entwürfe"))
    # in UTF8=ACCEPT mode "&" is just a character
    assert parse_command(b"a SELECT a&b", utf8=True) == Command("a", "SELECT", Select("a&b"))
    # without UTF8=ACCEPT 8-bit is not modified UTF-7; it fits RFC 9051's quoted (UTF-8 allowed) and a
    # literal: NO, not BAD (RFC 9051 §7.1.5; a ParseError before issue 15)
    eight_bit = parse_command('a SELECT "Entwürfe"'.encode())
    assert isinstance(eight_bit, Command) and "8-bit" in eight_bit.invalid_mailbox


def test_pipelined_commands_each_parsed() -> None:
    data = b"a1 SELECT INBOX\r\na2 FETCH 1 FLAGS\r\na3 BOGUS\r\na4 CLOSE\r\n"
    events = [parse_command(line) for line in data.split(b"\r\n") if line]
    assert_events(data, events)
