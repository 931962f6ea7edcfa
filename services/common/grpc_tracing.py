# mypy: disable-error-code="no-untyped-call"
# (opentelemetry-instrumentation-grpc has no type hints)
"""Spans for the internal gRPC API, from OpenTelemetry's own gRPC instrumentation.

Clients get a CLIENT span per call (so the time between a frontend and the mailstore, network and
queueing included, shows in the trace) and send its context in the call's metadata (`traceparent`,
`tracestate`, `baggage`: OTEL_PROPAGATORS decides); the mailstore runs each RPC inside a SERVER span,
the client span's child, so the spans of the core (blob.put, metadata.deliver, events.publish) join
the frontend's trace. Only mailstack's own services are traced (not health checks or reflection).
Span names follow the instrumentation: "/mailstack.v1.Mailstore/Deliver".
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc.aio
from opentelemetry import propagate, trace
from opentelemetry.instrumentation.grpc import aio_client_interceptors, filters
from opentelemetry.instrumentation.grpc._aio_server import (
    OpenTelemetryAioServerInterceptor,
    _OpenTelemetryAioServicerContext,
)
from opentelemetry.instrumentation.grpc.version import __version__

TRACED_SERVICES = "mailstack."  # the package of every service in proto/mailstack/v1
T = TypeVar("T")


def _ours() -> Any:
    return filters.service_prefix(TRACED_SERVICES)


class ServerTraceInterceptor(OpenTelemetryAioServerInterceptor):
    """The instrumentation's server interceptor, which expects every response-streaming handler to
    be an async generator; ours also stream with `await context.write(...)` from a coroutine
    (FetchBody, FetchBodies: no per-message generator step), which it cannot iterate. Those get the
    same span here, around the coroutine; the rest is the instrumentation's own."""

    def _intercept_aio_server_stream(self, behavior: Callable[..., Any], handler_call_details: Any) -> Any:
        if inspect.isasyncgenfunction(behavior):
            return super()._intercept_aio_server_stream(behavior, handler_call_details)

        async def written(request: Any, context: Any) -> Any:
            with (
                self._set_remote_context(context),
                self._start_span(handler_call_details, context, set_status_on_exception=False) as span,
            ):
                try:
                    return await behavior(request, _OpenTelemetryAioServicerContext(context, span))
                except Exception as error:
                    if type(error) is not Exception:  # a bare Exception is an abort, recorded by the context
                        span.record_exception(error)
                    raise

        return written


def client_trace_interceptors() -> list[Any]:
    """A CLIENT span per call of mailstack's services, its context sent in the call's metadata."""
    return list(aio_client_interceptors(filter_=_ours()))


def _tracer() -> trace.Tracer:
    return trace.get_tracer(
        "opentelemetry.instrumentation.grpc", __version__, schema_url="https://opentelemetry.io/schemas/1.11.0"
    )


def server_interceptors() -> list[grpc.aio.ServerInterceptor[Any, Any]]:
    """For the mailstore's server: tracing only while spans are collected (set up before it starts)."""
    from mailstack.services.common import telemetry

    if not telemetry.tracing_enabled():
        return []
    return [ServerTraceInterceptor(_tracer(), filter_=_ours())]


async def client_span(method: str, call: Callable[[list[tuple[str, str]]], Awaitable[T]]) -> T:
    """An in-process call (ADR 0039) inside the CLIENT span the gRPC client interceptor would make:
    `call` gets the metadata that carries the span's context to the mailstore's SERVER span."""
    service, _, name = method.lstrip("/").partition("/")
    attributes: dict[str, str | int] = {
        "rpc.system": "grpc", "rpc.grpc.status_code": 0, "rpc.method": name, "rpc.service": service
    }  # fmt: skip
    with _tracer().start_as_current_span(
        method, kind=trace.SpanKind.CLIENT, attributes=attributes, set_status_on_exception=False
    ) as span:
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        try:
            return await call(list(carrier.items()))
        except grpc.aio.AioRpcError as err:
            span.set_attribute("rpc.grpc.status_code", err.code().value[0])
            span.set_status(trace.Status(trace.StatusCode.ERROR, f"{err.code()}: {err.details()}"))
            raise
