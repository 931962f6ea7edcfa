"""OpenTelemetry traces: one TracerProvider per process, an OTLP exporter only when one is configured.

The standard variables are honoured: OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES (the Resource),
OTEL_EXPORTER_OTLP_* (endpoint, headers, TLS, timeout: read by the exporter itself), OTEL_BSP_* (the
batch processor), OTEL_TRACES_SAMPLER(_ARG), OTEL_TRACES_EXPORTER=none and OTEL_SDK_DISABLED=true.

Spans are recorded only when something collects them (the OTLP exporter, or a test's in-memory
exporter): otherwise the sampler drops each span as it starts, so a hot path pays for a span id and a
context switch, not for attributes and export. Trace ids still exist then, and the JSON logs carry them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_NAME, OTELResourceDetector, Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, Decision, ParentBased, Sampler, SamplingResult
from opentelemetry.trace import Link, SpanKind
from opentelemetry.util.types import Attributes

log = logging.getLogger("mailstack.telemetry")

_provider: TracerProvider | None = None
_exporting = False  # an OTLP exporter is attached
_sinks: list[SpanProcessor] = []  # processors attached at run time (tests' in-memory exporters)


class _Sinks(SpanProcessor):
    """Forwards to the processors in _sinks, which (unlike the SDK's list) can be detached again."""

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        for sink in tuple(_sinks):
            sink.on_start(span, parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        for sink in tuple(_sinks):
            sink.on_end(span)

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return all(sink.force_flush(timeout_millis) for sink in tuple(_sinks))


class _WhileCollected(Sampler):
    """ParentBased(AlwaysOn) while a sink is attached, else drop: used when nothing is exported."""

    def __init__(self) -> None:
        self._inner = ParentBased(ALWAYS_ON)

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: trace.TraceState | None = None,
    ) -> SamplingResult:
        if not _sinks:
            return SamplingResult(Decision.DROP)
        return self._inner.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

    def get_description(self) -> str:
        return "WhileCollected{ParentBased{AlwaysOn}}"


def service_resource(service: str) -> Resource:
    """service.name = mailstack-<service>, unless OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES name it
    (the SDK reads both from the process environment)."""
    named = bool(os.environ.get("OTEL_SERVICE_NAME")) or SERVICE_NAME in OTELResourceDetector().detect().attributes
    return Resource.create({} if named else {SERVICE_NAME: f"mailstack-{service}"})


def _export_configured(env: Mapping[str, str]) -> bool:
    if env.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "none":
        return False
    return bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def setup_tracing(service: str, env: Mapping[str, str] | None = None) -> TracerProvider | None:
    """Install this process's TracerProvider (once; later calls return the first one).

    None when OTEL_SDK_DISABLED=true: the API's no-op tracer stays in place."""
    global _provider, _exporting
    if _provider is not None:
        return _provider
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):  # someone (an embedding program) installed one: join it
        provider = current
    else:
        exporting = _export_configured(env)
        # With an exporter the SDK's own sampler (OTEL_TRACES_SAMPLER, default ParentBased(AlwaysOn)) decides.
        sampler = None if exporting else _WhileCollected()
        provider = TracerProvider(resource=service_resource(service), sampler=sampler)
        if exporting:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
            _exporting = True
            endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
            log.info("exporting traces over OTLP", extra={"endpoint": endpoint})
        trace.set_tracer_provider(provider)
    provider.add_span_processor(_Sinks())
    _provider = provider
    return provider


# An unsampled parent: what runs under it records no span, and the ParentBased sampler of the process
# called (the mailstore) follows the "not sampled" flag it receives with the call.
_UNSAMPLED = trace.set_span_in_context(
    trace.NonRecordingSpan(trace.SpanContext(trace_id=1, span_id=1, is_remote=False, trace_flags=trace.TraceFlags(0)))
)


@contextmanager
def untraced() -> Iterator[None]:
    """For routine calls nobody wants a trace of (an idle worker's queue polls, lease renewals): a
    trace per call would bury the traces of the work itself."""
    token = otel_context.attach(_UNSAMPLED)
    try:
        yield
    finally:
        otel_context.detach(token)


def tracing_enabled() -> bool:
    """Whether spans are recorded somewhere (an exporter, or a test's in-memory exporter)."""
    return _exporting or bool(_sinks)


def flush(timeout_millis: int = 5000) -> None:
    """Send what the batch processor holds (at shutdown; the SDK also does this at exit)."""
    if _provider is not None:
        _provider.force_flush(timeout_millis)


@contextmanager
def recorded_spans(service: str = "test") -> Iterator[InMemorySpanExporter]:
    """For tests: every span ended in this process while inside goes to the returned exporter."""
    setup_tracing(service)
    exporter = InMemorySpanExporter()
    processor = SimpleSpanProcessor(exporter)
    _sinks.append(processor)
    try:
        yield exporter
    finally:
        _sinks.remove(processor)
        processor.shutdown()
