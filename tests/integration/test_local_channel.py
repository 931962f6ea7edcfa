"""The in-process transport (ADR 0039) against a real mailstore: a frontend in the mailstore's process
gets the same answers, errors, refusals and stream behaviour as over gRPC, from the same code."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import cast

import grpc
import grpc.aio
import pytest
from mailstack.services.common.grpc_client import (
    collect_bodies,
    error_detail,
    identity_for,
    mailstore_stub,
    open_channel,
)
from mailstack.services.common.local_channel import LocalChannel, mailstore_channel
from mailstack.services.mailstore.server import MailstoreServer
from mailstack.v1 import mailstore_pb2 as pb
from mailstack.v1 import mailstore_pb2_grpc as pbg

from tests.fixtures.mailstore import Client, running_mailstore, settings_for

ACCOUNT = "alice@example.test"
PASSWORD = "secret-Pass1"


def mail(subject: str, size: int = 0) -> bytes:
    return f"From: b@remote.test\r\nSubject: {subject}\r\n\r\n".encode() + b"x" * size + b"\r\n"


@pytest.fixture
async def mailstore(tmp_path: Path) -> AsyncIterator[tuple[MailstoreServer, Client]]:
    settings = settings_for(tmp_path, password_scrypt_log_n=10, mailstore_transport="auto")
    async with running_mailstore(settings) as (server, client):
        await client.admin.CreateAccount(pb.CreateAccountRequest(name=ACCOUNT, password=PASSWORD))
        yield server, client


def local(server: MailstoreServer, caller: str) -> grpc.aio.Channel:
    settings = server.settings.replace(mailstore_addr=server.address, mailstore_transport="auto")
    channel = mailstore_channel(settings, identity_for(settings, caller))
    assert isinstance(channel, LocalChannel)
    return channel


def remote(server: MailstoreServer, caller: str) -> grpc.aio.Channel:
    return open_channel(server.address, identity_for(server.settings, caller))


async def both(server: MailstoreServer, caller: str) -> list[grpc.aio.Channel]:
    return [local(server, caller), remote(server, caller)]


async def append(channel: grpc.aio.Channel, data: bytes, mailbox: str = "INBOX") -> pb.AppendResponse:
    async def requests() -> AsyncIterator[pb.AppendRequest]:
        yield pb.AppendRequest(header=pb.AppendHeader(account=ACCOUNT, mailbox=mailbox, size=len(data)))
        for i in range(0, len(data), 1000):
            yield pb.AppendRequest(chunk=data[i : i + 1000])

    return await mailstore_stub(channel).Append(requests(), timeout=10)


async def failure(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    return caught.value


def status(err: grpc.aio.AioRpcError) -> tuple[grpc.StatusCode, str | None, pb.ErrorDetail | None]:
    return err.code(), err.details(), error_detail(err)


async def test_the_transport_setting_chooses_and_grpc_is_kept_for_other_addresses(
    mailstore: tuple[MailstoreServer, Client],
) -> None:
    server, _ = mailstore
    identity = identity_for(server.settings, "imap")
    forced = server.settings.replace(mailstore_addr=server.address, mailstore_transport="grpc")
    elsewhere = server.settings.replace(mailstore_addr="127.0.0.1:1", mailstore_transport="auto")
    for settings in (forced, elsewhere):
        channel = mailstore_channel(settings, identity)
        assert not isinstance(channel, LocalChannel)
        await channel.close(None)
    channel = local(server, "imap")
    assert channel.get_state() == grpc.ChannelConnectivity.READY
    await channel.close(None)


async def test_unary_answers_and_errors_match_grpc(mailstore: tuple[MailstoreServer, Client]) -> None:
    server, _ = mailstore
    answers, errors = [], []
    for channel in await both(server, "imap"):
        stub = mailstore_stub(channel)
        await append(channel, mail("one"))
        answers.append(await stub.GetMailboxStatus(pb.MailboxStatusRequest(account=ACCOUNT, name="INBOX")))
        missing = pb.MailboxStatusRequest(account=ACCOUNT, name="Nope")
        errors.append(status(await failure(stub.GetMailboxStatus(missing))))
        await channel.close(None)
    assert answers[0].messages == 1 and answers[1].messages == 2  # the local call saw its own append
    assert errors[0] == errors[1]
    code, _, detail = errors[0]
    assert code == grpc.StatusCode.NOT_FOUND and detail is not None and detail.reason == pb.MAILBOX_NOT_FOUND


async def test_a_client_stream_over_the_limit_is_refused_too_big_on_both(
    mailstore: tuple[MailstoreServer, Client],
) -> None:
    server, _ = mailstore
    too_big = server.settings.max_message_size + 1
    results = []
    for channel in await both(server, "smtp"):
        envelope = pb.DeliverEnvelope(sender="s@remote.test", recipients=[ACCOUNT], size=too_big)
        # A plain iterator, as SMTP sends it (grpc.aio takes both; so must the local channel).
        requests = itertools.chain([pb.DeliverRequest(envelope=envelope)], [pb.DeliverRequest(chunk=b"x" * 10)])
        results.append(status(await failure(mailstore_stub(channel).Deliver(requests, timeout=10))))
        await channel.close(None)
    assert results[0] == results[1]
    assert results[0][0] == grpc.StatusCode.RESOURCE_EXHAUSTED and results[0][2] is not None
    assert results[0][2].reason == pb.TOO_BIG


async def test_server_streams_by_generator_and_by_context_write_match_grpc(
    mailstore: tuple[MailstoreServer, Client],
) -> None:
    server, _ = mailstore
    channels = await both(server, "imap")
    uids = [(await append(channels[0], mail(f"m{i}", 300_000 * i))).uid for i in range(1, 5)]
    listings, bodies = [], []
    for channel in channels:
        stub = mailstore_stub(channel)
        request = pb.FetchMetadataRequest(account=ACCOUNT, mailbox="INBOX", fields=pb.MetadataFields(size=True))
        listings.append([m.size for reply in [r async for r in stub.FetchMetadata(request)] for m in reply.messages])
        section = pb.BodySection(section=pb.Section(text=pb.SECTION_ALL))
        fetch = pb.FetchBodiesRequest(
            account=ACCOUNT, mailbox="INBOX", uids=pb.UidSet(ranges=[pb.UidRange(first=1, last=max(uids))]),
            sections=[section],
        )  # fmt: skip
        bodies.append(await collect_bodies(stub, fetch, 10))
        await channel.close(None)
    assert listings[0] == listings[1] and len(listings[0]) == 4
    assert bodies[0] == bodies[1] and bodies[0][(uids[3], 0)] == mail("m4", 1_200_000)


async def test_authorization_is_the_same_table_in_process(mailstore: tuple[MailstoreServer, Client]) -> None:
    server, _ = mailstore
    imap = local(server, "imap")
    refused = await failure(pbg.AdminStub(imap).ListAccounts(pb.ListAccountsRequest()))
    assert refused.code() == grpc.StatusCode.PERMISSION_DENIED
    smtp = local(server, "smtp")  # smtp may deliver, not read a mailbox
    refused = await failure(mailstore_stub(smtp).GetMailboxStatus(pb.MailboxStatusRequest(account=ACCOUNT)))
    assert refused.code() == grpc.StatusCode.PERMISSION_DENIED
    stranger = cast(grpc.aio.Channel, LocalChannel(server.address, "mallory"))  # a name the table does not know
    refused = await failure(mailstore_stub(stranger).ListMailboxes(pb.ListMailboxesRequest(account=ACCOUNT)))
    assert refused.code() == grpc.StatusCode.PERMISSION_DENIED
    nobody = cast(grpc.aio.Channel, LocalChannel(server.address, ""))  # no certificate name at all
    refused = await failure(mailstore_stub(nobody).ListMailboxes(pb.ListMailboxesRequest(account=ACCOUNT)))
    assert refused.code() == grpc.StatusCode.UNAUTHENTICATED
    for channel in (imap, smtp, stranger, nobody):
        await channel.close(None)


def running_calls(server: MailstoreServer) -> int:
    return len(server._local._calls)


def watchers(server: MailstoreServer) -> int:
    """Subscriptions to ACCOUNT's changes open in the mailstore's (in-memory) event bus."""
    assert server.core is not None
    subscribers: dict[str, set[object]] = server.core.stores.events._subscribers  # type: ignore[attr-defined]
    return len(subscribers.get(ACCOUNT, ()))


async def wait_until(condition: Callable[[], bool], what: str) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"not within 5 s: {what}")


async def test_cancel_and_leaving_early_end_the_servicer(mailstore: tuple[MailstoreServer, Client]) -> None:
    server, _ = mailstore
    channel = local(server, "imap")
    watch = mailstore_stub(channel).Watch(pb.WatchRequest(account=ACCOUNT))
    await wait_until(lambda: running_calls(server) == 1 and watchers(server) == 1, "the Watch subscribed")
    watch.cancel()
    with pytest.raises(asyncio.CancelledError):
        async for _ in watch:
            pass
    await wait_until(lambda: running_calls(server) == 0, "no call running")
    assert watchers(server) == 0  # the servicer's subscription closed with the call
    # A reader that stops after the first response: the rest is not produced for nobody.
    for i in range(6):
        await append(channel, mail(f"big{i}", 500_000))
    fetch = pb.FetchBodiesRequest(
        account=ACCOUNT, mailbox="INBOX", uids=pb.UidSet(ranges=[pb.UidRange(first=1, last=6)]),
        sections=[pb.BodySection(section=pb.Section(text=pb.SECTION_ALL))],
    )  # fmt: skip
    call = mailstore_stub(channel).FetchBodies(fetch, timeout=10)
    reader = aiter(call)
    first = await anext(reader)
    assert first.chunks
    await reader.aclose()  # type: ignore[attr-defined]
    await wait_until(lambda: running_calls(server) == 0, "no call running")
    await channel.close(None)


async def test_a_deadline_ends_the_call_deadline_exceeded(mailstore: tuple[MailstoreServer, Client]) -> None:
    server, _ = mailstore
    channel = local(server, "imap")
    watch = mailstore_stub(channel).Watch(pb.WatchRequest(account=ACCOUNT), timeout=0.2)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in watch:
            pass
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await wait_until(lambda: running_calls(server) == 0, "no call running")
    await channel.close(None)


async def test_a_stopped_mailstore_answers_unavailable_and_closing_cancels(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, password_scrypt_log_n=10)
    server = MailstoreServer(settings)
    await server.start()
    admin = pbg.AdminStub(LocalChannel(server.address, "admin"))  # type: ignore[call-overload]
    await admin.CreateAccount(pb.CreateAccountRequest(name=ACCOUNT, password=PASSWORD))
    channel = local(server, "imap")
    closing = local(server, "imap")
    try:
        watch = mailstore_stub(channel).Watch(pb.WatchRequest(account=ACCOUNT))
        closed_watch = mailstore_stub(closing).Watch(pb.WatchRequest(account=ACCOUNT))
        await wait_until(lambda: running_calls(server) == 2, "both Watches running")
        await closing.close(None)
        with pytest.raises(asyncio.CancelledError):
            async for _ in closed_watch:
                pass
    finally:
        await server.stop(0.1)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in watch:
            pass
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE  # a frontend's Watch reconnects on this
    assert channel.get_state() != grpc.ChannelConnectivity.READY
    later = await failure(mailstore_stub(channel).ListMailboxes(pb.ListMailboxesRequest(account=ACCOUNT)))
    assert later.code() == grpc.StatusCode.UNAVAILABLE
    await channel.close(None)
