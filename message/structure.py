"""The types of a stored message's structure: IMAP ENVELOPE and BODYSTRUCTURE with the byte offsets of
every part (RFC 3501 §7.4.2), BODY[section] names (RFC 3501 §6.4.5) and an INTERNALDATE.

They are the messages of proto/mailstack/v1/message.proto: the metadata store keeps Envelope and
BodyPart as their serialised bytes and the gRPC API sends them as they are, so one type serves the
library, storage and the wire (ADR 0013). Import them from here, not from the API module.
"""

from __future__ import annotations

from mailstack.v1.message_pb2 import (
    SECTION_ALL,
    SECTION_HEADER,
    SECTION_HEADER_FIELDS,
    SECTION_HEADER_FIELDS_NOT,
    SECTION_MIME,
    SECTION_TEXT,
    Address,
    BodyPart,
    DateTime,
    Disposition,
    Envelope,
    Param,
    Section,
    SectionText,
)

__all__ = [
    "SECTION_ALL",
    "SECTION_HEADER",
    "SECTION_HEADER_FIELDS",
    "SECTION_HEADER_FIELDS_NOT",
    "SECTION_MIME",
    "SECTION_TEXT",
    "Address",
    "BodyPart",
    "DateTime",
    "Disposition",
    "Envelope",
    "Param",
    "Section",
    "SectionText",
]
