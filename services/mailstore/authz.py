"""Who may call what on the mailstore's internal gRPC API (ADR 0009).

The caller is the name in its client certificate (mTLS with the internal CA: smtp, imap, pop3,
outbound, admin). POLICY is the whole authorization, as data: a method, or a whole service
("/pkg.Service/*"), maps to the identities allowed to call it. Anything not listed is refused
(fail closed): a new Mailstore RPC is callable by nobody until it is added here, while a new
Admin or SendAdmin RPC is admin-only at once. Each frontend gets what it calls (grep the stubs
in services/smtp, imap, pop3, outbound and the CLI), nothing more.

A call without a verified certificate is refused with UNAUTHENTICATED, a caller the table does
not allow with PERMISSION_DENIED; every refusal and every Admin/SendAdmin call is logged with
its caller.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio
from mailstack.services.common.metrics import GRPC_REFUSALS

log = logging.getLogger("mailstack.mailstore.authz")

SMTP, IMAP, POP3, OUTBOUND, ADMIN = "smtp", "imap", "pop3", "outbound", "admin"
ANYONE = "*"  # no certificate needed (health checks: probes and load balancers)

_MAILSTORE = "/mailstack.v1.Mailstore/"
_OUTBOUND = "/mailstack.v1.Outbound/"

POLICY: dict[str, frozenset[str]] = {
    # Mailstore: what the frontends call; admin for `mailstack import` (incremental passes read,
    # flag, expunge and subscribe as an IMAP client would) and `mailstack mail` (search, fetch, move).
    _MAILSTORE + "Authenticate": frozenset({SMTP, IMAP, POP3}),
    _MAILSTORE + "ResolveRecipient": frozenset({SMTP}),
    _MAILSTORE + "CheckSender": frozenset({SMTP}),
    _MAILSTORE + "Deliver": frozenset({SMTP}),
    _MAILSTORE + "ListMailboxes": frozenset({IMAP, ADMIN}),
    _MAILSTORE + "CreateMailbox": frozenset({IMAP, ADMIN}),
    _MAILSTORE + "DeleteMailbox": frozenset({IMAP}),
    _MAILSTORE + "RenameMailbox": frozenset({IMAP}),
    _MAILSTORE + "Subscribe": frozenset({IMAP, ADMIN}),
    _MAILSTORE + "GetMailboxStatus": frozenset({IMAP, POP3, ADMIN}),
    _MAILSTORE + "ClaimRecent": frozenset({IMAP}),
    _MAILSTORE + "Append": frozenset({IMAP, ADMIN}),
    _MAILSTORE + "FetchMetadata": frozenset({IMAP, POP3, ADMIN}),
    _MAILSTORE + "FetchBody": frozenset({POP3, ADMIN}),
    _MAILSTORE + "FetchBodies": frozenset({IMAP, POP3}),
    _MAILSTORE + "StoreFlags": frozenset({IMAP, POP3, ADMIN}),
    _MAILSTORE + "Copy": frozenset({IMAP}),
    _MAILSTORE + "Move": frozenset({IMAP, ADMIN}),
    _MAILSTORE + "Expunge": frozenset({IMAP, POP3, ADMIN}),
    _MAILSTORE + "Search": frozenset({IMAP, ADMIN}),
    _MAILSTORE + "SearchSortData": frozenset({IMAP}),
    _MAILSTORE + "GetQuota": frozenset({IMAP}),
    _MAILSTORE + "GetChanges": frozenset({IMAP}),
    _MAILSTORE + "Watch": frozenset({IMAP}),
    _MAILSTORE + "AcquireLease": frozenset({POP3}),
    _MAILSTORE + "ReleaseLease": frozenset({POP3}),
    _MAILSTORE + "ReportSessions": frozenset({IMAP, POP3}),
    # Outbound: SMTP submission queues mail; only the worker leases and reports.
    _OUTBOUND + "Submit": frozenset({SMTP}),
    _OUTBOUND + "LeaseOutbound": frozenset({OUTBOUND}),
    _OUTBOUND + "FetchOutboundBody": frozenset({OUTBOUND}),
    _OUTBOUND + "ReportOutbound": frozenset({OUTBOUND}),
    # Whole services: an RPC added later is admin-only without an edit here.
    "/mailstack.v1.Admin/*": frozenset({ADMIN}),
    "/mailstack.v1.SendAdmin/*": frozenset({ADMIN}),
    "/grpc.reflection.v1alpha.ServerReflection/*": frozenset({ADMIN}),  # only when enabled
    "/grpc.health.v1.Health/*": frozenset({ANYONE}),
}

AUDITED = ("/mailstack.v1.Admin/", "/mailstack.v1.SendAdmin/")  # every call logged with its caller
NOBODY: frozenset[str] = frozenset()


def allowed(method: str) -> frozenset[str]:
    """The identities that may call `method` ("/pkg.Service/Method"); empty = nobody."""
    exact = POLICY.get(method)
    if exact is not None:
        return exact
    service, _, _ = method.rpartition("/")
    return POLICY.get(service + "/*", NOBODY)


def caller_of(context: grpc.aio.ServicerContext[Any, Any]) -> tuple[str | None, str]:
    """(identity, why not): the verified certificate's one name, or None and the reason."""
    names = list(context.peer_identities() or ())  # SAN DNS names, else the CN; none without a verified certificate
    if not names:
        return None, "no client certificate"
    if len(names) != 1:
        return None, "certificate names several identities"
    return names[0].decode("ascii", "replace"), ""


