"""The in-process channel's own rules (ADR 0039), on a tiny service: flow control, a servicer's
unexpected exception, an unknown method, an endpoint of another event loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio
import pytest
from mailstack.services.common.local_channel import (
    DEPTH,
    LocalChannel,
    LocalEndpoint,
    local_endpoint,
    serve_locally,
    withdraw,
)

SERVICE = "test.Counter"


class Counter:
    def __init__(self) -> None:
        self.produced = 0

    async def Count(self, request: int, context: Any) -> AsyncIterator[int]:
        for i in range(request):
            self.produced += 1
            yield i

    async def Fail(self, request: int, context: Any) -> int:
        raise KeyError("a bug")


async def started(counter: Counter, address: str) -> LocalEndpoint:
    endpoint = LocalEndpoint()
    endpoint.add_registered_method_handlers(
        SERVICE,
        {
            "Count": grpc.unary_stream_rpc_method_handler(counter.Count),
            "Fail": grpc.unary_unary_rpc_method_handler(counter.Fail),
        },
    )
    await endpoint.start([])
    serve_locally(endpoint, [address])
    return endpoint


@pytest.fixture
async def served() -> AsyncIterator[tuple[Counter, LocalChannel]]:
    counter = Counter()
    endpoint = await started(counter, "unit:1")
    channel = LocalChannel("unit:1", "imap")
    yield counter, channel
    await channel.close()
    withdraw(endpoint)
    await endpoint.stop(0)


async def test_a_slow_reader_holds_the_servicer_back(served: tuple[Counter, LocalChannel]) -> None:
    counter, channel = served
    reader = aiter(channel.unary_stream(f"/{SERVICE}/Count")(1000))
    assert await anext(reader) == 0
    await asyncio.sleep(0.05)
    assert counter.produced <= DEPTH + 2  # not the 1000 a queue without bound would hold
    assert [i async for i in reader] == list(range(1, 1000))


async def test_an_unexpected_exception_is_unknown_and_an_unknown_method_unimplemented(
    served: tuple[Counter, LocalChannel],
) -> None:
    _, channel = served
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await channel.unary_unary(f"/{SERVICE}/Fail")(1)
    assert caught.value.code() == grpc.StatusCode.UNKNOWN
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await channel.unary_unary(f"/{SERVICE}/Nope")(1)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_an_endpoint_of_another_event_loop_is_not_used() -> None:
    """Tests run servers in a thread's loop; a frontend in another loop must dial gRPC instead."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def found() -> LocalEndpoint | None:
        return local_endpoint("unit:2")

    try:
        endpoint = asyncio.run_coroutine_threadsafe(started(Counter(), "unit:2"), loop).result(10)
        assert asyncio.run(found()) is None
        assert asyncio.run_coroutine_threadsafe(found(), loop).result(10) is endpoint
        withdraw(endpoint)
        assert asyncio.run_coroutine_threadsafe(found(), loop).result(10) is None
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
