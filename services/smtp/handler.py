"""aiosmtpd handler hooks -> mailstore gRPC calls.

One handler per listener kind (inbound MX, submission, submission over TLS); it
keeps no connection state: what a connection knows lives in aiosmtpd's Session
(`auth_data` = the authenticated account) and Envelope.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import itertools
import logging
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import grpc
import grpc.aio
from aiosmtpd.smtp import MISSING, AuthResult, Envelope, Session
from mailstack.services.common.auth_log import AuthResult as AuthOutcome
from mailstack.services.common.auth_log import auth_event, local_ip_of
from mailstack.services.common.config import Settings
from mailstack.services.common.grpc_client import error_detail
from mailstack.services.common.metrics import SMTP_MESSAGES
from mailstack.services.common.span_attributes import Attributes, connection_attributes
from mailstack.services.smtp import replies, rspamd_protocol
from mailstack.services.smtp.inflight import InflightBudget
from mailstack.services.smtp.received import trace_headers, with_protocol
from mailstack.services.smtp.recipient_cache import RecipientCache
from mailstack.services.smtp.spam_filter import SpamFilter
from mailstack.v1 import mailstore_pb2 as pb
from mailstack.v1 import mailstore_pb2_grpc as pbg
from mailstack.v1 import send_pb2 as spb
from mailstack.v1 import send_pb2_grpc as spbg
from opentelemetry import trace

if TYPE_CHECKING:
    from mailstack.services.smtp.checks.inbound import InboundChecks
    from mailstack.services.smtp.protocol import SmtpProtocol

log = logging.getLogger("mailstack.smtp")
tracer = trace.get_tracer("mailstack.smtp")
T = TypeVar("T")  # a Deliver or Submit request

CHUNK = 1024 * 1024  # Deliver chunks (the API's limit)
RPC_TIMEOUT = 30.0  # seconds for the small calls (RCPT, MAIL, AUTH)
DELIVER_TIMEOUT = 300.0  # a large message to S3 may take a while


@dataclass(frozen=True)
class ListenerKind:
    name: str  # "smtp", "submission", "submissions"
    submission: bool  # AUTH offered; mail accepted only from authenticated users
    implicit_tls: bool  # RFC 8314 port 465


INBOUND = ListenerKind("smtp", submission=False, implicit_tls=False)
SUBMISSION = ListenerKind("submission", submission=True, implicit_tls=False)
SUBMISSIONS = ListenerKind("submissions", submission=True, implicit_tls=True)


def count(result: str, reason: str) -> None:
    SMTP_MESSAGES.labels(result, reason).inc()


def new_queue_id() -> str:
    return base64.b32encode(secrets.token_bytes(10)).decode().rstrip("=")


def _envelope_size(mail_options: list[str]) -> int:
    for option in mail_options:
        key, _, value = option.partition("=")
        if key.upper() == "SIZE" and value.isdigit():
            return int(value)
    return 0


def _remote_recipients(envelope: Envelope) -> set[str]:
    """The transaction's recipients in other domains (kept on aiosmtpd's per-transaction Envelope)."""
    remote: set[str] | None = getattr(envelope, "mailstack_remote", None)
    if remote is None:
        remote = set()
        envelope.mailstack_remote = remote  # type: ignore[attr-defined]
    return remote


def _pieces(header: bytes, content: bytes, make: Callable[[bytes], T]) -> Iterator[T]:
    """The trace header, then the content in CHUNK-sized requests, each made as gRPC asks for it:
    one whole copy of a large message is never made (the content itself is held once)."""
    yield make(header)
    view = memoryview(content)
    for start in range(0, len(content), CHUNK):
        yield make(bytes(view[start : start + CHUNK]))


def _client_ip(session: Session) -> str:
    peer = session.peer
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return str(peer or "")


def _grpc_fields(err: grpc.aio.AioRpcError) -> dict[str, str]:
    """The log fields of a failed mailstore call."""
    return {"grpc_code": err.code().name, "detail": err.details() or ""}


def _connection_attributes(server: SmtpProtocol, session: Session) -> Attributes:
    peer = session.peer
    port = int(peer[1]) if isinstance(peer, tuple) and len(peer) > 1 else None
    transport = server.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    user = str(session.auth_data) if session.authenticated else ""
    return connection_attributes(_client_ip(session), port, ssl_object, user)


class SmtpHandler:
    def __init__(
        self,
        kind: ListenerKind,
        settings: Settings,
        stub: pbg.MailstoreAsyncStub,
        outbound: spbg.OutboundAsyncStub | None = None,  # submission to other domains (ADR 0008)
        recipients: RecipientCache | None = None,  # shared by the listeners of one process
    ) -> None:
        self.kind = kind
        self.recipients = recipients if recipients is not None else RecipientCache()
        self.settings = settings
        self.stub = stub
        self.outbound = outbound
        self.inflight = InflightBudget(settings.smtp_inflight_bytes)  # SmtpServer shares one across listeners
        self.checks: InboundChecks | None = None  # the MX port's (checks/, ADR 0033); never on submission
        self.spam_filter: SpamFilter | None = None  # set by SmtpServer on the inbound listener (spam_filter_url)

    # ---------------------------------------------------------------- EHLO

    async def handle_EHLO(
        self, server: SmtpProtocol, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        # The 5-argument hook must record the client's name itself.
        session.host_name = hostname
        lines = [r for r in responses[:-1] if self.kind.submission or not r.startswith("250-AUTH")]
        lines += ["250-PIPELINING", "250-ENHANCEDSTATUSCODES", "250-CHUNKING"]
        return [*lines, "250 HELP"]

    # ---------------------------------------------------------------- AUTH (RFC 4954)

    async def auth_PLAIN(self, server: SmtpProtocol, args: list[str]) -> AuthResult:
        # RFC 4616; without an initial response the client gets an empty "334 " first (curl does this).
        if len(args) == 1:
            blob = await server.challenge_auth("")
            if blob is MISSING:
                return AuthResult(success=False, handled=True)
        else:
            try:
                blob = base64.b64decode(args[1], validate=True)
            except (binascii.Error, ValueError):
                return AuthResult(success=False, handled=False, message="501 5.5.2 Cannot decode base64")
        assert isinstance(blob, bytes)
        fields = blob.split(b"\x00")
        if len(fields) != 3:
            return AuthResult(success=False, handled=False, message="501 5.5.2 Cannot split PLAIN credentials")
        authzid, username, password = fields
        return await self._authenticate(server, username, password, authzid, "PLAIN")

    async def auth_LOGIN(self, server: SmtpProtocol, args: list[str]) -> AuthResult:
        if len(args) == 1:
            username = await server.challenge_auth("Username:")
            if username is MISSING:
                return AuthResult(success=False, handled=True)
        else:
            try:
                username = base64.b64decode(args[1], validate=True)
            except (binascii.Error, ValueError):
                return AuthResult(success=False, handled=False, message="501 5.5.2 Cannot decode base64")
        password = await server.challenge_auth("Password:")
        if password is MISSING:
            return AuthResult(success=False, handled=True)
        assert isinstance(username, bytes) and isinstance(password, bytes)
        return await self._authenticate(server, username, password, b"", "LOGIN")

    def _auth_event(self, server: SmtpProtocol, result: AuthOutcome, user: str, method: str) -> None:
        auth_event(
            result,
            protocol="smtp",
            user=user,
            remote_ip=server.client_ip,
            local_ip=local_ip_of(server.transport.get_extra_info("sockname") if server.transport else None),
            method=method,
            tls=server.tls_active,
            session=server.session_id,
        )

    def log_logout(self, server: SmtpProtocol, account: str) -> None:
        self._auth_event(server, "logout", account, server.auth_method)

    async def _authenticate(
        self, server: SmtpProtocol, username: bytes, password: bytes, authzid: bytes, method: str
    ) -> AuthResult:
        # The mailstore counts the attempt for this IP and account across all protocols (ADR 0011).
        ip = _client_ip(server.session) if server.session else ""
        request = pb.AuthenticateRequest(
            username=username.decode("utf-8", "replace"),
            password=password.decode("utf-8", "replace"),
            authzid=authzid.decode("utf-8", "replace"),
            remote_ip=ip,
            protocol="smtp",
        )
        try:
            reply = await self.stub.Authenticate(request, timeout=RPC_TIMEOUT)
        except grpc.aio.AioRpcError as err:
            detail = error_detail(err)
            throttled = detail is not None and detail.reason == pb.AUTH_THROTTLED
            if throttled or err.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INVALID_ARGUMENT):
                self._auth_event(server, "throttled" if throttled else "failed", request.username, method)
                count("rejected", "auth_limited" if throttled else "auth_failed")
                # slows guessing down; the session waits, the server does not
                await asyncio.sleep(self.settings.smtp_auth_failure_delay_ms / 1000)
                # RFC 4954 §6: 454 4.7.0 is temporary (try later), 535 5.7.8 wrong credentials
                return AuthResult(
                    success=False, handled=False, message=replies.AUTH_TOO_MANY if throttled else replies.AUTH_FAILED
                )
            log.warning("smtp AUTH: mailstore error", extra=_grpc_fields(err))
            return AuthResult(success=False, handled=False, message=replies.AUTH_TEMP_FAILURE)
        server.auth_method = method
        self._auth_event(server, "ok", reply.account, method)
        return AuthResult(success=True, auth_data=reply.account, message=replies.AUTH_OK)

    # ---------------------------------------------------------------- MAIL

    async def handle_MAIL(
        self, server: SmtpProtocol, session: Session, envelope: Envelope, address: str, mail_options: list[str]
    ) -> str:
        if _envelope_size(mail_options) > self.inflight.free:  # RFC 1870 §6.1: no room for it now
            count("rejected", "insufficient_storage")
            return replies.INSUFFICIENT_STORAGE
        # On submission an unauthenticated MAIL is accepted and every RCPT refused with 554 5.7.1,
        # as Postfix does: clients (smtplib, curl, swaks) expect the refusal at RCPT (ADR 0005).
        # The header From is checked at DATA by the mailstore (submission_from_check); "<>" is fine
        # here (an MDN, RFC 8098 §2.1) because that check does not depend on it.
        checked = self.settings.submission_from_check != "off"
        if self.kind.submission and session.authenticated and address != "<>" and checked:
            try:
                reply = await self.stub.CheckSender(
                    pb.CheckSenderRequest(account=str(session.auth_data), address=address),
                    timeout=RPC_TIMEOUT,
                )
            except grpc.aio.AioRpcError as err:
                log.warning("smtp MAIL: mailstore error", extra=_grpc_fields(err))
                return replies.TEMP_FAILURE
            if not reply.allowed:
                count("rejected", "sender_not_owned")
                return replies.SENDER_NOT_OWNED
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return replies.SENDER_OK

    # ---------------------------------------------------------------- RCPT

    async def handle_RCPT(
        self, server: SmtpProtocol, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        if self.kind.submission and not session.authenticated:
            count("rejected", "auth_required")
            return replies.SUBMISSION_AUTH_REQUIRED
        if len(envelope.rcpt_tos) >= self.settings.smtp_max_recipients:
            count("rejected", "too_many_recipients")
            return replies.TOO_MANY_RECIPIENTS  # RFC 5321 §4.5.3.1.10
        status = await self._recipient_status(address, _envelope_size(envelope.mail_options))
        if status is None:
            count("rejected", "storage_unavailable")
            return replies.TEMP_FAILURE
        if status == pb.RECIPIENT_LOCAL and self.checks is not None:  # blocklists, greylisting
            refused = await self.checks.at_recipient(_client_ip(session), str(envelope.mail_from or ""), address)
            if refused is not None:
                count("rejected", refused[1])
                return refused[0]
        remote = status == pb.RECIPIENT_NOT_LOCAL and self.kind.submission
        if status == pb.RECIPIENT_LOCAL or (remote and self.outbound is not None):
            # Another domain on submission: queued at DATA for the outbound worker (ADR 0008).
            if address not in envelope.rcpt_tos:
                envelope.rcpt_tos.append(address)
                envelope.rcpt_options.extend(rcpt_options)
                if remote:
                    _remote_recipients(envelope).add(address)
            return replies.RECIPIENT_OK
        if remote:
            count("rejected", "remote_recipient")
            return replies.REMOTE_NOT_YET
        count("rejected", pb.RecipientStatus.Name(status).lower())
        return replies.RECIPIENT_REPLIES.get(status, replies.TEMP_FAILURE)

    async def _recipient_status(self, address: str, size: int) -> pb.RecipientStatus.ValueType | None:
        """Whether the mailstore takes mail for `address` (None: it could not be asked)."""
        # Advisory (see recipient_cache): Deliver checks the recipient again at DATA.
        if self.recipients.is_local(address, size):
            return pb.RECIPIENT_LOCAL
        request = pb.ResolveRecipientRequest(address=address, size=size)
        try:
            reply = await self.stub.ResolveRecipient(request, timeout=RPC_TIMEOUT)
        except grpc.aio.AioRpcError as err:
            log.warning("smtp RCPT: mailstore error", extra=_grpc_fields(err))
            return None
        if reply.status == pb.RECIPIENT_LOCAL:
            self.recipients.remember_local(address, size)
        return reply.status

    # ---------------------------------------------------------------- DATA

    async def handle_DATA(self, server: SmtpProtocol, session: Session, envelope: Envelope) -> str:
        queue_id = new_queue_id()
        content = envelope.original_content or b""
        sender = "" if envelope.mail_from in (None, "<>") else str(envelope.mail_from)
        recipients = list(envelope.rcpt_tos)
        started = time.monotonic()
        with tracer.start_as_current_span(
            "smtp.transaction",
            kind=trace.SpanKind.SERVER,
            attributes={"smtp.queue_id": queue_id, "smtp.recipients": len(recipients), "smtp.size": len(content)},
        ) as span:
            span.set_attributes(_connection_attributes(server, session))
            protocol = self.trace_protocol(server, session)
            header = trace_headers(
                sender=sender,
                helo=session.host_name or "",
                client_ip=_client_ip(session),
                hostname=self.settings.hostname,
                protocol=protocol,
                queue_id=queue_id,
                recipients=recipients,
            )
            if self.kind.submission and self.outbound is not None:
                # Every submission goes through the mailstore's Submit, local recipients too: it checks the
                # header From against the account and the sending limits (issue 13), which Deliver cannot.
                account = str(session.auth_data)
                reply, reason = await self._submit(queue_id, account, sender, recipients, header, content)
            else:
                reply, reason = await self._inbound(session, queue_id, sender, recipients, header, content)
            span.set_attribute("smtp.result", reason)
            result = "accepted" if reply.startswith("250") else "rejected"
            count(result, reason)
            # Inside the span: JSON logs then carry its trace_id, the one the mailstore's line has.
            log.info(
                "smtp transaction",
                extra={
                    "queue_id": queue_id, "remote_ip": _client_ip(session), "helo": session.host_name or "",
                    "sender": f"<{sender}>", "recipients": ",".join(recipients), "size": len(content),
                    "result": reason, "reply": reply, "ms": int((time.monotonic() - started) * 1000),
                },
            )  # fmt: skip
        return reply

    async def _inbound(
        self, session: Session, queue_id: str, sender: str, recipients: list[str], header: bytes, content: bytes
    ) -> tuple[str, str]:
        """The MX port (and LMTP, which has neither check): sender authentication first (ADR 0033), so
        that the spam filter (ADR 0034) sees our Authentication-Results, then Deliver."""
        mailbox = ""
        if self.checks is not None:
            verdict = await self.checks.at_data(_client_ip(session), session.host_name or "", sender, content)
            if verdict is not None:
                if verdict.refusal is not None:
                    return verdict.refusal, verdict.reason
                # RFC 8601 §5: below our Received, above what the message brought; quarantine names Junk
                content, mailbox = verdict.header + verdict.content, verdict.mailbox
        if self.spam_filter is not None:
            query = rspamd_protocol.Envelope(sender, recipients, _client_ip(session), session.host_name or "",
                                             queue_id, self.settings.hostname)  # fmt: skip
            screened = await self.spam_filter.screen(query, content)
            if screened.reply:
                return screened.reply, screened.reason
            header, content = header + screened.header, screened.content or content
        return await self._deliver(queue_id, sender, recipients, header, content, mailbox)

    def trace_protocol(self, server: SmtpProtocol, session: Session) -> str:
        """The Received field's "with" (RFC 3848)."""
        return with_protocol(session.extended_smtp, server.tls_active, bool(session.authenticated))

    async def _deliver(
        self, queue_id: str, sender: str, recipients: list[str], header: bytes, content: bytes, mailbox: str = ""
    ) -> tuple[str, str]:
        """(SMTP reply, reason for counters and logs) for one Deliver call."""
        size = len(header) + len(content)
        envelope = pb.DeliverEnvelope(sender=sender, recipients=recipients, size=size, queue_id=queue_id,
                                      mailbox=mailbox)  # fmt: skip
        # A plain iterator (cheaper for grpc.aio than an async generator), its requests made one at a time.
        requests = itertools.chain(
            [pb.DeliverRequest(envelope=envelope)], _pieces(header, content, lambda c: pb.DeliverRequest(chunk=c))
        )
        try:
            response = await self.stub.Deliver(requests, timeout=DELIVER_TIMEOUT)
        except grpc.aio.AioRpcError as err:
            detail = error_detail(err)
            reason = detail.reason if detail is not None else pb.ERROR_REASON_UNSPECIFIED
            if err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and reason == pb.TOO_BIG:
                return replies.TOO_BIG, "too_big"
            if err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and reason == pb.OVER_QUOTA:
                return replies.MAILBOX_FULL, "over_quota"
            # Anything else (mailstore down, storage down, a bug): the sender keeps the message and retries.
            self.recipients.clear()  # and RCPT asks the mailstore again rather than accept from the cache
            log.warning("smtp DATA: mailstore error", extra={"queue_id": queue_id, **_grpc_fields(err)})
            return replies.TEMP_FAILURE, "storage_unavailable"
        results = list(response.results)
        for result in results:
            if result.status != pb.RECIPIENT_LOCAL:
                self.recipients.forget(result.recipient)
        return self._data_reply(queue_id, results)

    async def _submit(
        self, queue_id: str, account: str, sender: str, recipients: list[str], header: bytes, content: bytes
    ) -> tuple[str, str]:
        """Submission with remote recipients: local ones stored, remote ones queued, in one call."""
        assert self.outbound is not None
        size = len(header) + len(content)
        submit = spb.SubmitHeader(account=account, sender=sender, recipients=recipients, size=size,
                                  queue_id=queue_id)  # fmt: skip
        requests = itertools.chain(
            [spb.SubmitRequest(header=submit)], _pieces(header, content, lambda c: spb.SubmitRequest(chunk=c))
        )
        try:
            response = await self.outbound.Submit(requests, timeout=DELIVER_TIMEOUT)
        except grpc.aio.AioRpcError as err:
            detail = error_detail(err)
            reason = detail.reason if detail is not None else pb.ERROR_REASON_UNSPECIFIED
            if err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and reason == pb.TOO_BIG:
                return replies.TOO_BIG, "too_big"
            if err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and reason == pb.NOT_ALLOWED:
                log.info("smtp DATA: rate limited", extra={"queue_id": queue_id, "account": account,
                                                           "detail": err.details()})  # fmt: skip
                return replies.RATE_LIMITED, "rate_limited"
            # The message's sender refused (a refusal of this frontend's own identity has no NOT_ALLOWED).
            if err.code() == grpc.StatusCode.PERMISSION_DENIED and reason == pb.NOT_ALLOWED:
                log.info("smtp DATA: sender refused", extra={"queue_id": queue_id, "account": account,
                                                             "detail": err.details()})  # fmt: skip
                return replies.header_sender_refused(err.details() or ""), "sender_not_owned"
            log.warning("smtp DATA: submit failed", extra={"queue_id": queue_id, **_grpc_fields(err)})
            return replies.TEMP_FAILURE, "storage_unavailable"
        # Stored or queued: ours now; a local failure after RCPT gets a DSN from the mailstore.
        return replies.queued(response.message_id), "queued"

    @staticmethod
    def _data_reply(queue_id: str, results: list[pb.RecipientResult]) -> tuple[str, str]:
        """One reply for all recipients (SMTP has no per-recipient DATA reply, unlike LMTP).

        A recipient that was not stored must never be answered 250 (that would lose it):
        if nothing was stored and every failure is permanent, the first one's code;
        otherwise a temporary failure, and the sender's retry may duplicate the stored
        copies, which is acceptable where a loss is not."""
        failed = [r for r in results if r.status != pb.RECIPIENT_LOCAL]
        if not failed and results:
            return replies.queued(queue_id), "accepted"
        first = failed[0].status if failed else pb.RECIPIENT_TEMP_FAILURE
        stored = len(failed) < len(results)
        reason = pb.RecipientStatus.Name(first).lower()
        permanent = all(r.status in (pb.RECIPIENT_UNKNOWN, pb.RECIPIENT_TOO_BIG_FOR_QUOTA) for r in failed)
        if not stored and permanent:
            return replies.RECIPIENT_REPLIES[first], reason
        if first == pb.RECIPIENT_OVER_QUOTA and not stored:
            return replies.MAILBOX_FULL, reason
        return replies.TEMP_FAILURE, reason

    # ---------------------------------------------------------------- errors

    async def handle_exception(self, error: Exception) -> str:
        log.exception("smtp session error", exc_info=error)
        return replies.INTERNAL_ERROR

    def __repr__(self) -> str:  # aiosmtpd logs the handler
        return f"SmtpHandler({self.kind.name})"
