"""The UID lists and POP3 UIDL formats `mailstack import maildir` keeps (issue 16), from the
formats as Dovecot and Courier write them, including damaged and hostile ones."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from mailstack.services.common.maildir import read_maildir, read_subscriptions
from mailstack.services.common.maildir_uids import (
    format_uidl,
    parse_courier_uiddb,
    parse_dovecot_uidlist,
)

from mailstack.cli.imap_source import parse_internaldate, parse_list
from mailstack.cli.maildir_source import vsize_of
from mailstack.cli.output import parse_uidl_format

# As Dovecot 2.3 writes it (the extensions as its doc lists them: W vsize, S size, G guid, P UIDL).
UIDLIST = (
    "3 V1796646171 N7 Gc182910d19a5166bfd2f000083ecc375\n"
    "1 :1796646169.M237330P12285.vm,S=46,W=51\n"
    "2 W120 S117 P0000abcd-old :1796646170.M2P1.vm,S=117,W=120\n"
    "5 G0123 O3 :1796646171.M3P1.vm\n"
    "garbage line\n"
)


def test_dovecot_uidlist_version_3() -> None:
    parsed = parse_dovecot_uidlist(UIDLIST)
    assert (parsed.uidvalidity, parsed.uidnext, parsed.source) == (1796646171, 7, "dovecot-uidlist")
    assert set(parsed.entries) == {
        "1796646169.M237330P12285.vm,S=46,W=51",
        "1796646170.M2P1.vm,S=117,W=120",
        "1796646171.M3P1.vm",
    }
    second = parsed.entries["1796646170.M2P1.vm,S=117,W=120"]
    assert (second.uid, second.pop3_uidl, second.vsize) == (2, "0000abcd-old", 120)
    assert parsed.entries["1796646171.M3P1.vm"].guid == "0123"


@pytest.mark.parametrize(
    "text",
    ["", "1 1796646171 7\n", "3 N7\n", "3 V0 N1\n", "3 V99999999999 N1\n", "3 Vabc N1\n"],
)
def test_dovecot_uidlist_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_dovecot_uidlist(text)


def test_dovecot_uidlist_bad_uid_is_an_error_not_a_guess() -> None:
    with pytest.raises(ValueError):
        parse_dovecot_uidlist("3 V1 N5\n0 :name\n")


def test_courier_uiddb_both_versions() -> None:
    v1 = parse_courier_uiddb("1 1234 4\n1 1700000000.M1P1.host\n3 1700000001.M2P1.host:2,S\n")
    assert (v1.uidvalidity, v1.uidnext) == (1234, 4)
    assert {k: e.uid for k, e in v1.entries.items()} == {"1700000000.M1P1.host": 1, "1700000001.M2P1.host": 3}
    v2 = parse_courier_uiddb("2 1234 9\n1700000000.M1P1.host 8\n")
    assert v2.entries["1700000000.M1P1.host"].uid == 8
    with pytest.raises(ValueError):
        parse_courier_uiddb("3 V1 N1\n")


def test_pop3_uidl_format_as_dovecot_expands_it() -> None:
    # Dovecot 2.3's POP3 UIDL of UID 1 in a mailbox of UIDVALIDITY 0x6b16a51b (seen on the wire)
    assert format_uidl("%08Xu%08Xv", 1, 0x6B16A51B) == "000000016b16a51b"
    assert format_uidl("%v-%u", 7, 1234) == "1234-7"
    assert format_uidl("%f", 1, 1, "1700.M1P1.host,S=5:2,S") == "1700.M1P1.host,S=5"
    assert format_uidl("%g%%", 1, 1, guid="abc") == "abc%"
    with pytest.raises(ValueError):
        format_uidl("%m", 1, 1)  # the header's MD5: needs the message
    assert parse_uidl_format("") == ""
    assert (vsize_of("1796646169.M2P1.vm,S=46,W=51:2,S"), vsize_of("1600000000.M1P1.host:2,W")) == (51, 0)
    with pytest.raises(argparse.ArgumentTypeError):
        parse_uidl_format("%08Xu%q")


def test_maildir_messages_carry_their_listed_uids(tmp_path: Path) -> None:
    root = tmp_path / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True)
    (root / "dovecot-uidlist").write_text(UIDLIST)
    (root / "cur" / "1796646169.M237330P12285.vm,S=46,W=51:2,S").write_bytes(b"Subject: a\n\nx\n")
    (root / "new" / "1796646199.M9P9.vm").write_bytes(b"Subject: b\n\ny\n")  # not listed yet
    broken = root / ".Broken"
    (broken / "cur").mkdir(parents=True)
    (broken / "dovecot-uidlist").write_text("2 V1 N1\n")
    plain = root / ".Plain"
    (plain / "cur").mkdir(parents=True)
    folders = {f.mailbox: f for f in read_maildir(root)}
    inbox = folders["INBOX"]
    assert inbox.uids is not None and inbox.uids.uidvalidity == 1796646171
    assert [(m.path.name[:10], m.kept.uid if m.kept else 0) for m in inbox.messages] == [
        ("1796646169", 1),
        ("1796646199", 0),
    ]
    assert folders["Broken"].uids is None and "dovecot-uidlist" in folders["Broken"].uid_problem
    assert folders["Plain"].uids is None and folders["Plain"].uid_problem == ""


def test_subscriptions_file_formats(tmp_path: Path) -> None:
    (tmp_path / "subscriptions").write_text("V\t2\n\nArchiv&APY-\t2023\nINBOX\nSent\n")  # Dovecot 2.3
    assert read_subscriptions(tmp_path) == ["Archiv\u00f6/2023", "INBOX", "Sent"]
    (tmp_path / "subscriptions").write_text("INBOX.Sent\nINBOX.Archive.2023\n")  # Courier
    assert read_subscriptions(tmp_path) == ["Archive/2023", "Sent"]
    (tmp_path / "subscriptions").unlink()
    assert read_subscriptions(tmp_path) == []


def test_imap_list_and_internaldate() -> None:
    answers: list[bytes | tuple[bytes, bytes] | None] = [
        b'(\\HasNoChildren) "/" INBOX',
        b'(\\HasChildren \\Noselect) "/" "Archiv&APY-"',
        b'(\\HasNoChildren) "." "Archiv&APY-.2023"',
        (b'(\\HasNoChildren) "/" {9}', b'Say "hi"'),
        b"garbage",
        None,
    ]
    assert parse_list(answers) == [
        ("INBOX", {"\\hasnochildren"}),
        ("Archiv\u00f6", {"\\haschildren", "\\noselect"}),
        ("Archiv\u00f6/2023", {"\\hasnochildren"}),
        ('Say "hi"', {"\\hasnochildren"}),
    ]
    assert parse_internaldate("13-Sep-2020 12:26:40 +0000") == (1600000000, 0)
    assert parse_internaldate(" 3-Jan-2021 10:00:00 +0130") == (1609668000 - 5400, 90)  # 10:00 UTC is 1609668000
