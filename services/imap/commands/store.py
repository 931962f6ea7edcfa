"""STORE and UID STORE (RFC 9051 §6.4.6; UNCHANGEDSINCE and MODIFIED RFC 7162 §3.1.3)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mailstack.v1 import mailstore_pb2 as pb

from ..protocol import Command, Store
from ..protocol.encoder import flag_list
from .common import resolve, selected_view, set_text, uid_set, writable

if TYPE_CHECKING:
    from ..session import Reply, Session

CALL_TIMEOUT = 60.0
_MODES = {"+": pb.STORE_ADD, "-": pb.STORE_REMOVE, "": pb.STORE_REPLACE}


async def store(session: Session, command: Command) -> Reply | None:
    # Command: RFC 9051 §6.4.6 (\Recent cannot be stored: RFC 3501 §2.3.2)
    from ..session import Reply

    view = selected_view(session.view)
    writable(view)
    args = command.args
    assert isinstance(args, Store)
    if args.unchanged_since is not None:
        session.condstore = True
    targets = resolve(view, command, args.sequence_set)
    if not targets:
        return None
    flags = [f for f in args.flags if f.lower() != "\\recent"]
    request = pb.StoreFlagsRequest(
        account=session.account, mailbox=view.name, uids=uid_set(u for _, u in targets), mode=_MODES[args.mode]
    )
    request.flags.extend(flags)
    if args.unchanged_since is not None:
        request.has_unchanged_since = True
        request.unchanged_since = args.unchanged_since
    reply = await session.stub.StoreFlags(request, timeout=CALL_TIMEOUT)
    updated = set()
    for m in reply.updated:
        view.set_flags(m.uid, m.flags, m.modseq)
        updated.add(m.uid)
    failed = set(reply.failed)
    # Not .SILENT: FLAGS of every message of the set, changed or not (those the store left
    # alone keep the flags this session knows). UID STORE always includes UID.
    for seq, uid in targets:
        if uid in failed or view.seq_of(uid) is None or view.is_expunged(uid):
            continue
        if args.silent and not (session.condstore and uid in updated and args.unchanged_since is not None):
            continue
        items = []
        if command.uid:
            items.append(b"UID %d" % uid)
        if not args.silent:
            items.append(b"FLAGS " + flag_list(sorted(view.flags_of(uid))))
        if session.condstore:
            items.append(b"MODSEQ (%d)" % view.modseqs.get(uid, 0))
        session.untagged(b"* %d FETCH (" % seq + b" ".join(items) + b")\r\n")
    if failed:
        numbers = sorted(failed) if command.uid else sorted(s for s, u in targets if u in failed)
        return Reply("OK", "some messages were modified meanwhile", f"MODIFIED {set_text(numbers)}")
    return None


HANDLERS = {"STORE": store}
