"""The selected-mailbox view: sequence numbers, pending updates, when EXPUNGE may be sent."""

from __future__ import annotations

from mailstack.services.imap.mailbox_view import EXPUNGE, FLAGS, NEW, Change, MailboxView
from mailstack.services.imap.protocol import SequenceSet


def _view() -> MailboxView:
    return MailboxView("INBOX", False, 7, 5, 10, [(1, (), 3), (2, ("\\Seen",), 4), (4, (), 5)])


def test_resolve_sequence_and_uid_sets() -> None:
    view = _view()
    assert view.resolve(SequenceSet.parse("2:*"), uid=False) == [(2, 2), (3, 4)]
    assert view.resolve(SequenceSet.parse("3:4"), uid=True) == [(3, 4)]
    assert view.resolve(SequenceSet.parse("9:*"), uid=True) == [(3, 4)]  # "*" is the largest UID
    assert view.resolve(SequenceSet.parse("5:8"), uid=False) == []


def test_expunge_waits_until_allowed_and_renumbers() -> None:
    view = _view()
    view.apply([Change(2, 11, EXPUNGE), Change(5, 12, NEW, ("\\Flagged",))], 12)
    # new mail may be announced anytime; the expunged message keeps its number meanwhile
    assert view.updates(allow_expunge=False, with_modseq=False) == [b"* 4 EXISTS\r\n", b"* 0 RECENT\r\n"]
    assert view.seq_of(4) == 3
    assert view.updates(allow_expunge=True, with_modseq=False) == [b"* 2 EXPUNGE\r\n"]
    assert view.uids == [1, 4, 5] and view.modseq == 12


def test_flag_changes_are_announced_once_and_only_when_different() -> None:
    view = _view()
    view.apply([Change(1, 11, FLAGS, ("\\Answered",)), Change(2, 12, FLAGS, ("\\Seen",))], 12)
    assert view.updates(True, with_modseq=True) == [b"* 1 FETCH (UID 1 FLAGS (\\Answered) MODSEQ (11))\r\n"]
    assert view.updates(True, with_modseq=True) == []
    view.recent.add(4)
    assert view.flags_of(4) == {"\\Recent"}


def test_a_new_keyword_is_announced_once_before_the_fetch_showing_it() -> None:
    # RFC 3501 §7.2.6: FLAGS and PERMANENTFLAGS name every keyword before a FETCH can show it
    view = MailboxView("INBOX", False, 7, 5, 10, [(1, ("$Old",), 3), (2, (), 4)])
    assert view.flags_announcement()[0] == b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Old)\r\n"
    assert view.keyword_updates() == []
    view.apply([Change(2, 11, FLAGS, ("$new",)), Change(5, 12, NEW, ("$OLD",))], 12)
    out = view.updates(True, with_modseq=False)
    assert out[0] == b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Old $new)\r\n"
    assert out[1].startswith(b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Old $new \\*)]")
    assert out[2:] == [b"* 3 EXISTS\r\n", b"* 0 RECENT\r\n", b"* 2 FETCH (UID 2 FLAGS ($new))\r\n"]
    view.set_flags(1, ("$NEW",), 13)  # keywords compare case-insensitively: nothing new
    assert view.keyword_updates() == []


def test_a_read_only_view_announces_no_permanent_flags() -> None:
    view = MailboxView("INBOX", True, 7, 5, 10, [(1, (), 3)])
    view.set_flags(1, ("Junk",), 11)
    assert view.keyword_updates()[1].startswith(b"* OK [PERMANENTFLAGS ()]")
