"""Line endings of stored mail (ADR 0020): every line of a message ends in CRLF (RFC 5322 §2.3,
RFC 3501 §2.2), so the size the mailstore records is the octets every protocol sends.

Bodies of parts whose Content-Transfer-Encoding is "binary" (RFC 3516, RFC 3030 BINARYMIME) are
arbitrary octets, not lines: they stay exactly as they were sent.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from mailstack.message.mime import crlf_only, parse_message
from mailstack.message.structure import BodyPart

_LINE_END = re.compile(rb"\r\n|\r|\n")  # a bare CR or LF is a line end as well (POP3 sends it so)


def _binary_bodies(part: BodyPart) -> Iterator[tuple[int, int]]:
    """(start, end) of the body of every leaf part in "binary" encoding, in message order."""
    if part.parts:
        for child in part.parts:
            yield from _binary_bodies(child)
    elif part.encoding.strip().lower() == b"binary" and part.end_offset > part.body_offset:
        yield part.body_offset, part.end_offset


def to_crlf(raw: bytes) -> bytes:
    """`raw` with every bare LF and bare CR made CRLF, binary bodies left alone; `raw` itself
    (no copy) when it has only CRLF line ends, as nearly all mail has."""
    if crlf_only(raw):
        return raw
    out: list[bytes] = []
    pos = 0
    for start, end in _binary_bodies(parse_message(raw).structure):
        out.append(_LINE_END.sub(b"\r\n", raw[pos:start]))
        out.append(raw[start:end])
        pos = end
    out.append(_LINE_END.sub(b"\r\n", raw[pos:]))
    return b"".join(out)
