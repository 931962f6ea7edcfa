"""The Outbound stub for a grpc.aio channel (mypy-protobuf's overload types it as the async stub)."""

from __future__ import annotations

import grpc.aio
from mailstack.v1 import send_pb2_grpc as spbg


def outbound_stub(channel: grpc.aio.Channel) -> spbg.OutboundAsyncStub:
    return spbg.OutboundStub(channel)
