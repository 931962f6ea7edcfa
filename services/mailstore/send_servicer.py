"""gRPC servicers of send.proto: Sender (token-authenticated), SendAdmin, Outbound (the worker and SMTP)."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import grpc
from mailstack.services.common.auth_log import AuthResult, auth_event
from mailstack.services.mailstore.core.errors import AuthFailed, InvalidRequest, Throttled
from mailstack.services.mailstore.rpc import abort_with, read_stream, rpc
from mailstack.services.mailstore.sender_rules import RateLimited
from mailstack.services.mailstore.sending import Sending, SendResult
from mailstack.storage.errors import NotAllowed, NotFound
from mailstack.storage.queue.base import OutboundStatus, RecipientStatus, TokenRecord
from mailstack.v1 import mailstore_pb2 as pb
from mailstack.v1 import send_pb2 as spb
from mailstack.v1 import send_pb2_grpc as spbg

BODY_CHUNK = 1024 * 1024
STATES = {"queued": spb.DELIVERY_QUEUED, "delivered": spb.DELIVERY_DELIVERED,
          "deferred": spb.DELIVERY_DEFERRED, "bounced": spb.DELIVERY_BOUNCED}  # fmt: skip
OUTCOMES = {spb.ATTEMPT_DELIVERED: "delivered", spb.ATTEMPT_TEMPORARY: "temporary",
            spb.ATTEMPT_PERMANENT: "permanent"}  # fmt: skip

F = TypeVar("F", bound=Callable[..., Any])


def refusals(code: grpc.StatusCode, reason: pb.ErrorReason.ValueType) -> Callable[[F], F]:
    """NotAllowed means something different per service: a From outside the token, a lost lease.
    A sending limit is RESOURCE_EXHAUSTED with reason NOT_ALLOWED (TOO_BIG and OVER_QUOTA are the
    other exhaustions): SMTP answers it 450 4.7.1, a Send client retries later."""

    def decorate(method: F) -> F:
        @functools.wraps(method)
        async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            try:
                return await method(self, request, context)
            except NotAllowed as exc:
                await abort_with(context, code, reason, str(exc))
            except RateLimited as exc:
                await abort_with(context, grpc.StatusCode.RESOURCE_EXHAUSTED, pb.NOT_ALLOWED, str(exc))

        return rpc(wrapper)  # type: ignore[return-value,unused-ignore]

    return decorate


def recipient_pb(r: RecipientStatus) -> spb.RecipientState:
    return spb.RecipientState(
        recipient=r.address,
        state=STATES[r.state],
        local=r.local,
        attempts=r.attempts,
        last_error=r.last_error,
        next_attempt_unix=int(r.next_attempt) if r.state == "deferred" else 0,
        updated_unix=int(r.updated),
    )


def send_response(result: SendResult) -> spb.SendResponse:
    return spb.SendResponse(
        message_id=result.message_id,
        rfc5322_message_id=result.header_message_id,
        recipients=[recipient_pb(r) for r in result.status.recipients],
        duplicate=result.duplicate,
    )


def status_pb(status: OutboundStatus) -> spb.SendStatus:
    return spb.SendStatus(
        message_id=status.id,
        sender=status.sender,
        created_unix=int(status.created),
        recipients=[recipient_pb(r) for r in status.recipients],
    )


def peer_ip(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """The caller's IP from gRPC's peer string ("ipv4:192.0.2.1:5000", "ipv6:[::1]:5000"); "" for
    a Unix socket."""
    peer = context.peer() or ""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rsplit(":", 1)[0]
    if kind == "ipv6":
        return rest.rsplit(":", 1)[0].strip("[]")
    return ""


async def checked_token(sending: Sending, context: grpc.aio.ServicerContext[Any, Any]) -> TokenRecord:
    """The caller's token, counted per peer IP (ADR 0011); refusals are logged and counted like logins."""
    ip = peer_ip(context)
    try:
        token = await sending.check_token(bearer_token(context), ip)
    except (AuthFailed, Throttled) as exc:
        result: AuthResult = "throttled" if isinstance(exc, Throttled) else "failed"
        auth_event(result, protocol="send", user="", remote_ip=ip, local_ip="", method="bearer", tls=False, session="")
        raise
    return token


def bearer_token(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str) and value.lower().startswith("bearer "):
            return value[7:].strip()
    return ""


