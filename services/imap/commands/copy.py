"""COPY, MOVE and their UID forms (RFC 9051 §6.4.7, RFC 6851 MOVE, RFC 4315 COPYUID)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc

from ..errors import from_grpc
from ..protocol import Command, CopyMove
from ..protocol.encoder import set_text, untagged_status
from ..replies import Reply
from .common import resolve, selected_view, writable

if TYPE_CHECKING:
    from ..session import Session


async def copy_move(session: Session, command: Command) -> Reply | None:
    # Command: RFC 9051 §6.4.7 COPY / §6.4.8 MOVE; a missing target is NO [TRYCREATE]
    view = selected_view(session.view)
    args = command.args
    assert isinstance(args, CopyMove)
    move = command.name == "MOVE"
    if move:
        writable(view)
    targets = resolve(view, command, args.sequence_set)
    if not targets:
        return None
    try:
        reply = await session.mailstore.copy(view.name, [u for _, u in targets], args.mailbox, move)
    except grpc.RpcError as e:
        error = from_grpc(e)
        if error.code == "NONEXISTENT":
            error.code = "TRYCREATE"  # RFC 9051 §6.4.7
        raise error from None
    if args.mailbox == view.name and reply.mapping:
        session.mark_dirty()  # into the selected mailbox: EXISTS with this completion (RFC 9051 §6.4.7)
    mapping = sorted(reply.mapping, key=lambda p: p.source)
    code = None
    if mapping:
        code = (
            f"COPYUID {reply.uidvalidity} {set_text(p.source for p in mapping)} "
            f"{set_text(p.destination for p in mapping)}"
        )
        # set_text sorts each side; keep the pairing by sorting pairs by source (destinations ascend too)
    if not move:
        return Reply("OK", "COPY completed", code)
    # RFC 6851 §4.3: COPYUID in an untagged OK, then the EXPUNGEs, then the tagged OK
    if code:
        session.untagged(untagged_status("OK", "moved", code))
    moved = [pair.source for pair in mapping]
    for line in session.contexts.forget(view, moved) + view.expunge_responses(moved, session.qresync):
        session.untagged(line)  # RFC 5267 §4.3.4: REMOVEFROM before EXPUNGE
    return Reply("OK", "MOVE completed")
