"""Sequence sets (RFC 3501 §9 `sequence-set`, RFC 9051 §9) and the saved-result `$` (RFC 5182)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from .grammar import DIGITS, GrammarError, Reader


@dataclass(frozen=True, slots=True)
class SequenceSet:
    """Ranges as written by the client; None stands for `*` (the largest number in use).
    `saved` is the RFC 5182 `$` reference to the last SEARCH result (ranges then empty)."""

    items: tuple[tuple[int | None, int | None], ...] = ()
    saved: bool = False

    @classmethod
    def parse(cls, text: bytes | str) -> SequenceSet:
        data = text.encode("ascii") if isinstance(text, str) else text
        reader = Reader(data)
        value = parse_sequence_set(reader)
        reader.end()
        return value

    def ranges(self, largest: int) -> list[tuple[int, int]]:
        """Sorted, merged, inclusive (low, high) ranges with `*` replaced by `largest`.
        Not clipped: `5:*` with largest 3 is (3, 5), as RFC 9051 §9 says."""
        if self.saved:
            raise ValueError("the saved search result ($) must be resolved by the session")
        resolved = ((largest if x is None else x, largest if y is None else y) for x, y in self.items)
        pairs = sorted((min(a, b), max(a, b)) for a, b in resolved)
        merged: list[tuple[int, int]] = []
        for low, high in pairs:
            if merged and low <= merged[-1][1] + 1:
                if high > merged[-1][1]:
                    merged[-1] = (merged[-1][0], high)
            else:
                merged.append((low, high))
        return merged

    def contains(self, number: int, largest: int) -> bool:
        return any(low <= number <= high for low, high in self.ranges(largest))

    def iter(self, largest: int) -> Iterator[int]:
        """Ascending distinct numbers of the set that are <= largest (bounded however large the set)."""
        for low, high in self.ranges(largest):
            yield from range(max(low, 1), min(high, largest) + 1)

    def __bytes__(self) -> bytes:
        if self.saved:
            return b"$"
        parts = []
        for a, b in self.items:
            first = b"*" if a is None else str(a).encode()
            if a == b:
                parts.append(first)
            else:
                parts.append(first + b":" + (b"*" if b is None else str(b).encode()))
        return b",".join(parts)


def _seq_number(reader: Reader) -> int | None:
    # seq-number = nz-number / "*"
    if reader.accept(b"*"):
        return None
    if reader.peek() not in DIGITS:
        raise GrammarError("invalid sequence set")
    return reader.nz_number()


def parse_sequence_set(reader: Reader, allow_saved: bool = True) -> SequenceSet:
    # sequence-set = (seq-number / seq-range) ["," sequence-set]
    # seq-range = seq-number ":" seq-number
    # sequence-set =/ seq-last-command ; seq-last-command = "$"   (RFC 5182)
    if reader.accept(b"$"):
        if not allow_saved:
            raise GrammarError("$ not allowed here")
        return SequenceSet(saved=True)
    items: list[tuple[int | None, int | None]] = []
    while True:
        first = _seq_number(reader)
        second = _seq_number(reader) if reader.accept(b":") else first
        items.append((first, second))
        if not reader.accept(b","):
            return SequenceSet(tuple(items))
