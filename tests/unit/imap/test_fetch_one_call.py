"""FETCH of bodies and attributes is one FetchBodies call: the metadata comes with the chunks."""

from __future__ import annotations

from typing import Any

from mailstack.services.imap.commands.fetch import _Plan, _read_batch
from mailstack.services.imap.mailbox_view import MailboxView
from mailstack.services.imap.mailstore import ImapMailstore
from mailstack.services.imap.protocol import FetchAttribute, FetchBody, Section
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
    """FetchBodies sends the metadata asked for with the chunks; records the calls."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def FetchBodies(self, request: pb.FetchBodiesRequest, **options: Any) -> Any:
        self.calls.append("FetchBodies")
        chunk = pb.BodyChunk(uid=3, section_index=0, total_size=5, data=b"hello", last=True)
        if request.HasField("metadata"):
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

    def __init__(self) -> None:
        self.stub = Stub()
        self.mailstore = ImapMailstore(self.stub, self.account)  # type: ignore[arg-type]


async def test_one_call_when_the_mailstore_sends_metadata_with_the_bodies() -> None:
    session = FakeSession()
    view = MailboxView("INBOX", False, 1, 4, 7, [(3, (), 7)])
    plan = _Plan.of([FetchAttribute("RFC822.SIZE"), FetchBody(Section())], None)
    metadata, texts = await _read_batch(session, view, plan, None, [3], set())  # type: ignore[arg-type]
    assert session.stub.calls == ["FetchBodies"]
    assert metadata[3].size == 5 and texts == {(3, 0): b"hello"}
