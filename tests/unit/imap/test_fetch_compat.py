"""FETCH of bodies and attributes against a mailstore older than FetchBodiesRequest.metadata (a
rolling upgrade): the chunks come without metadata, so FetchMetadata is asked as well."""

from __future__ import annotations

from typing import Any

from mailstack.services.imap.commands.fetch import _bodies_with_metadata
from mailstack.services.imap.mailbox_view import MailboxView
from mailstack.services.imap.mailstore import ImapMailstore, MetadataWanted
from mailstack.services.imap.protocol import FetchBody, Section
from mailstack.v1 import mailstore_pb2 as pb


class Call:
    """A server-streaming call: iterable, and cancellable as grpc.aio's."""

    def __init__(self, replies: Any) -> None:
        self._replies = replies

    def __aiter__(self) -> Any:
        return self._replies

    def cancel(self) -> bool:
        return False


class Stub:
    """FetchBodies sends metadata only when `new`; records the calls."""

    def __init__(self, new: bool) -> None:
        self.new = new
        self.calls: list[str] = []

    def FetchBodies(self, request: pb.FetchBodiesRequest, **options: Any) -> Any:
        self.calls.append("FetchBodies")
        chunk = pb.BodyChunk(uid=3, section_index=0, total_size=5, data=b"hello", last=True)
        if self.new and request.HasField("metadata"):
            chunk.metadata.CopyFrom(pb.MessageMetadata(uid=3, modseq=7, size=5))

        async def replies() -> Any:
            yield pb.FetchBodiesResponse(chunks=[chunk])

        return Call(replies())

    def FetchMetadata(self, request: pb.FetchMetadataRequest, **options: Any) -> Any:
        self.calls.append("FetchMetadata")

        async def replies() -> Any:
            yield pb.FetchMetadataResponse(messages=[pb.MessageMetadata(uid=3, modseq=7, size=5)])

        return replies()


class FakeSession:
    account = "alice@example.test"

    def __init__(self, new: bool) -> None:
        self.stub = Stub(new)
        self.mailstore = ImapMailstore(self.stub, self.account)  # type: ignore[arg-type]


async def fetched(new: bool) -> tuple[list[str], dict[int, pb.MessageMetadata], dict[tuple[int, int], bytes]]:
    session = FakeSession(new)
    view = MailboxView("INBOX", False, 1, 4, 7, [(3, (), 7)])
    wanted = MetadataWanted(size=True)
    metadata, texts = await _bodies_with_metadata(session, view, wanted, [3], [FetchBody(Section())])  # type: ignore[arg-type]
    return session.stub.calls, metadata, texts


async def test_one_call_when_the_mailstore_sends_metadata_with_the_bodies() -> None:
    calls, metadata, texts = await fetched(new=True)
    assert calls == ["FetchBodies"]
    assert metadata[3].size == 5 and texts == {(3, 0): b"hello"}


async def test_an_older_mailstore_is_asked_for_the_metadata_as_well() -> None:
    calls, metadata, texts = await fetched(new=False)
    assert calls == ["FetchBodies", "FetchMetadata"]
    assert metadata[3].size == 5 and texts == {(3, 0): b"hello"}
