"""APPEND (RFC 9051 §6.3.12; APPENDUID RFC 4315 §3; MULTIAPPEND RFC 3502 shape)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc
from mailstack.v1 import mailstore_pb2 as pb

from ..errors import from_grpc, no
from ..protocol import Append, AppendMessage, Command
from .common import set_text

if TYPE_CHECKING:
    from ..session import Reply, Session

CALL_TIMEOUT = 120.0
CHUNK = 1 << 20


def _requests(session: Session, mailbox: str, message: AppendMessage) -> AsyncIterator[pb.AppendRequest]:
    async def gen() -> AsyncIterator[pb.AppendRequest]:
        header = pb.AppendHeader(
            account=session.account,
            mailbox=mailbox,
            flags=[f for f in message.flags if f.lower() != "\\recent"],
            size=len(message.data),
        )
        if message.date_time is not None:
            offset = message.date_time.utcoffset()
            header.internal_date.CopyFrom(
                pb.DateTime(
                    unix_seconds=int(message.date_time.timestamp()),
                    utc_offset_minutes=int(offset.total_seconds() // 60) if offset else 0,
                )
            )
        yield pb.AppendRequest(header=header)
        for i in range(0, len(message.data), CHUNK):
            yield pb.AppendRequest(chunk=message.data[i : i + CHUNK])

    return gen()


async def append(session: Session, command: Command) -> Reply | None:
    # Command: RFC 9051 §6.3.12: a missing mailbox is NO [TRYCREATE]; over quota NO [OVERQUOTA]
    from ..session import Reply

    args = command.args
    assert isinstance(args, Append)
    uids: list[int] = []
    uidvalidity = 0
    for message in args.messages:
        if len(message.data) > session.settings.max_message_size:
            raise no("message too big", "TOOBIG")
        if message.binary:
            raise no("BINARY APPEND is not supported", "CANNOT")
        try:
            reply = await session.stub.Append(_requests(session, args.mailbox, message), timeout=CALL_TIMEOUT)
        except grpc.RpcError as e:
            error = from_grpc(e)
            if error.code == "NONEXISTENT":
                error.code = "TRYCREATE"
            raise error from None
        uids.append(reply.uid)
        uidvalidity = reply.uidvalidity
    if session.view is not None and session.view.name == args.mailbox:
        session.dirty = True  # announce EXISTS with this completion (RFC 9051 §6.3.12)
    return Reply("OK", "APPEND completed", f"APPENDUID {uidvalidity} {set_text(uids)}")


HANDLERS = {"APPEND": append}
