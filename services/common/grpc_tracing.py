"""Trace context over gRPC: W3C traceparent in the call metadata, a server span per RPC.

Clients inject the current context (`traceparent`, `tracestate`, `baggage`: OTEL_PROPAGATORS decides)
into each call's metadata; the mailstore extracts it and runs the RPC inside a SERVER span named
after the method, so the spans of the core (blob.put, metadata.deliver, events.publish) join the
frontend's trace. Only mailstack's own services are traced (not health checks or reflection).
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

# The stubs' interceptor classes are generic; grpc's own are not subscriptable at run time.
if TYPE_CHECKING:
    _UnaryUnaryBase = grpc.aio.UnaryUnaryClientInterceptor[Any, Any]
    _UnaryStreamBase = grpc.aio.UnaryStreamClientInterceptor[Any, Any]
    _StreamUnaryBase = grpc.aio.StreamUnaryClientInterceptor[Any, Any]
    _StreamStreamBase = grpc.aio.StreamStreamClientInterceptor[Any, Any]
    _ServerInterceptorBase = grpc.aio.ServerInterceptor[Any, Any]
else:
    _UnaryUnaryBase = grpc.aio.UnaryUnaryClientInterceptor
    _UnaryStreamBase = grpc.aio.UnaryStreamClientInterceptor
    _StreamUnaryBase = grpc.aio.StreamUnaryClientInterceptor
    _StreamStreamBase = grpc.aio.StreamStreamClientInterceptor
    _ServerInterceptorBase = grpc.aio.ServerInterceptor

tracer = trace.get_tracer("mailstack.grpc")
TRACED_PREFIX = "/mailstack."


def _with_trace_context(details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
    carrier: dict[str, str] = {}
    if trace.get_current_span().get_span_context().is_valid:
        propagate.inject(carrier)
    if not carrier:
        return details
    metadata = grpc.aio.Metadata(*(details.metadata or ()))
    for key, value in carrier.items():
        metadata[key] = value
    # The stubs declare ClientCallDetails as a plain class; at run time it is a namedtuple.
    replaced: grpc.aio.ClientCallDetails = details._replace(metadata=metadata)  # type: ignore[attr-defined]
    return replaced


class _UnaryUnary(_UnaryUnaryBase):
    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await continuation(_with_trace_context(client_call_details), request)


class _UnaryStream(_UnaryStreamBase):
    async def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await continuation(_with_trace_context(client_call_details), request)


class _StreamUnary(_StreamUnaryBase):
    async def intercept_stream_unary(self, continuation: Any, client_call_details: Any, request_iterator: Any) -> Any:
        return await continuation(_with_trace_context(client_call_details), request_iterator)


class _StreamStream(_StreamStreamBase):
    async def intercept_stream_stream(self, continuation: Any, client_call_details: Any, request_iterator: Any) -> Any:
        return await continuation(_with_trace_context(client_call_details), request_iterator)


def client_trace_interceptors() -> list[Any]:
    """Interceptors adding the caller's trace context to every call's metadata (no span of their own).

    One object per call kind: grpc.aio files an interceptor under the first kind it implements only."""
    return [_UnaryUnary(), _UnaryStream(), _StreamUnary(), _StreamStream()]


def _span_name(method: str) -> str:
    # "/mailstack.v1.Mailstore/Deliver" -> "mailstack.v1.Mailstore/Deliver" (the OTel RPC convention)
    return method.lstrip("/")


def _rpc_attributes(method: str) -> dict[str, str]:
    service, _, name = method.lstrip("/").rpartition("/")
    return {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}


def _server_span(name: str, attributes: dict[str, str], context: grpc.aio.ServicerContext[Any, Any]) -> Any:
    """A SERVER span whose parent is the caller's context from the metadata."""
    carrier = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
    return tracer.start_as_current_span(
        name, context=propagate.extract(carrier), kind=SpanKind.SERVER, attributes=attributes
    )


def _failed(span: trace.Span, err: BaseException, context: grpc.aio.ServicerContext[Any, Any]) -> None:
    if isinstance(err, grpc.aio.AbortError):
        # abort() ends the RPC with a status the servicer chose (NOT_FOUND, OVER_QUOTA...): an answer.
        code = context.code()
        if code is not None:
            span.set_attribute("rpc.grpc.status_code", code.value[0] if isinstance(code, grpc.StatusCode) else code)
        return
    span.set_status(Status(StatusCode.ERROR, type(err).__name__))


def _traced(behavior: Callable[..., Any], method: str) -> Callable[..., Any]:
    """The handler inside a SERVER span whose parent is the caller's context from the metadata."""
    name, attributes = _span_name(method), _rpc_attributes(method)

    def start(context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        return _server_span(name, attributes, context)

    if inspect.isasyncgenfunction(behavior):

        async def stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            with start(context) as span:
                try:
                    async for item in behavior(request, context):
                        yield item
                except Exception as err:
                    _failed(span, err, context)
                    raise

        return stream

    async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        with start(context) as span:
            try:
                return await behavior(request, context)
            except Exception as err:
                _failed(span, err, context)
                raise

    return unary


class ServerTraceInterceptor(_ServerInterceptorBase):
    """A SERVER span per call of mailstack's services, continuing the caller's trace."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not method.startswith(TRACED_PREFIX):
            return handler
        kinds = (
            ("unary_unary", grpc.unary_unary_rpc_method_handler),
            ("unary_stream", grpc.unary_stream_rpc_method_handler),
            ("stream_unary", grpc.stream_unary_rpc_method_handler),
            ("stream_stream", grpc.stream_stream_rpc_method_handler),
        )
        for attr, make in kinds:
            behavior = getattr(handler, attr)
            if behavior is not None:
                return make(
                    _traced(behavior, method),
                    request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer,
                )
        return handler


def server_interceptors() -> list[grpc.aio.ServerInterceptor[Any, Any]]:
    """For the mailstore's server: tracing only while spans are collected (set up before it starts)."""
    from mailstack.services.common import telemetry

    return [ServerTraceInterceptor()] if telemetry.tracing_enabled() else []
