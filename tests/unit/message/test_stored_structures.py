"""ENVELOPE and BODYSTRUCTURE are stored as serialised protobuf (storage/metadata/sqlite.py). Their
messages moved from mailstore.proto to message.proto (ADR 0013); the bytes written before the move
must read back as the same structures, and parsing writes exactly the same bytes as before.

samples/stored-structures.json holds what the code before the move stored for some samples."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mailstack.message.mime import parse_message
from mailstack.message.structure import BodyPart, Envelope
from mailstack.v1 import mailstore_pb2 as pb

from tests.unit.message.samples import load

STORED = json.loads((Path(__file__).parent / "samples" / "stored-structures.json").read_text())


@pytest.mark.parametrize("name", sorted(STORED))
def test_structures_stored_before_the_move_read_back_and_are_written_the_same(name: str) -> None:
    stored = STORED[name]
    parsed = parse_message(load(name))
    envelope, structure = Envelope(), BodyPart()
    envelope.ParseFromString(bytes.fromhex(stored["envelope"]))
    structure.ParseFromString(bytes.fromhex(stored["structure"]))
    assert envelope == parsed.envelope and structure == parsed.structure
    assert parsed.envelope.SerializeToString(deterministic=True).hex() == stored["envelope"]
    assert parsed.structure.SerializeToString(deterministic=True).hex() == stored["structure"]


def test_the_api_module_sends_the_same_types() -> None:
    # mailstore.proto imports message.proto publicly: one class, so the gRPC wire format is unchanged
    assert pb.BodyPart is BodyPart and pb.Envelope is Envelope
    assert pb.MessageMetadata.DESCRIPTOR.fields_by_name["body_structure"].message_type is BodyPart.DESCRIPTOR
    assert [(f.name, f.number) for f in Envelope.DESCRIPTOR.fields] == [
        ("date", 1), ("subject", 2), ("from", 3), ("sender", 4), ("reply_to", 5), ("to", 6), ("cc", 7), ("bcc", 8),
        ("in_reply_to", 9), ("message_id", 10),
    ]  # fmt: skip
    assert [f.number for f in BodyPart.DESCRIPTOR.fields] == list(range(1, 20))
    assert BodyPart.DESCRIPTOR.full_name == "mailstack.v1.BodyPart"  # the package, hence Any type URLs, unchanged
