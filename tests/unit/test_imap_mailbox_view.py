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
