"""CREATE, DELETE, RENAME, SUBSCRIBE, UNSUBSCRIBE, LIST, LSUB, STATUS."""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc
from mailstack.v1 import mailstore_pb2 as pb

from ..mailbox_list import Entry, Listed, select, with_parents
from ..mailstore import SPECIAL_USE_ATTRIBUTES, SPECIAL_USE_BY_NAME
from ..protocol import Command, Create, ListMailboxes, Lsub, MailboxArgument, Rename, Status
from ..protocol.encoder import mailbox, untagged, untagged_status
from ..replies import Reply, bad, no

if TYPE_CHECKING:
    from ..session import Session

DELIMITER = b'"/"'


def mailbox_id(store_id: int) -> str:
    """RFC 8474 objectid of a mailbox: the store's id, which RENAME keeps and no other mailbox gets."""
    return f"F{store_id}"


async def create(session: Session, command: Command) -> Reply | None:
    # Command: RFC 9051 §6.3.4; USE (RFC 6154 §3 CREATE-SPECIAL-USE)
    assert isinstance(command.args, Create)
    name = command.args.mailbox.rstrip("/")  # a trailing delimiter only says "will have children"
    if not name:
        raise no("invalid mailbox name", "CANNOT")
    if name.upper() == "INBOX":
        raise no("INBOX always exists", "ALREADYEXISTS")
    special = ""
    if command.args.special_use:
        if len(command.args.special_use) > 1 or command.args.special_use[0].lower() not in SPECIAL_USE_BY_NAME:
            raise no("one of \\Sent \\Drafts \\Trash \\Junk \\Archive \\All \\Flagged", "USEATTR")
        special = command.args.special_use[0]
    await _create_superiors(session, name)
    await session.mailstore.create_mailbox(name, special)
    # RFC 8474 §4.1: the new mailbox's MAILBOXID in the tagged OK
    created = await session.mailstore.status(name)
    return Reply("OK", "CREATE completed", f"MAILBOXID ({mailbox_id(created.mailbox_id)})")


async def _create_superiors(session: Session, name: str) -> None:
    # RFC 3501 §6.3.3 (CREATE), §6.3.5 (RENAME): superior names that are needed are created too
    parts = name.split("/")
    for i in range(1, len(parts)):
        try:
            await session.mailstore.create_mailbox("/".join(parts[:i]))
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.ALREADY_EXISTS:
                raise


async def delete(session: Session, command: Command) -> Reply | None:
    # Command: RFC 9051 §6.3.5. The selected mailbox may be deleted (Dovecot and James allow it):
    # this session gets `* OK [CLOSED]` (RFC 9051 §7.1) and is back in the authenticated state, so
    # its next FETCH is BAD rather than a NO on a mailbox that is gone; other sessions that have it
    # selected find it gone at their next refresh and get BYE (session.refresh), as in Dovecot.
    assert isinstance(command.args, MailboxArgument)
    if command.args.mailbox == "INBOX":
        raise no("INBOX cannot be deleted", "CANNOT")
    await session.mailstore.delete_mailbox(command.args.mailbox)
    if session.view is not None and session.view.name == command.args.mailbox:
        session.select(None)
        session.untagged(untagged_status("OK", "the selected mailbox was deleted", "CLOSED"))
    return None


async def rename(session: Session, command: Command) -> Reply | None:
    # Command: RFC 9051 §6.3.6 (children move; renaming INBOX moves its messages: the mailstore does both)
    assert isinstance(command.args, Rename)
    new_name = command.args.new_name.rstrip("/")
    old_name = command.args.mailbox
    await session.mailstore.rename_mailbox(old_name, new_name)
    await _create_superiors(session, new_name)  # after: a refused RENAME creates nothing
    view = session.view
    if view is not None and old_name != "INBOX" and (view.name == old_name or view.name.startswith(old_name + "/")):
        # Nothing in RFC 9051 §6.3.6 closes the selected mailbox: it stays selected under its new
        # name, with the same UIDVALIDITY (as Dovecot); renaming INBOX leaves INBOX itself in place
        view.name = new_name + view.name[len(old_name) :]
    return None


async def subscribe(session: Session, command: Command) -> Reply | None:
    # Command: RFC 9051 §6.3.7 / §6.3.8 (UNSUBSCRIBE)
    assert isinstance(command.args, MailboxArgument)
    await session.mailstore.subscribe(command.args.mailbox, subscribed=command.name == "SUBSCRIBE")
    return None


def _attributes(listed: Listed, extended: bool, show_subscribed: bool) -> bytes:
    entry = listed.entry
    attrs = []
    if not entry.exists:
        attrs.append("\\NonExistent" if extended else "\\Noselect")  # RFC 5258 §3: implies \Noselect
    if listed.has_children:
        attrs.append("\\HasChildren")  # RFC 5258 §4 CHILDREN (RFC 3348)
    elif entry.exists:
        attrs.append("\\HasNoChildren")
    if entry.special_use:
        attrs.append(entry.special_use)  # RFC 6154 §2
    if show_subscribed and entry.subscribed:
        attrs.append("\\Subscribed")
    return ("(" + " ".join(attrs) + ")").encode("ascii")


