"""NOTIFY (RFC 5465) for one session: which events of which mailboxes the client asked for, the
mailboxes with news not told yet, and the STATUS and LIST responses that tell them.

The notifier's events are hints (ADR 0015): a hint only names a mailbox; what is sent is read from
the mailstore when it is sent, and a STATUS equal to the last one sent is not repeated. A lost
event source ("resync") re-reads every watched mailbox. So a lost or duplicated hint costs at most
a read, never a wrong answer (ADR 0022).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from mailstack.storage.events.base import ChangeEvent

from .protocol import NotifyGroup
from .protocol.notify import SELECTED_FILTERS

# RFC 5465 §5.8: past this many mailboxes with untold news the session gets
# [NOTIFICATIONOVERFLOW] and notifications stop (the client re-syncs and sets NOTIFY again).
MAX_PENDING = 1000
SUPPORTED_EVENTS = ("MessageNew", "MessageExpunge", "FlagChange", "MailboxName", "SubscriptionChange")
_MESSAGE_EVENT = {"new": "MessageNew", "expunge": "MessageExpunge", "flags": "FlagChange"}


@dataclass(frozen=True, slots=True)
class NotifySpec:
    """The event groups of one NOTIFY SET; pure matching (RFC 5465 §6)."""

    groups: tuple[NotifyGroup, ...]

    @property
    def selected(self) -> NotifyGroup | None:
        """The group for the selected mailbox (selected or selected-delayed), if any."""
        return next((g for g in self.groups if g.filter in SELECTED_FILTERS), None)

    @property
    def uses_subscriptions(self) -> bool:
        return any(g.filter == "SUBSCRIBED" for g in self.groups)

    def group_for(self, name: str, subscribed: set[str]) -> NotifyGroup | None:
        """The first group whose filter matches a mailbox other than the selected one."""
        for g in self.groups:
            if _matches(g, name, subscribed):
                return g
        return None

    def wants(self, name: str, event: str, subscribed: set[str]) -> bool:
        group = self.group_for(name, subscribed)
        return group is not None and event in group.events

    def wants_mailbox_events(self, name: str, subscribed: set[str]) -> bool:
        group = self.group_for(name, subscribed)
        return group is not None and bool({"MailboxName", "SubscriptionChange"} & set(group.events))

    def watched(self, names: Iterable[str], subscribed: set[str]) -> list[str]:
        """The names whose message counts are told (a message event in their group)."""
        return [n for n in names if self.wants(n, "MessageNew", subscribed) or self.wants(n, "FlagChange", subscribed)]


def _matches(group: NotifyGroup, name: str, subscribed: set[str]) -> bool:
    # RFC 5465 §6.1: the mailbox filters
    kind = group.filter
    if kind == "INBOXES":
        return name == "INBOX"  # mail is delivered to INBOX only
    if kind == "PERSONAL":
        return True  # one personal namespace, no shared ones (NAMESPACE)
    if kind == "SUBSCRIBED":
        return name in subscribed
    if kind == "SUBTREE":
        return any(name == m or name.startswith(m + "/") for m in group.mailboxes)
    if kind == "MAILBOXES":
        return name in group.mailboxes
    return False  # selected / selected-delayed: the session's view, not a name


@dataclass
class NotifyState:
    """What one session asked for and what it has not been told yet."""

    spec: NotifySpec
    subscribed: set[str] = field(default_factory=set)
    status_due: set[str] = field(default_factory=set)  # names whose STATUS may have changed
    # names created, deleted, renamed, (un)subscribed, with the hint's UIDVALIDITY (a RENAME's two
    # hints carry the same one, so they pair into one LIST with OLDNAME)
    list_due: dict[str, int] = field(default_factory=dict)
    resync: bool = False  # the event source was lost: re-read every watched mailbox
    overflow: bool = False
    subscriptions_stale: bool = False
    last_status: dict[str, bytes] = field(default_factory=dict)  # the last STATUS line sent per name
    last_list: dict[str, bytes] = field(default_factory=dict)  # the attributes last told per name

    @property
    def has_pending(self) -> bool:
        return bool(self.status_due or self.list_due or self.resync or self.overflow)

    @property
    def pushes_selected(self) -> bool:
        """The selected group asks for message events: the view's updates go out unsolicited."""
        group = self.spec.selected
        return group is not None and bool(group.events)

    def hint(self, event: ChangeEvent, selected: str | None) -> bool:
        """Take a hint from the notifier; True when it asks for a notification."""
        if event.kind == "resync":
            self.resync = True
            return True
        if event.kind == "mailbox":
            self.subscriptions_stale = self.spec.uses_subscriptions
            # a name that stops matching (unsubscribed) is told too: the SUBSCRIBED filter matched it before
            if self.spec.wants_mailbox_events(event.mailbox, self.subscribed | {event.mailbox}):
                self.list_due[event.mailbox] = event.uidvalidity
                self._bound()
                return True
            return False
        if event.mailbox == selected:
            return False  # the session's view takes it (Session.on_event)
        if self.spec.wants(event.mailbox, _MESSAGE_EVENT.get(event.kind, ""), self.subscribed):
            self.status_due.add(event.mailbox)
            self._bound()
            return True
        return False

    def _bound(self) -> None:
        if len(self.status_due) + len(self.list_due) > MAX_PENDING:
            self.overflow = True
            self.status_due.clear()
            self.list_due.clear()
