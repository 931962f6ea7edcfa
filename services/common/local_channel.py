"""The mailstore called in-process (ADR 0039): a frontend's channel, without gRPC, when the mailstore
runs in the same process (`mailstack serve` with no names, the embedded default).

LocalChannel offers what the generated stubs use of a grpc.aio channel (the four multicallables,
get_state, close), so every caller is the same code on both transports. A call runs the mailstore's
own servicer method in a task of its own, behind the same interceptors as its gRPC server (the
authorization table of services/mailstore/authz.py, tracing), with a small ServicerContext: an abort
becomes the grpc.aio.AioRpcError a gRPC caller would get (code, details, the ErrorDetail trailer), a
timeout DEADLINE_EXCEEDED, a stopped mailstore UNAVAILABLE. The caller is the name in its certificate,
as over mTLS.

Messages are passed as they are, not serialized: neither side may change a message once it is sent
(servicers build each response anew, callers each request; ADR 0039 lists what was checked).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, cast

import grpc
import grpc.aio
from mailstack.services.common import internal_ca
from mailstack.services.common.grpc_client import Identity, open_channel

if TYPE_CHECKING:
    from mailstack.services.common.config import Settings

log = logging.getLogger("mailstack.grpc.local")

PEER = "unix:in-process"  # what context.peer() says (a gRPC peer form: logs and spans parse it)
TRACED = "/mailstack."  # the services gRPC's tracing covers (grpc_tracing.TRACED_SERVICES)
DEPTH = 4  # streamed responses made ahead of the reader (gRPC's flow control, counted in messages)

Sink = Callable[[Any], Awaitable[None]]
Behavior = Callable[[Any, Any], Any]


class Metadatum(NamedTuple):
    key: str
    value: str | bytes


class _Aborted(grpc.aio.AbortError):
    """context.abort in-process; a subclass of grpc.aio's, so the servicers' wrappers let it through."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code, self.details = code, details


def rpc_error(
    code: grpc.StatusCode, details: str, trailing: Sequence[tuple[str, str | bytes]] = ()
) -> grpc.aio.AioRpcError:
    """The error a grpc.aio caller gets for this status (error_detail() reads the trailer as usual)."""
    return grpc.aio.AioRpcError(
        code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailing), details=details, debug_error_string="in-process call"
    )


class LocalContext:
    """The servicer's side of one in-process call: what servicers, authz.py and tracing use."""

    def __init__(self, caller: str, metadata: Sequence[tuple[str, str | bytes]], sink: Sink | None) -> None:
        self._identities = [caller.encode()] if caller else []
        self._metadata = tuple(Metadatum(k, v) for k, v in metadata)
        self._sink = sink
        self.trailing: tuple[tuple[str, str | bytes], ...] = ()

    def peer(self) -> str:
        return PEER

    def peer_identities(self) -> list[bytes]:
        return self._identities

    def invocation_metadata(self) -> tuple[Metadatum, ...]:
        return self._metadata

    def set_trailing_metadata(self, metadata: Iterable[tuple[str, str | bytes]]) -> None:
        self.trailing = tuple(metadata)

    async def abort(
        self, code: grpc.StatusCode, details: str = "", trailing_metadata: Iterable[tuple[str, str | bytes]] = ()
    ) -> None:
        if trailing_metadata:
            self.trailing = tuple(trailing_metadata)
        raise _Aborted(code, details)

    async def write(self, message: Any) -> None:
        """A streamed response (FetchBody, FetchBodies): waits while the reader is DEPTH behind."""
        if self._sink is None:
            raise RuntimeError("write on a call that streams no responses")
        await self._sink(message)


class _CallDetails(grpc.HandlerCallDetails):
    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata = ()


async def _intercepted(method: str, handler: Any, interceptors: Sequence[Any]) -> Behavior | None:
    """The behavior the gRPC server would run for `method` behind `interceptors` (the first outermost)."""

    async def innermost(_details: grpc.HandlerCallDetails) -> Any:
        return handler

    continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]] = innermost
    for interceptor in reversed(interceptors):
        continuation = functools.partial(interceptor.intercept_service, continuation)
    final = await continuation(_CallDetails(method))
    if final is None:
        return None
    for kind in ("unary_unary", "unary_stream", "stream_unary", "stream_stream"):
        behavior = getattr(final, kind)
        if behavior is not None:
            return cast(Behavior, behavior)
    return None


