"""Storage backends wrapped with a span and a latency histogram per call.

One wrapper for every kind of store (the Stalwart way: shared concerns wrap any backend), so the
backends stay free of telemetry: `instrumented(blobs, "blob")` turns each `await blobs.put(...)`
into a span "blob.put" (inside a recorded span: an RPC's) and an observation of
mailstack_storage_duration_seconds{store="blob", operation="put"}. Streaming reads (async
generators) get a span from the first to the last chunk.
Other attributes (flags such as `enforced_by_metadata`) pass through untouched.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar, cast

from mailstack.services.common.metrics import STORAGE_ERRORS, STORAGE_SECONDS
from mailstack.services.common.telemetry import tracing_enabled
from mailstack.storage.errors import StorageError, StorageUnavailable
from opentelemetry import trace

T = TypeVar("T")
tracer = trace.get_tracer("mailstack.storage")


def _in_recorded_span() -> bool:
    """Storage calls are traced as part of something (an RPC, a job): a span costs more than many a
    metadata read, and a background loop's calls on their own would each export a trace of one span."""
    return tracing_enabled() and trace.get_current_span().is_recording()


def _is_failure(err: Exception) -> bool:
    """A store that failed (down, or a bug), not an answer such as "no such mailbox" or "over quota"."""
    return isinstance(err, StorageUnavailable) or not isinstance(err, StorageError)


def _timed_call(method: Callable[..., Any], store: str, operation: str) -> Callable[..., Any]:
    name = f"{store}.{operation}"
    histogram = STORAGE_SECONDS.labels(store, operation)
    errors = STORAGE_ERRORS.labels(store, operation)

    async def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return await method(*args, **kwargs)
        except Exception as err:
            if _is_failure(err):
                errors.inc()
            raise
        finally:
            histogram.observe(time.perf_counter() - start)

    async def call(*args: Any, **kwargs: Any) -> Any:
        if not _in_recorded_span():
            return await timed(*args, **kwargs)
        with tracer.start_as_current_span(name):
            return await timed(*args, **kwargs)

    return call


def _timed_stream(method: Callable[..., AsyncIterator[Any]], store: str, operation: str) -> Callable[..., Any]:
    name = f"{store}.{operation}"
    histogram = STORAGE_SECONDS.labels(store, operation)
    errors = STORAGE_ERRORS.labels(store, operation)

    async def stream(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        # Not made current: the chunks are consumed by other code between our yields.
        span = tracer.start_span(name) if _in_recorded_span() else None
        start = time.perf_counter()
        try:
            async for item in method(*args, **kwargs):
                yield item
        except Exception as err:
            if _is_failure(err):
                errors.inc()
            raise
        finally:
            histogram.observe(time.perf_counter() - start)
            if span is not None:
                span.end()

    return stream


class _Instrumented:
    def __init__(self, backend: Any, store: str) -> None:
        self._backend = backend
        self._store = store

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._backend, name)
        if name.startswith("_") or not callable(attr):
            return attr
        if inspect.iscoroutinefunction(attr):
            wrapped = _timed_call(attr, self._store, name)
        elif inspect.isasyncgenfunction(attr):
            wrapped = _timed_stream(attr, self._store, name)
        else:
            return attr
        self.__dict__[name] = wrapped  # the next lookup finds it without __getattr__
        return wrapped

    def __repr__(self) -> str:
        return f"instrumented({self._backend!r})"


def instrumented(backend: T, store: str) -> T:
    """backend with every async method timed and traced as "<store>.<method>"."""
    return cast(T, _Instrumented(backend, store))