def _refuse_log(method: str, context: grpc.aio.ServicerContext[Any, Any], caller: str | None, reason: str) -> None:
    GRPC_REFUSALS.labels(reason="unauthenticated" if caller is None else "permission_denied").inc()
    log.warning(
        "grpc call refused",
        extra={"caller": caller or "", "peer": context.peer(), "method": method, "reason": reason},
    )


async def _check(method: str, allowed_names: frozenset[str], context: grpc.aio.ServicerContext[Any, Any]) -> None:
    """Return if the caller may call `method`; else abort the call (raises)."""
    caller, why = caller_of(context)
    if caller is None:
        _refuse_log(method, context, None, why)
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, f"{why}: the internal API needs mTLS (ADR 0009)")
    elif caller not in allowed_names:
        _refuse_log(method, context, caller, "not allowed")
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"{caller} may not call {method}")
    elif method.startswith(AUDITED):
        log.info("admin call", extra={"caller": caller, "method": method, "peer": context.peer()})


def _guarded(behavior: Callable[..., Any], method: str, allowed_names: frozenset[str]) -> Callable[..., Any]:
    if inspect.isasyncgenfunction(behavior):

        async def stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            await _check(method, allowed_names, context)
            async for item in behavior(request, context):
                yield item

        return stream

    async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await _check(method, allowed_names, context)
        return await behavior(request, context)

    return unary


_KINDS = (
    ("unary_unary", grpc.unary_unary_rpc_method_handler),
    ("unary_stream", grpc.unary_stream_rpc_method_handler),
    ("stream_unary", grpc.stream_unary_rpc_method_handler),
    ("stream_stream", grpc.stream_stream_rpc_method_handler),
)


# The stubs' ServerInterceptor is generic; grpc's own is not subscriptable at run time.
if TYPE_CHECKING:
    _ServerInterceptorBase = grpc.aio.ServerInterceptor[Any, Any]
else:
    _ServerInterceptorBase = grpc.aio.ServerInterceptor


class AuthzInterceptor(_ServerInterceptorBase):
    """Checks POLICY before the handler runs. Interceptors see only the method and metadata, so the
    check is wrapped around the handler's behaviour, where the call's auth context is known."""

    def __init__(self) -> None:
        # method -> (handler, guarded handler): the servicers' handlers are the same object call after
        # call, so the wrapper is built once per method, not per call.
        self._guarded: dict[str, tuple[grpc.RpcMethodHandler[Any, Any], grpc.RpcMethodHandler[Any, Any]]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        allowed_names = allowed(method)
        if handler is None or ANYONE in allowed_names:
            return handler  # unknown methods stay UNIMPLEMENTED; health stays open
        cached = self._guarded.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        for attr, make in _KINDS:
            behavior = getattr(handler, attr)
            if behavior is not None:
                guarded = make(
                    _guarded(behavior, method, allowed_names),
                    request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer,
                )
                self._guarded[method] = (handler, guarded)
                return guarded
        return None  # type: ignore[return-value]  # a handler of no known kind: refused (fail closed)
