"""The IMAP command registry: one entry per command, from which every dispatch table is derived
(the grammar the receiver parses with, the commands each state allows, the UID forms, where
EXPUNGE may not be sent, which commands always refresh). After mox's one command table.

Command: RFC 9051 §6 (IMAP4rev2), RFC 3501 §6 (IMAP4rev1) and the extensions named per entry.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from .commands import append, auth, copy, fetch, idle, mailboxes, misc, notify, ordering, quota, search, select, store
from .protocol import ArgumentParser, Command, Grammar, Syntax
from .protocol import parser as p
from .protocol.notify import notify as parse_notify
from .replies import Reply
from .session import Session, State

Handler = Callable[[Session, Command], Awaitable[Reply | None]]

# RFC 9051 §3: the states in which a command is valid (mox: commandsStateNotAuthenticated ...)
ANY = frozenset({State.NOT_AUTHENTICATED, State.AUTHENTICATED, State.SELECTED})
NOT_AUTHENTICATED = frozenset({State.NOT_AUTHENTICATED})
AUTHENTICATED = frozenset({State.AUTHENTICATED, State.SELECTED})
SELECTED = frozenset({State.SELECTED})


@dataclass(frozen=True, slots=True)
class CommandEntry:
    """One command: how it parses, what runs it, where it is allowed, and how the session's
    untagged updates (RFC 9051 §7.5.1) behave around it."""

    name: str
    parse: ArgumentParser
    handler: Handler
    states: frozenset[State]
    rfc: str  # the section that defines it
    uid: bool = False  # has a "UID name" form (RFC 9051 §6.4.9)
    # RFC 9051 §7.5.1: EXPUNGE may not be sent while it runs by sequence number (FETCH, STORE,
    # SEARCH): the client's sequence numbers must stay put. Its UID form always allows it.
    expunge_during: bool = True
    # The change log is read after it even without a hint: the client asks for news (NOOP, CHECK,
    # IDLE). SELECT/EXAMINE do not: hints for the mailbox being opened are kept (Session.opening).
    always_refresh: bool = False


ENTRIES: tuple[CommandEntry, ...] = (
    # any state: RFC 9051 §6.1
    CommandEntry("CAPABILITY", p.no_arguments, misc.capability, ANY, "RFC 9051 §6.1.1"),
    CommandEntry("NOOP", p.no_arguments, misc.noop, ANY, "RFC 9051 §6.1.2", always_refresh=True),
    CommandEntry("LOGOUT", p.no_arguments, misc.logout, ANY, "RFC 9051 §6.1.3"),
    CommandEntry("ID", p.id_parameters, misc.id_command, ANY, "RFC 2971 §3.1"),
    # not authenticated: RFC 9051 §6.2
    CommandEntry("STARTTLS", p.no_arguments, auth.starttls, NOT_AUTHENTICATED, "RFC 9051 §6.2.1"),
    CommandEntry("AUTHENTICATE", p.authenticate, auth.authenticate, NOT_AUTHENTICATED, "RFC 9051 §6.2.2, RFC 4959"),
    CommandEntry("LOGIN", p.login, auth.login, NOT_AUTHENTICATED, "RFC 9051 §6.2.3"),
    # authenticated (and selected): RFC 9051 §6.3
    CommandEntry("ENABLE", p.enable, misc.enable, AUTHENTICATED, "RFC 5161 §3.1, RFC 9051 §6.3.1"),
    CommandEntry("SELECT", p.select, select.select, AUTHENTICATED, "RFC 9051 §6.3.2, RFC 7162 §3.1.8"),
    CommandEntry("EXAMINE", p.select, select.select, AUTHENTICATED, "RFC 9051 §6.3.3"),
    CommandEntry("CREATE", p.create, mailboxes.create, AUTHENTICATED, "RFC 9051 §6.3.4, RFC 6154 §3"),
    CommandEntry("DELETE", p.mailbox_only, mailboxes.delete, AUTHENTICATED, "RFC 9051 §6.3.5"),
    CommandEntry("RENAME", p.rename, mailboxes.rename, AUTHENTICATED, "RFC 9051 §6.3.6"),
    CommandEntry("SUBSCRIBE", p.mailbox_only, mailboxes.subscribe, AUTHENTICATED, "RFC 9051 §6.3.7"),
    CommandEntry("UNSUBSCRIBE", p.mailbox_only, mailboxes.subscribe, AUTHENTICATED, "RFC 9051 §6.3.8"),
    CommandEntry(
        "LIST", p.list_mailboxes, mailboxes.list_command, AUTHENTICATED, "RFC 9051 §6.3.9, RFC 5258, RFC 5819"
    ),
    CommandEntry("LSUB", p.lsub, mailboxes.lsub, AUTHENTICATED, "RFC 3501 §6.3.9"),
    CommandEntry("NAMESPACE", p.no_arguments, misc.namespace, AUTHENTICATED, "RFC 9051 §6.3.10, RFC 2342 §5"),
    CommandEntry("STATUS", p.status, mailboxes.status, AUTHENTICATED, "RFC 9051 §6.3.11"),
    CommandEntry("APPEND", p.append, append.append, AUTHENTICATED, "RFC 9051 §6.3.12, RFC 4315 §3"),
    CommandEntry(
        "IDLE", p.no_arguments, idle.idle, AUTHENTICATED, "RFC 9051 §6.3.13, RFC 2177 §3", always_refresh=True
    ),
    CommandEntry("GETQUOTA", p.getquota, quota.getquota, AUTHENTICATED, "RFC 9208 §4.2"),
    CommandEntry("GETQUOTAROOT", p.mailbox_only, quota.getquotaroot, AUTHENTICATED, "RFC 9208 §4.3"),
    CommandEntry("SETQUOTA", p.setquota, quota.setquota, AUTHENTICATED, "RFC 9208 §4.1"),
    CommandEntry("COMPRESS", p.compress, misc.compress, AUTHENTICATED, "RFC 4978 §3"),
    CommandEntry("NOTIFY", parse_notify, notify.notify, AUTHENTICATED, "RFC 5465 §3.1"),
    # selected: RFC 9051 §6.4
    CommandEntry("CHECK", p.no_arguments, misc.check, SELECTED, "RFC 3501 §6.4.1", always_refresh=True),
    CommandEntry("CLOSE", p.no_arguments, select.close, SELECTED, "RFC 9051 §6.4.1"),
    CommandEntry("UNSELECT", p.no_arguments, select.unselect, SELECTED, "RFC 9051 §6.4.2, RFC 3691 §2"),
    CommandEntry("EXPUNGE", p.uid_expunge, select.expunge, SELECTED, "RFC 9051 §6.4.3, RFC 4315 §2.1", uid=True),
    CommandEntry(
        "SEARCH",
        p.search,
        search.search,
        SELECTED,
        "RFC 9051 §6.4.4, RFC 4731, RFC 5182",
        uid=True,
        expunge_during=False,
    ),
    CommandEntry(
        "FETCH", p.fetch, fetch.fetch, SELECTED, "RFC 9051 §6.4.5, RFC 7162 §3.1.4", uid=True, expunge_during=False
    ),
    CommandEntry(
        "STORE", p.store, store.store, SELECTED, "RFC 9051 §6.4.6, RFC 7162 §3.1.3", uid=True, expunge_during=False
    ),
    CommandEntry("COPY", p.copy_move, copy.copy_move, SELECTED, "RFC 9051 §6.4.7, RFC 4315 §3", uid=True),
    CommandEntry("MOVE", p.copy_move, copy.copy_move, SELECTED, "RFC 9051 §6.4.8, RFC 6851 §3", uid=True),
    # RFC 5256 SORT/THREAD, RFC 5957 SORT=DISPLAY, RFC 5267 ESORT: by sequence number like SEARCH
    CommandEntry(
        "SORT", p.sort, ordering.sort, SELECTED, "RFC 5256 §3, RFC 5957, RFC 5267 §3", uid=True, expunge_during=False
    ),
    CommandEntry("THREAD", p.thread, ordering.thread, SELECTED, "RFC 5256 §4", uid=True, expunge_during=False),
    CommandEntry("CANCELUPDATE", p.cancelupdate, ordering.cancelupdate, SELECTED, "RFC 5267 §4.3.5"),
)

COMMANDS: Mapping[str, CommandEntry] = {e.name: e for e in ENTRIES}
# What the receiver parses with (protocol/parser.py knows no handler).
GRAMMAR: Grammar = {e.name: Syntax(e.parse, e.uid) for e in ENTRIES}
# Derived views, for reading and for tests (the session loop asks COMMANDS directly).
STATE_COMMANDS: Mapping[State, frozenset[str]] = {
    state: frozenset(e.name for e in ENTRIES if state in e.states) for state in State
}
UID_COMMANDS = frozenset(e.name for e in ENTRIES if e.uid)
NO_EXPUNGE_DURING = frozenset(e.name for e in ENTRIES if not e.expunge_during)
ALWAYS_REFRESH = frozenset(e.name for e in ENTRIES if e.always_refresh)

# The commands each advertised capability (commands/misc.py) brings; checked by the registry test.
CAPABILITY_COMMANDS: Mapping[str, frozenset[str]] = {
    "IMAP4rev1": frozenset(  # RFC 3501 §6
        {"CAPABILITY", "NOOP", "LOGOUT", "STARTTLS", "AUTHENTICATE", "LOGIN", "SELECT", "EXAMINE", "CREATE"}
        | {"DELETE", "RENAME", "SUBSCRIBE", "UNSUBSCRIBE", "LIST", "LSUB", "STATUS", "APPEND", "CHECK", "CLOSE"}
        | {"EXPUNGE", "SEARCH", "FETCH", "STORE", "COPY"}
    ),
    "IMAP4rev2": frozenset(  # RFC 9051 §6 (CHECK and LSUB are rev1's; rev2 folds in ENABLE ... MOVE)
        {"CAPABILITY", "NOOP", "LOGOUT", "STARTTLS", "AUTHENTICATE", "LOGIN", "ENABLE", "SELECT", "EXAMINE"}
        | {"CREATE", "DELETE", "RENAME", "SUBSCRIBE", "UNSUBSCRIBE", "LIST", "NAMESPACE", "STATUS", "APPEND"}
        | {"IDLE", "CLOSE", "UNSELECT", "EXPUNGE", "SEARCH", "FETCH", "STORE", "COPY", "MOVE"}
    ),
    "STARTTLS": frozenset({"STARTTLS"}),
    "AUTH=PLAIN": frozenset({"AUTHENTICATE"}),
    "LOGINDISABLED": frozenset({"LOGIN"}),
    "ID": frozenset({"ID"}),
    "ENABLE": frozenset({"ENABLE"}),
    "IDLE": frozenset({"IDLE"}),
    "NAMESPACE": frozenset({"NAMESPACE"}),
    "UIDPLUS": frozenset({"EXPUNGE"}),  # UID EXPUNGE
    "MOVE": frozenset({"MOVE"}),
    "UNSELECT": frozenset({"UNSELECT"}),
    "LIST-EXTENDED": frozenset({"LIST"}),
    "LIST-STATUS": frozenset({"LIST", "STATUS"}),
    "CREATE-SPECIAL-USE": frozenset({"CREATE"}),
    "CONDSTORE": frozenset({"ENABLE", "FETCH", "STORE", "SEARCH", "SELECT"}),
    "QRESYNC": frozenset({"ENABLE", "SELECT", "FETCH"}),
    "ESEARCH": frozenset({"SEARCH"}),
    "SEARCHRES": frozenset({"SEARCH"}),
    "BINARY": frozenset({"FETCH", "APPEND"}),
    "UTF8=ACCEPT": frozenset({"ENABLE", "APPEND"}),
    "QUOTA": frozenset({"GETQUOTA", "GETQUOTAROOT", "SETQUOTA"}),
    "MULTIAPPEND": frozenset({"APPEND"}),
    "STATUS=SIZE": frozenset({"STATUS"}),
    "OBJECTID": frozenset({"SELECT", "EXAMINE", "STATUS", "FETCH", "SEARCH", "CREATE"}),
    "SAVEDATE": frozenset({"FETCH", "SEARCH"}),
    "WITHIN": frozenset({"SEARCH"}),
    "PREVIEW": frozenset({"FETCH"}),
    "COMPRESS=DEFLATE": frozenset({"COMPRESS"}),
    "CATENATE": frozenset({"APPEND"}),
    "NOTIFY": frozenset({"NOTIFY"}),
    "SORT": frozenset({"SORT"}),
    "SORT=DISPLAY": frozenset({"SORT"}),
    "THREAD=ORDEREDSUBJECT": frozenset({"THREAD"}),
    "THREAD=REFERENCES": frozenset({"THREAD"}),
    "ESORT": frozenset({"SORT"}),
    "CONTEXT=SEARCH": frozenset({"SEARCH", "CANCELUPDATE"}),
    "CONTEXT=SORT": frozenset({"SORT", "CANCELUPDATE"}),
}