class SenderServicer(spbg.SenderServicer):
    def __init__(self, sending: Sending) -> None:
        self.sending = sending

    @refusals(grpc.StatusCode.PERMISSION_DENIED, pb.NOT_ALLOWED)
    async def Send(self, request_iterator: AsyncIterator[spb.SendRequest], context: Any) -> spb.SendResponse:
        token = await checked_token(self.sending, context)
        limit = self.sending.settings.max_message_size
        header, raw = await read_stream(request_iterator, "header", limit, lambda h: h.size)
        if len(header.recipients) > 1000 or len(header.idempotency_key) > 200:
            raise InvalidRequest("at most 1000 recipients and a 200-character idempotency key")
        result = await self.sending.send(
            token,
            structured=header.structured if header.HasField("structured") else None,
            raw=raw,
            envelope_from=header.envelope_from,
            recipients=list(header.recipients),
            idempotency_key=header.idempotency_key,
            save_sent_copy=header.save_sent_copy,
        )
        return send_response(result)

    @rpc
    async def GetSendStatus(self, request: spb.GetSendStatusRequest, context: Any) -> spb.SendStatus:
        token = await checked_token(self.sending, context)
        status = await self.sending.status(request.message_id)
        # Another token's message is "not found", not "forbidden": ids are not an oracle.
        if status is None or not self.sending.may_send_as(token, status.sender or "@"):
            raise NotFound(f"no message {request.message_id}")
        return status_pb(status)


def token_pb(record: TokenRecord) -> spb.ApiToken:
    return spb.ApiToken(
        name=record.name,
        from_domains=record.from_domains,
        from_addresses=record.from_addresses,
        created_unix=int(record.created),
    )


class SendAdminServicer(spbg.SendAdminServicer):
    def __init__(self, sending: Sending) -> None:
        self.sending = sending

    @rpc
    async def CreateToken(self, request: spb.CreateTokenRequest, context: Any) -> spb.CreateTokenResponse:
        record, secret = await self.sending.create_token(
            request.name, list(request.from_domains), list(request.from_addresses)
        )
        return spb.CreateTokenResponse(token=token_pb(record), secret=secret)

    @rpc
    async def ListTokens(self, request: spb.ListTokensRequest, context: Any) -> spb.ListTokensResponse:
        return spb.ListTokensResponse(tokens=[token_pb(t) for t in await self.sending.list_tokens()])

    @rpc
    async def RevokeToken(self, request: spb.RevokeTokenRequest, context: Any) -> pb.Empty:
        await self.sending.revoke_token(request.name)
        return pb.Empty()


class OutboundServicer(spbg.OutboundServicer):
    def __init__(self, sending: Sending) -> None:
        self.sending = sending

    @refusals(grpc.StatusCode.PERMISSION_DENIED, pb.NOT_ALLOWED)  # a From not the account's
    async def Submit(self, request_iterator: AsyncIterator[spb.SubmitRequest], context: Any) -> spb.SendResponse:
        limit = self.sending.settings.max_message_size
        header, data = await read_stream(request_iterator, "header", limit, lambda h: h.size)
        if not header.account:
            raise InvalidRequest("the submitting account is required")
        result = await self.sending.submit(header.account, header.sender, list(header.recipients), data)
        return send_response(result)

    @rpc
    async def LeaseOutbound(self, request: spb.LeaseOutboundRequest, context: Any) -> spb.LeaseOutboundResponse:
        ttl = request.lease_seconds or self.sending.settings.outbound_lease_seconds
        leased = await self.sending.lease(request.worker, request.max_messages or 1, ttl)
        return spb.LeaseOutboundResponse(
            messages=[
                spb.LeasedMessage(
                    message_id=m.id,
                    sender=m.sender,
                    size=m.size,
                    attempt=m.attempt,
                    domains=[spb.DomainRecipients(domain=d, recipients=r) for d, r in m.by_domain.items()],
                )
                for m in leased
            ]
        )

    @rpc
    async def FetchOutboundBody(self, request: spb.FetchOutboundBodyRequest, context: Any) -> None:  # type: ignore[override,unused-ignore]
        data = await self.sending.leased_body(request.message_id, request.worker)
        for start in range(0, max(len(data), 1), BODY_CHUNK):
            await context.write(spb.FetchOutboundBodyResponse(data=data[start : start + BODY_CHUNK]))

    @refusals(grpc.StatusCode.ABORTED, pb.LOCKED)
    async def ReportOutbound(self, request: spb.ReportOutboundRequest, context: Any) -> pb.Empty:
        attempts = [(r.recipient, OUTCOMES.get(r.outcome, "temporary"), r.reply, r.remote_mta) for r in request.results]
        await self.sending.report(request.message_id, request.worker, attempts)
        return pb.Empty()