class LocalEndpoint:
    """The mailstore's servicers for callers in this process. The generated add_*_to_server functions
    register on it as on a grpc.aio server; start() puts each method behind the server's interceptors."""

    def __init__(self) -> None:
        self._handlers: dict[str, Any] = {}
        self._behaviors: dict[str, Behavior] = {}
        self._calls: set[asyncio.Task[Any]] = set()
        self._stopped: set[asyncio.Task[Any]] = set()  # calls cancelled by stop(): UNAVAILABLE, not CANCELLED
        self.loop: asyncio.AbstractEventLoop | None = None
        self.serving = False

    def add_generic_rpc_handlers(self, handlers: Sequence[Any]) -> None:
        """The generated code registers each service twice; the per-method table below is enough."""

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        for name, handler in handlers.items():
            self._handlers[f"/{service}/{name}"] = handler

    async def start(self, interceptors: Sequence[Any]) -> None:
        for method, handler in self._handlers.items():
            behavior = await _intercepted(method, handler, interceptors)
            if behavior is not None:  # refused by an interceptor (fail closed): UNIMPLEMENTED, as over gRPC
                self._behaviors[method] = behavior
        self.loop = asyncio.get_running_loop()
        self.serving = True

    async def stop(self, grace: float | None) -> None:
        """No new calls; running ones get `grace` seconds, then end UNAVAILABLE (as the server's stop)."""
        self.serving = False
        calls = list(self._calls)
        if calls and grace:
            _, pending = await asyncio.wait(calls, timeout=grace)
            calls = list(pending)
        for task in calls:
            self._stopped.add(task)
            task.cancel()
        if calls:
            await asyncio.wait(calls)

    async def call(
        self, method: str, caller: str, request: Any, seconds: float | None, metadata: Any, sink: Sink | None
    ) -> Any:
        """Run one call in the current task (its own, made by LocalChannel): the response, or None
        when it streams to `sink`; errors as a grpc.aio caller sees them."""
        behavior = self._behaviors.get(method) if self.serving else None
        if behavior is None:
            if not self.serving:
                raise rpc_error(grpc.StatusCode.UNAVAILABLE, "the mailstore of this process is not serving")
            raise rpc_error(grpc.StatusCode.UNIMPLEMENTED, f"Method not found: {method}")
        task = asyncio.current_task()
        assert task is not None
        context = LocalContext(caller, metadata or (), sink)
        self._calls.add(task)
        try:
            async with asyncio.timeout(seconds) as deadline:
                return await _run(behavior, request, context, sink)
        except _Aborted as aborted:
            raise rpc_error(aborted.code, aborted.details, context.trailing) from None
        except TimeoutError:
            if deadline.expired():
                raise rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded") from None
            raise
        except asyncio.CancelledError:
            if task in self._stopped:
                raise rpc_error(grpc.StatusCode.UNAVAILABLE, "the mailstore of this process stopped") from None
            raise
        finally:
            self._calls.discard(task)
            self._stopped.discard(task)


async def _run(behavior: Behavior, request: Any, context: LocalContext, sink: Sink | None) -> Any:
    try:
        result = behavior(_requests(request), context)
        if inspect.isasyncgen(result):
            assert sink is not None
            async with contextlib.aclosing(result) as items:  # its finally (Watch's unsubscribe) now, not at GC
                async for item in items:
                    await sink(item)
            return None
        return await result
    except (_Aborted, asyncio.CancelledError):
        raise
    except Exception as exc:  # what grpc.aio answers for an exception a servicer let out
        log.exception("in-process call failed")
        raise rpc_error(grpc.StatusCode.UNKNOWN, f"Unexpected {type(exc)}: {exc}") from None


def _requests(request: Any) -> Any:
    """A request message as it is; a client stream as the async iterator the servicer reads."""
    if hasattr(request, "__aiter__"):
        return request
    if isinstance(request, Iterable) and not hasattr(request, "DESCRIPTOR"):
        return _async_iter(request)
    return request


async def _async_iter(items: Iterable[Any]) -> AsyncIterator[Any]:
    for item in items:
        yield item


def _retrieve(task: asyncio.Task[Any]) -> None:
    """A call nobody awaited (cancelled before reading) must not log "exception never retrieved"."""
    if not task.cancelled():
        task.exception()


_END = object()


class LocalStreamCall:
    """A call with streamed responses: iterate it (`async for`), or cancel() it, as a grpc.aio call."""

    def __init__(self, run: Callable[[Sink], Awaitable[Any]]) -> None:
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._credits = asyncio.Semaphore(DEPTH)
        self._task = asyncio.ensure_future(self._produce(run))
        self._task.add_done_callback(_retrieve)

    async def _put(self, item: Any) -> None:
        await self._credits.acquire()
        self._queue.put_nowait(item)

    async def _produce(self, run: Callable[[Sink], Awaitable[Any]]) -> None:
        try:
            await run(self._put)
        finally:
            self._queue.put_nowait(_END)

    def cancel(self) -> bool:
        return self._task.cancel()

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._read()

    async def _read(self) -> AsyncIterator[Any]:
        try:
            while (item := await self._queue.get()) is not _END:
                self._credits.release()
                yield item
            await self._task  # its error, or CancelledError once cancelled (as grpc.aio)
        finally:
            self._task.cancel()  # the reader left early: the servicer stops too