def _status_line(name: str, status: pb.MailboxStatus, items: tuple[str, ...], session: Session) -> bytes:
    # status-att-list (RFC 9051 §7.3.5)
    values = {
        "MESSAGES": status.messages,
        "RECENT": status.recent,
        "UIDNEXT": status.uidnext,
        "UIDVALIDITY": status.uidvalidity,
        "UNSEEN": status.unseen,
        "DELETED": status.deleted,
        "SIZE": status.size,
        "HIGHESTMODSEQ": status.highestmodseq,
        "APPENDLIMIT": session.settings.max_message_size,
        "MAILBOXID": f"({mailbox_id(status.mailbox_id)})",  # RFC 8474 §4.2
    }
    pairs = " ".join(f"{item} {values[item]}" for item in items if item in values)
    return untagged(b"STATUS " + mailbox(name, session.utf8) + b" (" + pairs.encode("ascii") + b")")


def _full_pattern(reference: str, pattern: str) -> str:
    full = reference + pattern
    if full.upper().startswith("INBOX") and (len(full) == 5 or full[5] in "/*%"):
        full = "INBOX" + full[5:]  # INBOX is case-insensitive (RFC 3501 §5.1)
    return full


async def list_command(session: Session, command: Command) -> Reply | None:
    # Command: RFC 3501 §6.3.8, RFC 5258 selection/return options, RFC 6154, RFC 5819 STATUS
    args = command.args
    assert isinstance(args, ListMailboxes)
    if len(args.patterns) == 1 and args.patterns[0] == "":
        # the hierarchy delimiter and root name (RFC 3501 §6.3.8)
        session.untagged(untagged(b'LIST (\\Noselect) "/" ""'))
        return None
    # The whole tree in one call (children, RECURSIVEMATCH and "%" parents need names outside the
    # patterns), with the STATUS of every mailbox when asked for (RFC 5819), not one call each.
    if session.rev2 and args.status is not None and "RECENT" in args.status:
        raise bad("RECENT is not an IMAP4rev2 status item")  # RFC 9051 Appendix E
    tree = await session.mailstore.list_mailboxes(with_status=args.status is not None)
    found = [
        Entry(m.name, not m.nonexistent, m.subscribed, SPECIAL_USE_ATTRIBUTES.get(m.special_use, ""))
        for m in tree.mailboxes
    ]
    statuses = {m.name: m.status for m in tree.mailboxes if not m.nonexistent}
    if "SUBSCRIBED" in args.selection:
        # subscribed names whose mailbox does not exist (RFC 5258 §3: \Subscribed \NonExistent)
        subscribed = await session.mailstore.list_mailboxes(subscribed_only=True)
        known = {m.name for m in tree.mailboxes}
        found += [Entry(m.name, False, True) for m in subscribed.mailboxes if m.name not in known]
    patterns = [_full_pattern(args.reference, p) for p in args.patterns]
    show_subscribed = "SUBSCRIBED" in args.selection or "SUBSCRIBED" in args.returns
    for listed in select(with_parents(found), patterns, args.selection):
        name = listed.entry.name
        attributes = _attributes(listed, args.extended, show_subscribed)
        line = b"LIST " + attributes + b" " + DELIMITER + b" " + mailbox(name, session.utf8)
        if listed.childinfo:
            # RFC 5258 §3.5: mbox-list-extended CHILDINFO
            options = b" ".join(b'"' + o.encode("ascii") + b'"' for o in listed.childinfo)
            line += b' ("CHILDINFO" (' + options + b"))"
        session.untagged(untagged(line))
        # RFC 5819 §2: STATUS right after the LIST of each selectable mailbox, never for \NonExistent
        if args.status is not None and listed.entry.exists and name in statuses:
            session.untagged(_status_line(name, statuses[name], args.status, session))
    if args.status is not None and "HIGHESTMODSEQ" in args.status:
        session.enable_condstore()  # RFC 7162 §3.1: a CONDSTORE-enabling command
    return None


async def lsub(session: Session, command: Command) -> Reply | None:
    # Command: RFC 3501 §6.3.9
    assert isinstance(command.args, Lsub)
    reply = await session.mailstore.list_mailboxes(subscribed_only=True)  # every subscription
    gone = {m.name for m in reply.mailboxes if m.nonexistent}
    entries = with_parents(Entry(m.name, m.name not in gone, subscribed=True) for m in reply.mailboxes)
    # As LIST (SUBSCRIBED RECURSIVEMATCH) selects: the subscribed names the pattern matches, and a
    # name that is not subscribed but has subscribed descendants the pattern does not reach ("%"):
    # "it MUST be flagged with the \Noselect attribute". So is a subscription whose mailbox is gone.
    pattern = _full_pattern(command.args.reference, command.args.pattern)
    for listed in select(entries, (pattern,), frozenset({"SUBSCRIBED", "RECURSIVEMATCH"})):
        entry = listed.entry
        attrs = b"()" if entry.subscribed and entry.exists else b"(\\Noselect)"
        session.untagged(untagged(b"LSUB " + attrs + b" " + DELIMITER + b" " + mailbox(entry.name, session.utf8)))
    return None


async def status(session: Session, command: Command) -> Reply | None:
    # Command: RFC 9051 §6.3.11 (+ HIGHESTMODSEQ RFC 7162, SIZE RFC 8438, APPENDLIMIT RFC 7889)
    assert isinstance(command.args, Status)
    if session.rev2 and "RECENT" in command.args.items:
        raise bad("RECENT is not an IMAP4rev2 status item")  # RFC 9051 Appendix E
    reply = await session.mailstore.status(command.args.mailbox)
    if "HIGHESTMODSEQ" in command.args.items:
        session.enable_condstore()  # RFC 7162 §3.1: a CONDSTORE-enabling command
    session.untagged(_status_line(command.args.mailbox, reply, command.args.items, session))
    return None
