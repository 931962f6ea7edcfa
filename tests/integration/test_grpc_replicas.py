"""Frontends over several mailstore replicas (issue 20, ADR 0035): the client channel spreads calls
round robin over a comma list or a dns:/// name, sends a read again to another replica when the one
it reached died under it, and surfaces a write's failure (UNAVAILABLE) instead of repeating it.

The replicas here are real grpc.aio servers with the internal CA's mTLS, each serving the Mailstore
service with a counting servicer, so the test sees which replica answered each call."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from mailstack.services.common.grpc_client import (
    IDEMPOTENT_METHODS,
    channel_target,
    check_address,
    identity_for,
    mailstore_stub,
    open_channel,
)
from mailstack.v1 import mailstore_pb2 as pb

from tests.fixtures.mailstore import settings_for


class Replica:
    """A mailstore replica answering two RPCs and counting calls; `hang` makes the next calls wait
    until it is stopped."""

    def __init__(self, name: str, arrivals: asyncio.Queue[str]) -> None:
        self.name = name
        self.calls = 0
        self.hang = False
        self.entered = asyncio.Event()
        self.arrivals = arrivals  # the names of the replicas that hold a hanging call, one per call

    async def _answer(self) -> None:
        self.calls += 1
        if self.hang:
            self.entered.set()
            self.arrivals.put_nowait(self.name)
            await asyncio.sleep(3600)  # until the server is stopped under the call

    async def list_mailboxes(self, request: pb.ListMailboxesRequest, context: object) -> pb.ListMailboxesResponse:
        await self._answer()
        return pb.ListMailboxesResponse(mailboxes=[pb.Mailbox(name=self.name)])

    async def create_mailbox(self, request: pb.CreateMailboxRequest, context: object) -> pb.Mailbox:
        await self._answer()
        return pb.Mailbox(name=request.name)

    def handler(self) -> grpc.GenericRpcHandler[Any, Any]:
        """The Mailstore service with these two methods (the others: UNIMPLEMENTED)."""
        methods = {
            "ListMailboxes": grpc.unary_unary_rpc_method_handler(
                self.list_mailboxes, pb.ListMailboxesRequest.FromString, pb.ListMailboxesResponse.SerializeToString
            ),
            "CreateMailbox": grpc.unary_unary_rpc_method_handler(
                self.create_mailbox, pb.CreateMailboxRequest.FromString, pb.Mailbox.SerializeToString
            ),
        }
        return grpc.method_handlers_generic_handler("mailstack.v1.Mailstore", methods)


@asynccontextmanager
async def replicas(tmp_path: Path, count: int) -> AsyncIterator[list[tuple[Replica, grpc.aio.Server, int]]]:
    settings = settings_for(tmp_path)
    credentials = identity_for(settings, "mailstore").server_credentials()
    started = []
    arrivals: asyncio.Queue[str] = asyncio.Queue()
    try:
        for index in range(count):
            servicer = Replica(f"r{index}", arrivals)
            server = grpc.aio.server()
            server.add_generic_rpc_handlers((servicer.handler(),))
            port = server.add_secure_port("127.0.0.1:0", credentials)
            await server.start()
            started.append((servicer, server, port))
        yield started
    finally:
        await asyncio.gather(*(server.stop(None) for _, server, _ in started))


def test_addresses_forms_and_refusals() -> None:
    assert channel_target("127.0.0.1:5") == ("127.0.0.1:5", False)
    assert channel_target("unix:/run/m.sock") == ("unix:/run/m.sock", False)
    assert channel_target("dns:///mailstore.mail.svc:50051") == ("dns:///mailstore.mail.svc:50051", True)
    assert channel_target("127.0.0.1:5,127.0.0.2:6") == ("ipv4:127.0.0.1:5,127.0.0.2:6", True)
    assert channel_target("[::1]:5,[::1]:6") == ("ipv6:[::1]:5,[::1]:6", True)
    assert channel_target("localhost:5,127.0.0.1:6")[1]  # names resolved once, at open
    for bad in ("", " a:1", "nohost", "a:1,", "a:1,b", "a:0", "a:99999", "a:1, b:2", "a:x"):
        with pytest.raises(ValueError, match="mailstore address"):
            check_address(bad)
    with pytest.raises(ValueError, match="mix IPv4 and IPv6"):
        channel_target("127.0.0.1:5,[::1]:6")
    with pytest.raises(ValueError, match="mailstore address"):
        channel_target("no-such-host.invalid:5,127.0.0.1:6")


def test_every_retried_method_is_a_read_that_exists() -> None:
    """The retry list names real RPCs, and none of them writes (a write sent twice could store twice)."""
    writes = {"Append", "Deliver", "StoreFlags", "Copy", "Move", "Expunge", "CreateMailbox", "DeleteMailbox",
              "RenameMailbox", "Subscribe", "ClaimRecent", "AcquireLease", "ReleaseLease", "Submit", "Send",
              "ReportOutbound", "LeaseOutbound", "CreateAccount", "SetPassword", "DeleteAccount", "SetQuota",
              "AddDomain", "DeleteDomain", "AddAlias", "DeleteAlias", "RecomputeQuota", "CheckIntegrity",
              "CreateToken", "RevokeToken", "Watch"}  # fmt: skip
    from mailstack.v1 import mailstore_pb2, send_pb2

    services = {**mailstore_pb2.DESCRIPTOR.services_by_name, **send_pb2.DESCRIPTOR.services_by_name}
    for service, methods in IDEMPOTENT_METHODS.items():
        descriptor = services[service.rsplit(".", 1)[1]]
        for method in methods:
            assert method in descriptor.methods_by_name, f"{service}/{method}"
            assert method not in writes


async def test_calls_spread_over_a_comma_list_and_reads_survive_a_replica_dying(tmp_path: Path) -> None:
    async with replicas(tmp_path, 3) as started:
        address = ",".join(f"127.0.0.1:{port}" for _, _, port in started)
        channel = open_channel(address, identity_for(settings_for(tmp_path), "imap"))
        stub = mailstore_stub(channel)
        try:
            answered = [
                (await stub.ListMailboxes(pb.ListMailboxesRequest(), timeout=5)).mailboxes[0].name for _ in range(30)
            ]
            assert {s.name for s, _, _ in started} == set(answered), answered  # every replica got calls
            assert all(s.calls >= 5 for s, _, _ in started), [s.calls for s, _, _ in started]

            # Replica 0 dies while it holds reads: each one is answered by another replica instead.
            victim, server, _ = started[0]
            victim.hang = True
            reads = [asyncio.ensure_future(stub.ListMailboxes(pb.ListMailboxesRequest(), timeout=10)) for _ in range(6)]
            await asyncio.wait_for(victim.entered.wait(), 5)
            await server.stop(None)
            replies = await asyncio.gather(*reads)
            assert all(r.mailboxes[0].name != "r0" for r in replies)
            # Afterwards every call goes to the living ones, none fails.
            for _ in range(10):
                reply = await stub.ListMailboxes(pb.ListMailboxesRequest(), timeout=5)
                assert reply.mailboxes[0].name in ("r1", "r2")
        finally:
            await channel.close(None)


async def test_a_write_on_a_dying_replica_fails_as_unavailable_and_is_not_sent_again(tmp_path: Path) -> None:
    async with replicas(tmp_path, 2) as started:
        address = ",".join(f"127.0.0.1:{port}" for _, _, port in started)
        channel = open_channel(address, identity_for(settings_for(tmp_path), "imap"))
        stub = mailstore_stub(channel)
        try:
            while not all(s.calls for s, _, _ in started):  # both connected: round robin uses only READY ones
                await stub.ListMailboxes(pb.ListMailboxesRequest(), timeout=5)
            for servicer, _, _ in started:
                servicer.hang = True
            calls_before = sum(s.calls for s, _, _ in started)
            writes = [
                asyncio.ensure_future(stub.CreateMailbox(pb.CreateMailboxRequest(name=f"m{i}"), timeout=10))
                for i in range(4)
            ]
            await asyncio.wait_for(asyncio.gather(*(s.entered.wait() for s, _, _ in started)), 5)
            for _ in range(4):  # every write is held by a replica
                await asyncio.wait_for(started[0][0].arrivals.get(), 5)
            await asyncio.gather(*(server.stop(None) for _, server, _ in started))
            results = await asyncio.gather(*writes, return_exceptions=True)
            assert all(isinstance(r, grpc.aio.AioRpcError) for r in results), results
            assert {r.code() for r in results if isinstance(r, grpc.aio.AioRpcError)} == {grpc.StatusCode.UNAVAILABLE}
            assert sum(s.calls for s, _, _ in started) == calls_before + 4  # each write reached one replica, once
        finally:
            await channel.close(None)


async def test_dns_name_balances_over_what_it_resolves_to(tmp_path: Path) -> None:
    """localhost resolves to 127.0.0.1 (and often ::1, where nothing listens): round robin uses the
    addresses that answer."""
    async with replicas(tmp_path, 1) as started:
        channel = open_channel(f"dns:///localhost:{started[0][2]}", identity_for(settings_for(tmp_path), "imap"))
        try:
            for _ in range(5):
                reply = await mailstore_stub(channel).ListMailboxes(pb.ListMailboxesRequest(), timeout=5)
                assert reply.mailboxes[0].name == "r0"
        finally:
            await channel.close(None)