class LocalChannel:
    """A channel to the mailstore of this process, for the generated stubs (see the module doc)."""

    def __init__(self, address: str, caller: str, traced: bool = False) -> None:
        self._address = address
        self._caller = caller
        self._traced = traced  # a CLIENT span per call, as gRPC's client interceptors make (spans collected)
        self._calls: set[asyncio.Future[Any]] = set()
        self._closed = False

    def get_state(self) -> grpc.ChannelConnectivity:
        endpoint = local_endpoint(self._address)
        if self._closed:
            return grpc.ChannelConnectivity.SHUTDOWN
        return grpc.ChannelConnectivity.READY if endpoint is not None else grpc.ChannelConnectivity.TRANSIENT_FAILURE

    async def close(self, grace: float | None = None) -> None:
        """Calls still running end CANCELLED, as on a closed grpc.aio channel."""
        self._closed = True
        for call in list(self._calls):
            call.cancel()

    def unary_unary(self, method: str, *_codecs: Any, **_options: Any) -> Callable[..., asyncio.Task[Any]]:
        return functools.partial(self._unary, method)

    stream_unary = unary_unary

    def unary_stream(self, method: str, *_codecs: Any, **_options: Any) -> Callable[..., LocalStreamCall]:
        return functools.partial(self._stream, method)

    stream_stream = unary_stream

    async def _call(self, method: str, request: Any, seconds: float | None, metadata: Any, sink: Sink | None) -> Any:
        endpoint = _ENDPOINTS.get(self._address)
        if self._closed:
            raise rpc_error(grpc.StatusCode.CANCELLED, "the channel is closed")
        if endpoint is None:
            raise rpc_error(grpc.StatusCode.UNAVAILABLE, "the mailstore of this process is not serving")
        if not self._traced or not method.startswith(TRACED):
            return await endpoint.call(method, self._caller, request, seconds, metadata, sink)
        from mailstack.services.common.grpc_tracing import client_span  # only with spans collected

        def traced(carried: list[tuple[str, str]]) -> Awaitable[Any]:
            return endpoint.call(method, self._caller, request, seconds, [*(metadata or ()), *carried], sink)

        return await client_span(method, traced)

    def _track(self, task: asyncio.Task[Any]) -> None:
        self._calls.add(task)
        task.add_done_callback(self._calls.discard)
        task.add_done_callback(_retrieve)

    def _unary(
        self, method: str, request: Any, *, timeout: float | None = None, metadata: Any = None, **_options: Any
    ) -> asyncio.Task[Any]:
        """An awaitable call (a task: cancel() works as on a grpc.aio call)."""
        task = asyncio.ensure_future(self._call(method, request, timeout, metadata, None))
        self._track(task)
        return task

    def _stream(
        self, method: str, request: Any, *, timeout: float | None = None, metadata: Any = None, **_options: Any
    ) -> LocalStreamCall:
        call = LocalStreamCall(lambda sink: self._call(method, request, timeout, metadata, sink))
        self._track(call._task)
        return call


# Endpoints by the addresses callers dial (the bound one, and its loopback form for 0.0.0.0).
_ENDPOINTS: dict[str, LocalEndpoint] = {}


def serve_locally(endpoint: LocalEndpoint, addresses: Iterable[str]) -> None:
    for address in addresses:
        _ENDPOINTS[address] = endpoint


def withdraw(endpoint: LocalEndpoint) -> None:
    for address in [a for a, e in _ENDPOINTS.items() if e is endpoint]:
        del _ENDPOINTS[address]


def local_endpoint(address: str) -> LocalEndpoint | None:
    """The mailstore of this process serving `address` on this event loop, if there is one."""
    endpoint = _ENDPOINTS.get(address)
    if endpoint is None or not endpoint.serving:
        return None
    with contextlib.suppress(RuntimeError):
        if endpoint.loop is asyncio.get_running_loop():
            return endpoint
    return None


def mailstore_channel(settings: Settings, identity: Identity) -> grpc.aio.Channel:
    """A frontend's channel to the mailstore: in-process when it runs here and the transport is
    "auto" (ADR 0039), else gRPC with mTLS."""
    if settings.mailstore_transport == "auto" and local_endpoint(settings.mailstore_addr) is not None:
        caller = internal_ca.certificate_name(identity.cert)  # what mTLS would prove to the mailstore
        log.info("calling the mailstore in-process", extra={"identity": caller})
        from mailstack.services.common import telemetry  # as grpc_client.client_interceptors

        traced = telemetry.tracing_enabled()  # decided at open, as for a gRPC channel's interceptors
        return cast(grpc.aio.Channel, LocalChannel(settings.mailstore_addr, caller, traced))
    return open_channel(settings.mailstore_addr, identity)
