"""The Outbound stub typed for grpc.aio (mypy-protobuf's overload picks the sync one)."""

from __future__ import annotations

from typing import cast

import grpc.aio
from mailstack.v1 import send_pb2_grpc as spbg


def outbound_stub(channel: grpc.aio.Channel) -> spbg.OutboundAsyncStub:
    return cast("spbg.OutboundAsyncStub", spbg.OutboundStub(channel))
