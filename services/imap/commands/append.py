"""APPEND (RFC 9051 §6.3.12; APPENDUID RFC 4315 §3; MULTIAPPEND RFC 3502 shape; CATENATE RFC 4469)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import grpc
from mailstack.message.flags import canonical_flag, is_recent

from ..errors import from_grpc
from ..mailbox_view import NEW, Change
from ..protocol import Append, Command
from ..protocol.encoder import set_text
from ..replies import Reply, no
from . import catenate

if TYPE_CHECKING:
    from ..session import Session

log = logging.getLogger("mailstack.imap")

# The mailstore keeps system flags in this case (and drops \Recent); keywords as given.


async def append(session: Session, command: Command) -> Reply | None:
    # Command: RFC 9051 §6.3.12: a missing mailbox is NO [TRYCREATE]; over quota NO [OVERQUOTA];
    # MULTIAPPEND (RFC 3502 §6.3.11): if one message fails, none is kept
    args = command.args
    assert isinstance(args, Append)
    messages = await catenate.resolve(session, args.messages)  # RFC 4469: parts joined first
    for message in messages:  # what can be refused without storing anything, first
        if len(message.data) > session.settings.max_message_size:
            raise no("message too big", "TOOBIG")
    # RFC 3516 §4.4: a literal8 (binary content, NULs too) is stored as sent; BINARY serves it
    uids: list[int] = []
    uidvalidity = 0
    appended: list[Change] = []
    for message in messages:
        try:
            kept = [f for f in message.flags if f.lower() != "\\recent"]
            reply = await session.mailstore.append(args.mailbox, message.data, kept, message.date_time)
        except grpc.RpcError as e:
            await _withdraw(session, args.mailbox, uids)
            error = from_grpc(e)
            if error.code == "NONEXISTENT":
                error.code = "TRYCREATE"
            raise error from None
        uids.append(reply.uid)
        uidvalidity = reply.uidvalidity
        flags = (canonical_flag(f) for f in message.flags if not is_recent(f))
        appended.append(Change(reply.uid, reply.modseq, NEW, tuple(flags)))
    if session.view is not None and session.view.name == args.mailbox:
        # announce EXISTS with this completion (RFC 9051 §6.3.12)
        if not await _add_to_view(session, uidvalidity, appended):
            session.mark_dirty()
    return Reply("OK", "APPEND completed", f"APPENDUID {uidvalidity} {set_text(uids)}")


async def _add_to_view(session: Session, uidvalidity: int, appended: list[Change]) -> bool:
    """Put this session's own appended messages into its view without reading the change log, when
    they are the very next UIDs it has not seen (nothing else arrived meanwhile); else False (the
    caller refreshes). Other pending hints still refresh at the completion; the hint of this APPEND
    is then held by the view. They get \\Recent here, as a refresh gives them."""
    view = session.view
    if view is None or uidvalidity != view.uidvalidity:
        return False
    if [c.uid for c in appended] != list(range(view.uidnext, view.uidnext + len(appended))):
        return False
    new = view.apply(appended, view.modseq)  # the change-log cursor stays: a refresh re-reads them
    if new and not view.readonly and not view.no_recent:
        # RFC 3501 §2.3.2: \Recent in exactly one session: whoever claims first
        first, uidnext = await session.mailstore.claim_recent(view.name)
        view.recent.update(u for u in new if first <= u < uidnext)
    return True


async def _withdraw(session: Session, mailbox: str, uids: list[int]) -> None:
    """RFC 3502 §6.3.11: a MULTIAPPEND that fails part way keeps none of its messages: those
    already stored are expunged again (\\Deleted, then UID EXPUNGE of just them). Another session
    may see them come and go, as if a client had appended and expunged them."""
    if not uids:
        return
    try:
        await session.mailstore.store_flags(mailbox, uids, "+", ["\\Deleted"])
        await session.mailstore.expunge(mailbox, uids)
    except grpc.RpcError as e:  # the original failure is the answer; these stay (logged)
        fields = {"count": len(uids), "grpc_code": e.code().name}
        log.warning("APPEND: messages of a failed MULTIAPPEND not withdrawn", extra=fields)
