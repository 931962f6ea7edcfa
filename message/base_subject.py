"""The base subject of a message (RFC 5256 §2.1), which SORT (SUBJECT) and THREAD group and order by,
and the i;ascii-casemap collation (RFC 4790 §9.2) its comparisons use. Pure; never raises.

    subj-refwd   = ("re" / ("fw" ["d"])) *WSP [subj-blob] ":"
    subj-blob    = "[" *BLOBCHAR "]" *WSP          BLOBCHAR = %x01-5a / %x5c / %x5e-ff
    subj-leader  = (*subj-blob subj-refwd) / WSP
    subj-trailer = "(fwd)" / WSP
    subj-fwd-hdr = "[fwd:"                        subj-fwd-trl = "]"
"""

from __future__ import annotations

import functools
import re

from mailstack.message.encoded_words import decode_header_value

_SPACES = re.compile(r"[ \t\r\n]+")
_BLOB = re.compile(r"\[[^\[\]]*\][ ]*")
_REFWD = re.compile(r"(?:re|fwd?)[ ]*(?:\[[^\[\]]*\][ ]*)?:", re.IGNORECASE)


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")  # as decode_header_value reads undeclared 8-bit text


def casemap(text: str) -> bytes:
    """The i;ascii-casemap sort key: the UTF-8 octets with a-z mapped to A-Z, nothing else."""
    return text.encode("utf-8", "surrogatepass").upper()  # bytes.upper() maps ASCII letters only


def _strip_trailers(text: str) -> tuple[str, bool]:
    # step 2: remove every trailing subj-trailer
    marked = False
    while True:
        if text.endswith(" "):
            text = text[:-1]
        elif text[-5:].lower() == "(fwd)":
            text, marked = text[:-5], True
        else:
            return text, marked


def _leader(text: str) -> tuple[int, bool]:
    """Length of the subj-leader at the start of `text` (0: none) and whether it was a subj-refwd."""
    if text.startswith(" "):
        return 1, False
    pos = 0
    while m := _BLOB.match(text, pos):  # *subj-blob
        pos = m.end()
    m = _REFWD.match(text, pos)
    return (m.end(), True) if m else (0, False)


def _strip_leaders(text: str) -> tuple[str, bool]:
    # steps 3-5: remove subj-leaders, then a subj-blob when text remains after it; repeat
    marked = False
    while True:
        length, refwd = _leader(text)
        if length:
            text, marked = text[length:], marked or refwd
            continue
        m = _BLOB.match(text)
        if m and m.end() < len(text):
            text = text[m.end() :]
            continue
        return text, marked


@functools.lru_cache(maxsize=16384)  # a mailbox repeats its subjects (threads); SORT runs again and again
def base_subject(raw: bytes | None) -> tuple[str, bool]:
    """(base subject, whether extraction found a reply or forward: a subj-refwd, "(fwd)" or "[fwd: ]").

    `raw` is the Subject header value as the envelope keeps it (encoded words undecoded)."""
    # step 1: decode encoded words; tabs and continuations to one space, runs of spaces to one
    text = _SPACES.sub(" ", decode_header_value(raw) if raw and b"=?" in raw else _text(raw or b"")).strip(" ")
    marked = False
    while True:
        text, trailer = _strip_trailers(text)
        text, leader = _strip_leaders(text)
        marked = marked or trailer or leader
        # step 6: "[fwd:" ... "]" around the whole: remove and start again from step 2
        if text[:5].lower() == "[fwd:" and text.endswith("]"):
            text, marked = text[5:-1], True
            continue
        return text, marked
