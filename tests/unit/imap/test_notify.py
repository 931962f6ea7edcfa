"""NOTIFY (RFC 5465): the pure parts. The grammar and its rules (§5, §6.1, §8), which hints a
session's filters take (§6.1) and the overflow bound (§5.8)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from mailstack.services.imap.commands.notify import deliver
from mailstack.services.imap.notify import MAX_PENDING, NotifySpec, NotifyState
from mailstack.services.imap.protocol import Notify, NotifyGroup, ParseError, Syntax, parse_command
from mailstack.services.imap.protocol.notify import notify
from mailstack.services.imap.session import State
from mailstack.storage.events.base import ChangeEvent
from mailstack.v1 import mailstore_pb2 as pb

GRAMMAR = {"NOTIFY": Syntax(notify)}


def _parse(text: str) -> Notify:
    command = parse_command(GRAMMAR, b"a NOTIFY " + text.encode())
    assert not isinstance(command, ParseError), command
    assert isinstance(command.args, Notify)
    return command.args


def _state(text: str, subscribed: set[str] | None = None) -> NotifyState:
    groups = _parse(text).groups
    assert groups is not None
    return NotifyState(NotifySpec(groups), subscribed=subscribed or set())


def test_the_example_of_section_5_1_parses() -> None:
    args = _parse(
        "SET STATUS (selected (MessageNew (UID BODY.PEEK[HEADER.FIELDS (From To)]) MessageExpunge))"
        " (subtree (Lists Other) (MessageNew MessageExpunge)) (mailboxes INBOX NONE)"
    )
    assert args.status
    assert args.groups is not None
    selected, subtree, none = args.groups
    assert (selected.filter, selected.events, len(selected.fetch)) == ("SELECTED", ("MessageNew", "MessageExpunge"), 2)
    assert subtree == NotifyGroup("SUBTREE", ("Lists", "Other"), ("MessageNew", "MessageExpunge"))
    assert none == NotifyGroup("MAILBOXES", ("INBOX",), ())
    assert _parse("none") == Notify(None)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "SET",
        "SET STATUS",
        "SET ()",
        "SET (personal ())",
        "SET (personal (MessageNew MessageExpunge)",
        "SET (personal (MessageNew MessageExpunge)) trailing",
        "SET (personal (MessageNew))",  # §5: with MessageExpunge
        "SET (personal (FlagChange MessageExpunge))",  # §5: FlagChange needs MessageNew too
        "SET (selected NONE) (selected-delayed NONE)",  # §6.1: one selected filter
        "SET (selected (SubscriptionChange))",  # §6.1: message events only
        "SET (inboxes (MessageNew (FLAGS) MessageExpunge))",  # §8: fetch-att for selected only
        "SET (mailboxes () NONE)",
        "NONE more",
    ],
)
def test_malformed_notify_is_a_parse_error(text: str) -> None:
    assert isinstance(parse_command(GRAMMAR, b"a NOTIFY " + text.encode()), ParseError)


def test_filters_take_the_first_matching_group() -> None:
    state = _state(
        "SET (mailboxes Lists/Quiet NONE) (subtree Lists (MessageNew MessageExpunge))"
        " (inboxes (MessageNew MessageExpunge FlagChange))"
    )
    assert state.hint(ChangeEvent("u", "Lists/Busy", "new", (1,)), selected=None)
    assert not state.hint(ChangeEvent("u", "Lists/Quiet", "new", (1,)), selected=None)  # NONE comes first
    assert not state.hint(ChangeEvent("u", "Lists/Busy", "flags", (1,)), selected=None)  # FlagChange not asked
    assert state.hint(ChangeEvent("u", "INBOX", "flags", (1,)), selected=None)
    assert not state.hint(ChangeEvent("u", "Other", "new", (1,)), selected=None)
    assert state.status_due == {"Lists/Busy", "INBOX"}


def test_the_selected_mailbox_is_left_to_the_view() -> None:
    state = _state("SET (personal (MessageNew MessageExpunge))")
    assert not state.hint(ChangeEvent("u", "INBOX", "new", (1,)), selected="INBOX")
    assert not state.status_due


def test_subscribed_filter_and_mailbox_events() -> None:
    state = _state("SET (subscribed (MessageNew MessageExpunge MailboxName))", subscribed={"Lists"})
    assert state.hint(ChangeEvent("u", "Lists", "expunge", (1,)), selected=None)
    assert not state.hint(ChangeEvent("u", "Other", "expunge", (1,)), selected=None)
    # a (un)subscription of any name is told and makes the subscriptions to be re-read
    assert state.hint(ChangeEvent("u", "Other", "mailbox"), selected=None)
    assert set(state.list_due) == {"Other"} and state.subscriptions_stale


def test_a_lost_event_source_rereads_everything() -> None:
    state = _state("SET (personal (MessageNew MessageExpunge))")
    assert state.hint(ChangeEvent("u", "", "resync"), selected=None)
    assert state.resync and state.has_pending


def test_too_many_mailboxes_with_news_overflow() -> None:
    state = _state("SET (personal (MessageNew MessageExpunge))")
    for i in range(MAX_PENDING + 1):
        state.hint(ChangeEvent("u", f"box{i}", "new", (1,)), selected=None)
    assert state.overflow and not state.status_due  # §5.8: NOTIFICATIONOVERFLOW, then as NOTIFY NONE


class _Mailstore:
    """The two reads delivery makes, answered from a dict of statuses."""

    def __init__(self, statuses: dict[str, pb.MailboxStatus]) -> None:
        self.statuses = statuses
        self.reads = 0

    async def status(self, name: str) -> pb.MailboxStatus:
        self.reads += 1
        return self.statuses[name]

    async def list_mailboxes(self, pattern: str = "*", **_: object) -> pb.ListMailboxesResponse:
        return pb.ListMailboxesResponse(mailboxes=[pb.Mailbox(name=pattern)] if pattern in self.statuses else [])


def _session(state: NotifyState, mailstore: _Mailstore) -> SimpleNamespace:
    out: list[bytes] = []
    return SimpleNamespace(
        notify=state,
        state=State.AUTHENTICATED,
        view=None,
        dirty=False,
        condstore=False,
        utf8=False,
        mailstore=mailstore,
        settings=SimpleNamespace(max_message_size=1000),
        out=out,
        untagged=out.append,
    )


def test_delivery_reads_at_send_time_and_does_not_repeat_a_status() -> None:
    state = _state("SET (personal (MessageNew MessageExpunge MailboxName))")
    mailstore = _Mailstore({"Box": pb.MailboxStatus(messages=1, uidnext=2, uidvalidity=7, unseen=1)})
    session = _session(state, mailstore)
    for _ in range(3):  # a burst of hints is one read
        state.hint(ChangeEvent("u", "Box", "new", (1,)), selected=None)
    asyncio.run(deliver(session))  # type: ignore[arg-type]
    assert session.out == [b"* STATUS Box (MESSAGES 1 UIDNEXT 2 UIDVALIDITY 7 UNSEEN 1)\r\n"]
    state.hint(ChangeEvent("u", "Box", "expunge", (1,)), selected=None)  # e.g. this session's own change
    state.hint(ChangeEvent("u", "Gone", "mailbox"), selected=None)
    asyncio.run(deliver(session))  # type: ignore[arg-type]
    assert session.out[1:] == [b'* LIST (\\NonExistent) "/" Gone\r\n']  # the same STATUS is not sent again
    assert mailstore.reads == 2


def test_overflow_is_told_once_and_ends_notify() -> None:
    state = _state("SET (personal (MessageNew MessageExpunge))")
    for i in range(MAX_PENDING + 1):
        state.hint(ChangeEvent("u", f"box{i}", "new", (1,)), selected=None)
    session = _session(state, _Mailstore({}))
    asyncio.run(deliver(session))  # type: ignore[arg-type]
    assert len(session.out) == 1 and session.out[0].startswith(b"* OK [NOTIFICATIONOVERFLOW]")
    assert session.notify is None  # RFC 5465 §5.8: as after NOTIFY NONE
