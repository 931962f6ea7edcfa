"""Which bytes of a stored message a BODY[section] fetch returns (RFC 3501 §6.4.5, RFC 9051 §6.4.5).

Pure: works on the BodyPart stored at delivery (see mime.py), so a section is served by one range
read of the blob. A part path that does not exist raises SectionNotFound; the IMAP answer for that is
an empty string (as Dovecot does), which the caller sends. Partial fetches <offset.length> are the
caller's job, applied to the bytes this plan yields.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mailstack.message.body_parts import SectionNotFound as SectionNotFound  # re-exported: plan_section raises it
from mailstack.message.body_parts import find_part, is_message
from mailstack.message.headers import split_fields
from mailstack.message.structure import (
    SECTION_ALL,
    SECTION_HEADER,
    SECTION_HEADER_FIELDS,
    SECTION_HEADER_FIELDS_NOT,
    SECTION_MIME,
    SECTION_TEXT,
    BodyPart,
    Section,
)


@dataclass(frozen=True)
class SectionPlan:
    """Read raw[start:end]; then, when header_filter = (fields, exclude), keep only those header fields."""

    start: int
    end: int
    header_filter: tuple[tuple[str, ...], bool] | None = None


def plan_section(structure: BodyPart, section: Section) -> SectionPlan:
    """Plan for BODY[section] of a message whose stored structure is `structure`."""
    text = section.text
    if not section.part:
        message = structure  # the message itself
    else:
        node = find_part(structure, section.part)
        if text == SECTION_ALL:
            return SectionPlan(node.body_offset, node.end_offset)
        if text == SECTION_MIME:
            return SectionPlan(node.header_offset, node.body_offset)
        # HEADER and TEXT after a part number name an encapsulated message (RFC 3501 §6.4.5).
        if not is_message(node) or not node.parts:
            raise SectionNotFound("HEADER and TEXT need a message/rfc822 part")
        message = node.parts[0]
    if text == SECTION_ALL:
        return SectionPlan(message.header_offset, message.end_offset)
    if text == SECTION_HEADER:
        return SectionPlan(message.header_offset, message.body_offset)
    if text in (SECTION_HEADER_FIELDS, SECTION_HEADER_FIELDS_NOT):
        fields = (tuple(section.fields), text == SECTION_HEADER_FIELDS_NOT)
        return SectionPlan(message.header_offset, message.body_offset, fields)
    if text == SECTION_TEXT:
        return SectionPlan(message.body_offset, message.end_offset)
    raise SectionNotFound("MIME needs a part number" if text == SECTION_MIME else f"unknown section {text}")


def apply_header_filter(header: bytes, fields: Sequence[str], exclude: bool) -> bytes:
    """HEADER.FIELDS (exclude=False) or HEADER.FIELDS.NOT (exclude=True) of a header block: the
    matching fields with their continuation lines, then the blank line (RFC 3501 §6.4.5)."""
    wanted = {f.encode("utf-8", "surrogateescape").lower() for f in fields}
    out = bytearray()
    for name, text in split_fields(header):
        if not name or (name.lower() in wanted) == exclude:
            continue
        out += text
        if not text.endswith(b"\n"):  # last field of a header without a blank line
            out += b"\r\n"
    out += b"\r\n"
    return bytes(out)


def extract_section(raw: bytes, structure: BodyPart, section: Section) -> bytes:
    """The bytes of BODY[section] of a raw message (b"" for a part that does not exist)."""
    try:
        plan = plan_section(structure, section)
    except SectionNotFound:
        return b""
    data = raw[plan.start : plan.end]
    if plan.header_filter is not None:
        data = apply_header_filter(data, *plan.header_filter)
    return data
