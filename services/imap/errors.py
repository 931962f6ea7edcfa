"""The mapping of mailstore (gRPC) errors to IMAP response codes
(RFC 5530 response codes; RFC 9208 OVERQUOTA; RFC 7889 TOOBIG)."""

from __future__ import annotations

import grpc
from mailstack.services.common.grpc_client import error_detail
from mailstack.v1 import mailstore_pb2 as pb

from .replies import ImapError

_BY_REASON: dict[int, tuple[str, str, str]] = {
    pb.ACCOUNT_NOT_FOUND: ("NO", "AUTHENTICATIONFAILED", "authentication failed"),
    pb.MAILBOX_NOT_FOUND: ("NO", "NONEXISTENT", "no such mailbox"),
    pb.MESSAGE_NOT_FOUND: ("NO", "NONEXISTENT", "no such message"),
    pb.ALREADY_EXISTS: ("NO", "ALREADYEXISTS", "mailbox already exists"),
    pb.INVALID_NAME: ("NO", "CANNOT", "invalid mailbox name"),
    pb.INVALID_REQUEST: ("BAD", "CLIENTBUG", "invalid request"),
    pb.OVER_QUOTA: ("NO", "OVERQUOTA", "quota exceeded"),
    pb.TOO_BIG: ("NO", "TOOBIG", "message too big"),
    pb.STORAGE_UNAVAILABLE: ("NO", "UNAVAILABLE", "storage temporarily unavailable, try again"),
    pb.AUTH_FAILED: ("NO", "AUTHENTICATIONFAILED", "authentication failed"),
    pb.AUTH_THROTTLED: ("NO", "UNAVAILABLE", "too many login attempts, try again later"),
    pb.NOT_ALLOWED: ("NO", "CANNOT", "not allowed"),
    pb.HAS_CHILDREN: ("NO", "HASCHILDREN", "mailbox has children"),
    pb.LOCKED: ("NO", "INUSE", "in use, try again"),
    pb.UIDVALIDITY_CHANGED: ("NO", "UNAVAILABLE", "mailbox changed, reselect"),
}
_BY_CODE: dict[grpc.StatusCode, tuple[str, str, str]] = {
    grpc.StatusCode.NOT_FOUND: ("NO", "NONEXISTENT", "no such mailbox"),
    grpc.StatusCode.ALREADY_EXISTS: ("NO", "ALREADYEXISTS", "already exists"),
    grpc.StatusCode.UNAUTHENTICATED: ("NO", "AUTHENTICATIONFAILED", "authentication failed"),
    grpc.StatusCode.INVALID_ARGUMENT: ("BAD", "CLIENTBUG", "invalid request"),
    grpc.StatusCode.PERMISSION_DENIED: ("NO", "NOPERM", "not allowed"),
    grpc.StatusCode.FAILED_PRECONDITION: ("NO", "CANNOT", "not possible"),
}


def from_grpc(err: grpc.RpcError) -> ImapError:
    """The IMAP answer for a failed mailstore call; anything unknown is a temporary failure."""
    detail = error_detail(err)
    if detail is not None and detail.reason in _BY_REASON:
        status, code, text = _BY_REASON[detail.reason]
        # the mailstore's message helps the user (e.g. "mailbox has children"); never a stack
        message = detail.message.replace("\r", " ").replace("\n", " ")[:200] if detail.message else text
        if detail.reason in (pb.AUTH_FAILED, pb.ACCOUNT_NOT_FOUND):
            message = text  # never say whether the account exists
        return ImapError(status, message, code)
    status_code = err.code() if callable(getattr(err, "code", None)) else None
    if status_code in _BY_CODE:
        status, code, text = _BY_CODE[status_code]
        return ImapError(status, text, code)
    return ImapError("NO", "server temporarily unavailable, try again", "UNAVAILABLE")
