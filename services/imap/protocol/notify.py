"""NOTIFY arguments (RFC 5465 §8) and the rules §5 and §6.1 put on them (broken: BAD)."""

from __future__ import annotations

from .commands import Arguments, Notify, NotifyGroup
from .fetch import FetchItem, parse_fetch_items
from .grammar import GrammarError
from .parser import ParseContext

MAX_GROUPS = 32  # event groups in one NOTIFY
MAX_MAILBOXES = 256  # mailbox names in all groups of one NOTIFY
SELECTED_FILTERS = frozenset({"SELECTED", "SELECTED-DELAYED"})
OTHER_FILTERS = frozenset({"INBOXES", "PERSONAL", "SUBSCRIBED", "SUBTREE", "MAILBOXES"})
MESSAGE_EVENTS = ("MessageNew", "MessageExpunge", "FlagChange", "AnnotationChange")
MAILBOX_EVENTS = ("MailboxName", "SubscriptionChange", "MailboxMetadataChange", "ServerMetadataChange")
# Events keep the RFC's spelling in the answer ([BADEVENT]); the wire is case-insensitive.
_CANONICAL = {e.upper(): e for e in MESSAGE_EVENTS + MAILBOX_EVENTS}


def notify(c: ParseContext) -> Arguments:
    # notify = "NOTIFY" SP (notify-set / notify-none);  notify-none = "NONE"
    # notify-set = "SET" [status-indicator] SP event-groups;  status-indicator = SP "STATUS"
    # event-groups = event-group *(SP event-group)
    r = c.r
    r.sp()
    verb = r.keyword()
    if verb == "NONE":
        return Notify(None)
    if verb != "SET":
        raise GrammarError("expected NOTIFY SET or NOTIFY NONE")
    r.sp()
    status = r.peek() != 0x28 and r.keyword() == "STATUS"
    if status:
        r.sp()
    elif r.peek() != 0x28:
        raise GrammarError("expected STATUS or an event group")
    groups = [_group(c)]
    while r.accept(b" "):
        if len(groups) >= MAX_GROUPS:
            raise GrammarError(f"more than {MAX_GROUPS} event groups")
        groups.append(_group(c))
    _check(groups)
    return Notify(tuple(groups), status)


def _group(c: ParseContext) -> NotifyGroup:
    # event-group = "(" filter-mailboxes SP events ")"
    # filter-mailboxes = "selected" / "selected-delayed" / "inboxes" / "personal" / "subscribed"
    #                  / ("subtree" SP one-or-more-mailbox) / ("mailboxes" SP one-or-more-mailbox)
    r = c.r
    r.expect(b"(")
    name = r.keyword()
    if name not in SELECTED_FILTERS | OTHER_FILTERS:
        raise GrammarError(f"unknown mailbox filter {name}")
    mailboxes: tuple[str, ...] = ()
    r.sp()
    if name in ("SUBTREE", "MAILBOXES"):
        # one-or-more-mailbox = mailbox / many-mailboxes; many-mailboxes = "(" mailbox *(SP mailbox) ")"
        mailboxes = r.sequence(c.mailbox) if r.peek() == 0x28 else (c.mailbox(),)
        if not mailboxes:
            raise GrammarError("empty mailbox list")
        r.sp()
    events, fetch = _events(c)
    r.expect(b")")
    return NotifyGroup(name, mailboxes, events, fetch)


def _events(c: ParseContext) -> tuple[tuple[str, ...], tuple[FetchItem, ...]]:
    # events = ("(" event *(SP event) ")") / "NONE"
    # message-event = ("MessageNew" [SP "(" fetch-att *(SP fetch-att) ")"]) / "MessageExpunge" / ...
    r = c.r
    if r.peek() != 0x28:
        if r.keyword() != "NONE":
            raise GrammarError("expected an event list or NONE")
        return (), ()
    r.expect(b"(")
    events: list[str] = []
    fetch: tuple[FetchItem, ...] = ()
    while True:
        word = r.keyword()
        event = _CANONICAL.get(word, word)  # event-ext = atom: refused later with [BADEVENT]
        if event in events:
            raise GrammarError(f"{event} given twice")
        events.append(event)
        if event == "MessageNew" and r.peek_is(b" ("):
            r.sp()
            fetch = parse_fetch_items(r)
        if r.accept(b")"):
            return tuple(events), fetch
        r.sp()
        if len(events) >= len(_CANONICAL) + 8:
            raise GrammarError("too many events")


def _check(groups: list[NotifyGroup]) -> None:
    """RFC 5465 §5 (event dependencies), §6.1 (one selected filter, message events only), §8
    (fetch attributes only for the selected mailbox); a bound on the names."""
    if sum(g.filter in SELECTED_FILTERS for g in groups) > 1:
        raise GrammarError("the selected mailbox can be named in one event group only")
    if sum(len(g.mailboxes) for g in groups) > MAX_MAILBOXES:
        raise GrammarError(f"more than {MAX_MAILBOXES} mailbox names")
    for g in groups:
        events = set(g.events)
        if ("MessageNew" in events) != ("MessageExpunge" in events):
            raise GrammarError("MessageNew and MessageExpunge must be given together")
        if events & {"FlagChange", "AnnotationChange"} and "MessageNew" not in events:
            raise GrammarError("FlagChange and AnnotationChange need MessageNew and MessageExpunge")
        if g.filter in SELECTED_FILTERS and events & set(MAILBOX_EVENTS):
            raise GrammarError("the selected mailbox takes message events only")
        if g.fetch and g.filter not in SELECTED_FILTERS:
            raise GrammarError("MessageNew fetch attributes are for the selected mailbox only")
