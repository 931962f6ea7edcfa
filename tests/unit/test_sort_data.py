"""What the mailstore sends for IMAP SORT/THREAD (translate.sort_data_pb): the stored envelope when
small, else only what SORT reads, group markers kept up to the first address."""

from __future__ import annotations

from mailstack.services.mailstore import translate
from mailstack.services.mailstore.core.results import MessageRecord
from mailstack.v1 import message_pb2 as mpb


def _record(envelope: mpb.Envelope, header: bytes = b"", sent: int | None = 5) -> MessageRecord:
    return MessageRecord(1, 1, (), 7, 0, 99, "k", envelope.SerializeToString(), b"", header, sent)


def test_small_envelope_as_stored() -> None:
    envelope = mpb.Envelope(subject=b"hi", message_id=b"<m@x>")
    data = translate.sort_data_pb(_record(envelope, b"References: <a@x>\r\n\r\n"))
    assert data.envelope == envelope.SerializeToString()
    assert (data.internal_date, data.sent_date, data.size, data.references) == (7, 5, 99, b"<a@x>")
    assert not translate.sort_data_pb(_record(envelope, sent=None)).HasField("sent_date")


def test_big_envelope_cut_to_what_sort_reads() -> None:
    many = [mpb.Address(mailbox=b"u%d" % i, host=b"example.org") for i in range(200)]
    envelope = mpb.Envelope(subject=b"hi", in_reply_to=b"<p@x>", to=many, cc=many)
    getattr(envelope, "from").extend([mpb.Address(mailbox=b"group"), many[0]])
    data = translate.sort_data_pb(_record(envelope))
    cut = mpb.Envelope.FromString(data.envelope)
    assert len(data.envelope) < 200
    assert [a.mailbox for a in getattr(cut, "from")] == [b"group", b"u0"]
    assert [a.mailbox for a in cut.to] == [b"u0"] and [a.mailbox for a in cut.cc] == [b"u0"]
    assert (cut.subject, cut.in_reply_to, cut.HasField("message_id")) == (b"hi", b"<p@x>", False)
