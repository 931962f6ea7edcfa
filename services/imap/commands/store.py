"""STORE and UID STORE (RFC 9051 §6.4.6; UNCHANGEDSINCE and MODIFIED RFC 7162 §3.1.3)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from ..protocol import Command, Store
from ..protocol.encoder import flag_list, set_text
from ..replies import Reply
from .common import resolve, selected_view, writable

if TYPE_CHECKING:
    from ..mailbox_view import MailboxView
    from ..session import Session


async def store(session: Session, command: Command) -> Reply | None:
    # Command: RFC 9051 §6.4.6 (\Recent cannot be stored: RFC 3501 §2.3.2)
    view = selected_view(session.view)
    writable(view)
    args = command.args
    assert isinstance(args, Store)
    if args.unchanged_since is not None:
        session.enable_condstore()  # RFC 7162 §3.1: CONDSTORE-enabling
    targets = resolve(view, command, args.sequence_set)
    if not targets:
        return None
    flags = [f for f in args.flags if f.lower() != "\\recent"]
    uids = [u for _, u in targets]
    reply = await session.mailstore.store_flags(view.name, uids, args.mode, flags, args.unchanged_since)
    updated = set()
    for m in reply.updated:
        # RFC 3501 §6.4.6: with or without .SILENT, a change made by another session that this
        # reply reveals is still reported (here at once, by the command's untagged updates).
        by_others = _folded(m.flags) != _expected(view.flags.get(m.uid, frozenset()), args.mode, flags)
        view.set_flags(m.uid, m.flags, m.modseq, announced=not (args.silent and by_others))
        updated.add(m.uid)
    failed = set(reply.failed)
    for line in view.keyword_updates():  # RFC 3501 §7.2.6: a new keyword before the FETCH showing it
        session.untagged(line)
    # Not .SILENT: FLAGS of every message of the set, changed or not (those the store left
    # alone keep the flags this session knows). UID STORE always includes UID.
    for seq, uid in targets:
        if uid in failed or view.seq_of(uid) is None or view.is_expunged(uid):
            continue
        if args.silent and not (session.condstore and uid in updated and args.unchanged_since is not None):
            continue
        session.untagged(_fetch_line(session, view, command.uid, args.silent, seq, uid))
    if failed:
        numbers = sorted(failed) if command.uid else sorted(s for s, u in targets if u in failed)
        return Reply("OK", "some messages were modified meanwhile", f"MODIFIED {set_text(numbers)}")
    return None


def _folded(flags: Iterable[str]) -> frozenset[str]:
    return frozenset(f.lower() for f in flags if f.lower() != "\\recent")


def _expected(known: Iterable[str], mode: str, flags: Iterable[str]) -> frozenset[str]:
    """The flags this session's own STORE leaves on a message whose flags it knew as `known`."""
    before, given = _folded(known), _folded(flags)
    if mode == "+":
        return before | given
    if mode == "-":
        return before - given
    return given


def _fetch_line(session: Session, view: MailboxView, uid_form: bool, silent: bool, seq: int, uid: int) -> bytes:
    """`* seq FETCH (UID FLAGS MODSEQ)`, each when it belongs (RFC 9051 §6.4.6, RFC 7162 §3.1.3;
    under CONDSTORE every untagged FETCH carries UID and MODSEQ, RFC 7162 §3.1)."""
    items = []
    if uid_form or session.condstore:
        items.append(b"UID %d" % uid)
    if not silent:
        items.append(b"FLAGS " + flag_list(sorted(view.flags_of(uid))))
    if session.condstore:
        items.append(b"MODSEQ (%d)" % view.modseqs.get(uid, 0))
    return b"* %d FETCH (" % seq + b" ".join(items) + b")\r\n"
