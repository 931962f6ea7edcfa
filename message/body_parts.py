"""Finding a part of a message by its IMAP part number in the body structure stored at delivery
(RFC 3501 §6.4.5, RFC 9051 §6.4.5). Pure; shared by the mailstore (sections) and IMAP (BINARY)."""

from __future__ import annotations

from collections.abc import Sequence

from mailstack.message.structure import BodyPart


class SectionNotFound(LookupError):
    """The section names a part the message does not have."""


def is_multipart(part: BodyPart) -> bool:
    return part.type.lower() == b"multipart"


def is_message(part: BodyPart) -> bool:
    """message/rfc822 or message/global (RFC 6532 §3.7): an encapsulated message."""
    return part.type.lower() == b"message" and part.subtype.lower() in (b"rfc822", b"global")


def _numbered(message: BodyPart, number: int) -> BodyPart:
    """Part `number` of a message whose body structure is `message` (RFC 3501 §6.4.5: a
    non-multipart message has only part 1, its body)."""
    if is_multipart(message):
        if 1 <= number <= len(message.parts):
            return message.parts[number - 1]
        raise SectionNotFound(f"no part {number}")
    if number == 1:
        return message
    raise SectionNotFound(f"no part {number}")


def find_part(structure: BodyPart, path: Sequence[int]) -> BodyPart:
    """The part named by a non-empty part path like [2, 1, 3]."""
    node = _numbered(structure, path[0])
    for number in path[1:]:
        if is_multipart(node):
            node = _numbered(node, number)
        elif is_message(node) and node.parts:  # numbers continue inside the encapsulated message
            node = _numbered(node.parts[0], number)
        else:
            raise SectionNotFound(f"part has no part {number}")
    return node
